import json

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipelines.readers import LogSpec, parse_time, read_log
from recsys.cli import main
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


ELF = b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 8  # the start of an executable: NUL at offset 7


def write_inputs(root):
    """One input per way a log can be wrong for its --format, all in ``root``."""
    (root / "logs").mkdir()
    (root / "elf.csv").write_bytes(ELF)
    (root / "elf.jsonl").write_bytes(ELF)
    pl.DataFrame({"user_id": ["a"], "item_id": ["b"]}).write_parquet(root / "log.parquet")
    (root / "text.parquet").write_text("user_id,item_id\na,b\n")
    (root / "latin1.csv").write_bytes("user_id,item_id\na,b\nJosé,c\n".encode("latin-1"))
    write(root / "mixed.jsonl", '{"user_id": 1, "item_id": "b"}\n{"user_id": [1], "item_id": "c"}\n')
    write(root / "nested.jsonl", '{"user_id": "a", "item_id": "b", "meta": {"x": 1}}\n' * 3)
    with (root / "nested.jsonl").open("a") as handle:
        handle.write('{"user_id": "a", "item_id": "c", "meta": {"x": [1]}}\n')
    write(root / "array.jsonl", '{"user_id": "a", "item_id": "b"}\n[1, 2]\n')
    write(root / "broken.jsonl", '{"user_id": "a", "item_id": "b"}\n{"user_id": "a"} {"item_id": "c"}\n')
    return root


@pytest.mark.parametrize(
    ("fmt", "name", "message"),
    [
        (
            "csv",
            "elf.csv",
            ": not a text file: it holds binary data (a NUL byte at offset 7); "
            "--format csv expects a CSV text file",
        ),
        (
            "jsonl",
            "elf.jsonl",
            ": not a text file: it holds binary data (a NUL byte at offset 7); "
            "--format jsonl expects a JSON Lines text file (one JSON object per line)",
        ),
        ("csv", "logs", ": is a directory, not a file; --format csv expects a CSV text file"),
        (
            "csv",
            "log.parquet",
            ": not a text file: it is a Parquet file (use --format parquet); "
            "--format csv expects a CSV text file",
        ),
        (
            "parquet",
            "text.parquet",
            ": not a Parquet file (it does not start with the magic bytes PAR1); it looks like text: "
            "use --format csv, tsv, jsonl or lightgcn",
        ),
        ("csv", "latin1.csv", ", line 3: not UTF-8 text (byte 0xe9 at column 4); save the file as UTF-8"),
        # polars alone says "failed to determine supertype of struct[2] and struct[2]", naming no line.
        (
            "jsonl",
            "mixed.jsonl",
            ", line 2: field 'user_id' is an array here but a number on line 1; "
            "a field needs the same JSON type on every line",
        ),
        (
            "jsonl",
            "nested.jsonl",
            ", line 4: field 'meta.x' is an array here but a number on line 1; "
            "a field needs the same JSON type on every line",
        ),
        ("jsonl", "array.jsonl", ", line 2: expected a JSON object, found an array"),
        ("jsonl", "broken.jsonl", ", line 2: invalid JSON (Extra data at column 18)"),
    ],
)
def test_cli_says_what_is_wrong_with_the_file_in_one_line(tmp_path, capsys, fmt, name, message):
    path = write_inputs(tmp_path) / name
    out = tmp_path / "out"
    code = main(["ingest", "--format", fmt, "--input", str(path), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert err == f"recsys ingest: error: {path}{message}\n"
    assert not out.exists()
