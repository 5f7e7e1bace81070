import json

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipelines.readers import LogSpec, parse_time, read_log
from recsys.errors import InputError


def write(path, text):
    path.write_text(text)
    return path


def test_csv_with_named_columns_and_string_ids(tmp_path):
    f = write(tmp_path / "log.csv", "who,what,when,stars\nalice,x1,10,4.5\nbob,x2,11,3\n")
    spec = LogSpec("csv", user_col="who", item_col="what", time_col="when", rating_col="stars")
    df = read_log(f, spec)
    expected = pl.DataFrame(
        {
            "line": [2, 3],
            "user_id": ["alice", "bob"],
            "item_id": ["x1", "x2"],
            "timestamp": [10, 11],
            "rating": [4.5, 3.0],
        }
    )
    assert_frame_equal(df, expected)


def test_tsv_and_multichar_separator_without_header(tmp_path):
    tsv = write(tmp_path / "log.tsv", "user_id\titem_id\nu1\ti1\nu2\ti2\n")
    assert read_log(tsv, LogSpec("tsv"))["item_id"].to_list() == ["i1", "i2"]

    dat = write(tmp_path / "ratings.dat", "1::10::5::978300760\n2::20::3::978302109\n")
    spec = LogSpec(
        "csv",
        separator="::",
        has_header=False,
        names=("user", "item", "rating", "time"),
        user_col="user",
        item_col="item",
        rating_col="rating",
        time_col="time",
    )
    df = read_log(dat, spec)
    assert df["user_id"].to_list() == ["1", "2"]
    assert df["timestamp"].to_list() == [978300760, 978302109]
    assert df["rating"].to_list() == [5.0, 3.0]
    assert df["line"].to_list() == [1, 2]


def test_parquet_keeps_integer_ids(tmp_path):
    f = tmp_path / "log.parquet"
    pl.DataFrame({"u": [3, 1], "i": [7, 8]}, schema={"u": pl.Int32, "i": pl.Int32}).write_parquet(f)
    df = read_log(f, LogSpec("parquet", user_col="u", item_col="i"))
    assert df.schema["user_id"] == pl.Int64
    assert df["user_id"].to_list() == [3, 1]
    assert df["line"].to_list() == [1, 2]


def test_jsonl_with_datetime_strings(tmp_path):
    rows = [
        {"user_id": "a", "item_id": "x", "ts": "2024-01-01 00:00:00"},
        {"user_id": "b", "item_id": "y", "ts": "2024-01-02 00:00:00"},
    ]
    f = write(tmp_path / "log.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    df = read_log(f, LogSpec("jsonl", time_col="ts"))
    assert df["timestamp"].to_list() == [1704067200, 1704153600]


def test_lightgcn_format(tmp_path):
    f = write(tmp_path / "train.txt", "0 5 6 7\n\n1  8\n2\n3 9 \n")
    df = read_log(f, LogSpec("lightgcn"))
    assert df["user_id"].to_list() == [0, 0, 0, 1, 3]
    assert df["item_id"].to_list() == [5, 6, 7, 8, 9]
    assert df["line"].to_list() == [1, 1, 1, 3, 5]


def test_parse_time_accepts_epoch_and_datetime():
    assert parse_time("1700000000", "--test-cutoff") == 1700000000
    assert parse_time("2024-01-01", "--test-cutoff") == 1704067200
    assert parse_time(None, "--test-cutoff") is None
    with pytest.raises(InputError, match="--test-cutoff 'soon' is not an epoch number"):
        parse_time("soon", "--test-cutoff")


@pytest.mark.parametrize(
    ("name", "text", "spec", "message"),
    [
        (
            "ragged.csv",
            "user_id,item_id\na,b\nc,d,e\n",
            LogSpec("csv"),
            r"line 3: expected 2 fields, found 3",
        ),
        ("bad.txt", "0 1 2\n1 x 3\n", LogSpec("lightgcn"), r"line 2: 'x' is not an integer id"),
        (
            "bad.jsonl",
            '{"user_id": "a", "item_id": "b"}\n{"user_id": oops}\n',
            LogSpec("jsonl"),
            r"line 2: invalid JSON",
        ),
        (
            "ts.csv",
            "user_id,item_id,t\na,b,5\nc,d,yesterday\n",
            LogSpec("csv", time_col="t"),
            r"line 3: column 't' value 'yesterday' is not epoch numbers or date-times",
        ),
        (
            "r.csv",
            "user_id,item_id,r\na,b,five\n",
            LogSpec("csv", rating_col="r"),
            r"line 2: column 'r' value 'five' is not a number",
        ),
        (
            "cols.csv",
            "user,item\na,b\n",
            LogSpec("csv"),
            r"column 'user_id' \(--user-col\) not found; columns found: user, item",
        ),
        ("e.csv", "", LogSpec("csv"), "the file is empty"),
        (
            "multi.dat",
            "1::2\n3::4::5\n",
            LogSpec("csv", separator="::", has_header=False),
            "line 2: expected 2 fields",
        ),
    ],
)
def test_bad_input_names_file_and_line(tmp_path, name, text, spec, message):
    f = write(tmp_path / name, text)
    with pytest.raises(InputError, match=message) as err:
        read_log(f, spec)
    assert name in str(err.value)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_log(tmp_path / "nope.csv", LogSpec("csv"))
    with pytest.raises(InputError, match="unknown format 'xls'; expected one of csv, tsv"):
        LogSpec("xls")
