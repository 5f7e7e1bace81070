import json

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipelines import IngestConfig, ingest
from pipelines.readers import LogSpec
from recsys.cli import main
from recsys.errors import InputError

LOG = """user,item,time,stars
alice,apple,2024-01-01 10:00:00,5
alice,banana,2024-01-02 10:00:00,4
alice,cherry,2024-01-03 10:00:00,5
alice,apple,2024-01-04 10:00:00,5
bob,apple,2024-01-01 09:00:00,2
bob,banana,2024-01-05 10:00:00,5
bob,cherry,2024-01-06 10:00:00,4
,cherry,2024-01-06 10:00:00,4
carol,banana,2024-01-02 11:00:00,5
carol,cherry,2024-01-07 10:00:00,5
carol,fig,2024-01-08 10:00:00,5
dave,cherry,2023-12-01 10:00:00,3
dave,durian,2023-12-02 10:00:00,5
dave,apple,2024-01-09 10:00:00,4
dave,banana,2024-01-10 10:00:00,5
"""


@pytest.fixture
def log_csv(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(LOG)
    return path


def spec(**kw):
    return LogSpec("csv", user_col="user", item_col="item", time_col="time", rating_col="stars", **kw)


def test_temporal_ingest_writes_the_expected_dataset(tmp_path, log_csv):
    out = tmp_path / "ds"
    result = ingest(IngestConfig(out=out, spec=spec(), input=log_csv, split="temporal", valid_n=1, test_n=1))
    assert sorted(p.name for p in out.iterdir()) == [
        "items.parquet",
        "meta.json",
        "test.parquet",
        "train.parquet",
        "users.parquet",
        "valid.parquet",
    ]
    users = pl.read_parquet(out / "users.parquet")
    items = pl.read_parquet(out / "items.parquet")
    assert users["raw_id"].to_list() == ["alice", "bob", "carol", "dave"]
    # fig is only carol's last (test) event, so it is not in train: its row is dropped and counted.
    assert items["raw_id"].to_list() == ["apple", "banana", "cherry", "durian"]
    day = 86400
    t0 = 1704103200  # 2024-01-01 10:00:00
    expected_test = pl.DataFrame(
        {
            "user_idx": [0, 1, 3],
            "item_idx": [2, 2, 1],
            "timestamp": [t0 + 2 * day, t0 + 5 * day, t0 + 9 * day],
        }
    )
    assert_frame_equal(pl.read_parquet(out / "test.parquet"), expected_test)
    valid = pl.read_parquet(out / "valid.parquet")
    assert valid.select("user_idx", "item_idx").rows() == [(0, 1), (1, 1), (2, 2), (3, 0)]
    train = pl.read_parquet(out / "train.parquet")
    # alice's repeated apple keeps the earliest time (Jan 1st, not Jan 4th).
    assert train.rows() == [
        (0, 0, t0),
        (1, 0, t0 - 3600),
        (2, 1, t0 + day + 3600),
        (3, 2, t0 - 31 * day),
        (3, 3, t0 - 30 * day),
    ]
    meta = json.loads((out / "meta.json").read_text())
    assert meta == result.meta | {k: meta[k] for k in ("format_version", "created_at", "recsys_version")}
    assert meta["format_version"] == 1
    assert meta["dropped"] == {"valid_not_in_train": 0, "test_not_in_train": 1}
    steps = {s["step"]: (s["rows_in"], s["rows_out"]) for s in meta["steps"]}
    assert steps["input:drop_null_ids"] == (15, 14)
    assert steps["input:dedupe"] == (14, 13)
    assert meta["counts"]["train"] == {"interactions": 5, "users": 4, "items": 4}
    assert meta["inputs"][0]["name"] == "log.csv" and meta["inputs"][0]["bytes"] == log_csv.stat().st_size


def test_rating_threshold_and_k_core(tmp_path, log_csv):
    out = tmp_path / "ds"
    cfg = IngestConfig(
        out=out,
        spec=spec(),
        input=log_csv,
        split="random",
        min_rating=4,
        min_user_interactions=2,
        min_item_interactions=2,
        valid_ratio=0.0,
        test_ratio=0.0,
    )
    meta = ingest(cfg).meta
    steps = {s["step"]: (s["rows_in"], s["rows_out"], s.get("rounds")) for s in meta["steps"]}
    assert steps["input:min_rating"] == (14, 12, None)  # bob's 2-star apple and dave's 3-star cherry go
    assert steps["input:dedupe"] == (12, 11, None)
    # fig and durian have one user each; dropping them leaves every user with >= 2 items: a 2-core.
    assert steps["k_core"] == (11, 9, 2)
    assert meta["num_items"] == 3 and meta["num_users"] == 4


def test_k_core_that_empties_the_data_names_the_step(tmp_path, log_csv):
    out = tmp_path / "ds"
    cfg = IngestConfig(out=out, spec=spec(), input=log_csv, min_user_interactions=50)
    with pytest.raises(InputError, match="no interactions left after step 'k_core'"):
        ingest(cfg)
    assert not out.exists()


def test_random_split_is_deterministic(tmp_path, log_csv):
    a = ingest(IngestConfig(out=tmp_path / "a", spec=spec(), input=log_csv, test_ratio=0.4, seed=3))
    b = ingest(IngestConfig(out=tmp_path / "b", spec=spec(), input=log_csv, test_ratio=0.4, seed=3))
    for name in ("train", "valid", "test"):
        assert pl.read_parquet(a.out / f"{name}.parquet").equals(pl.read_parquet(b.out / f"{name}.parquet"))


def test_existing_output_needs_force(tmp_path, log_csv):
    out = tmp_path / "ds"
    ingest(IngestConfig(out=out, spec=spec(), input=log_csv))
    marker = out / "meta.json"
    before = marker.read_text()
    with pytest.raises(InputError, match="already exists; pass --force"):
        ingest(IngestConfig(out=out, spec=spec(), input=log_csv, seed=9))
    assert marker.read_text() == before
    ingest(IngestConfig(out=out, spec=spec(), input=log_csv, seed=9, force=True))
    assert json.loads(marker.read_text())["options"]["seed"] == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "log.csv"]  # no temporary left behind


def test_every_format_gives_the_same_dataset(tmp_path, log_csv):
    base = pl.read_csv(log_csv, infer_schema=False)
    base.write_parquet(tmp_path / "log.parquet")
    base.write_ndjson(tmp_path / "log.jsonl")
    base.write_csv(tmp_path / "log.tsv", separator="\t")
    outs = {}
    for fmt, path in [
        ("csv", log_csv),
        ("parquet", tmp_path / "log.parquet"),
        ("jsonl", tmp_path / "log.jsonl"),
        ("tsv", tmp_path / "log.tsv"),
    ]:
        s = LogSpec(fmt, user_col="user", item_col="item", time_col="time", rating_col="stars")
        outs[fmt] = ingest(IngestConfig(out=tmp_path / fmt, spec=s, input=path, split="temporal")).out
    for fmt, out in outs.items():
        for name in ("train", "valid", "test", "users", "items"):
            assert pl.read_parquet(out / f"{name}.parquet").equals(
                pl.read_parquet(outs["csv"] / f"{name}.parquet")
            ), (fmt, name)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "{tmp}/missing.csv"], "missing.csv: no such file"),
        (
            ["--input", "{log}", "--user-col", "uid"],
            "column 'uid' (--user-col) not found; columns found: user, item, time, stars",
        ),
        (
            ["--input", "{log}", "--time-col", "stars", "--split", "cutoff", "--test-cutoff", "nope"],
            "--test-cutoff 'nope'",
        ),
        (["--input", "{log}", "--split", "temporal"], "the temporal split needs event times"),
        (["--input", "{log}", "--min-user-interactions", "9"], "no interactions left after step 'k_core'"),
        (
            ["--train", "{log}", "--test", "{log}", "--split", "preset", "--min-item-interactions", "3"],
            "k-core filtering would change a preset split",
        ),
        (["--input", "{empty}"], "empty.csv: the file is empty"),
        (["--input", "{header}"], "header.csv: no interactions found"),
        (
            ["--input", "{bad_time}", "--time-col", "time"],
            "bad_time.csv, line 3: column 'time' value '3pm' is not",
        ),
    ],
)
def test_cli_bad_input_is_one_line_and_leaves_nothing(tmp_path, log_csv, capsys, args, message):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("user,item\n")
    (tmp_path / "bad_time.csv").write_text("user,item,time\na,b,1\nc,d,3pm\n")
    fill = {
        "tmp": tmp_path,
        "log": log_csv,
        "empty": tmp_path / "empty.csv",
        "header": tmp_path / "header.csv",
        "bad_time": tmp_path / "bad_time.csv",
    }
    out = tmp_path / "out"
    argv = ["ingest", "--format", "csv", "--user-col", "user", "--item-col", "item", "--out", str(out)]
    argv += [a.format(**fill) for a in args]
    # later options win, so a test's own --user-col overrides the default above
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_cli_prints_a_summary(tmp_path, log_csv, capsys):
    out = tmp_path / "ds"
    argv = [
        "ingest",
        "--format",
        "csv",
        "--input",
        str(log_csv),
        "--user-col",
        "user",
        "--item-col",
        "item",
        "--time-col",
        "time",
        "--split",
        "temporal",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert (
        f"dataset {out}: 4 users, 4 items, train 5 / valid 4 / test 3 interactions" in capsys.readouterr().out
    )


def test_gowalla_preset_reproduces_the_published_split(tmp_path, gowalla_dir):
    out = tmp_path / "gowalla"
    cfg = IngestConfig(
        out=out,
        spec=LogSpec("lightgcn"),
        train=gowalla_dir / "train.txt",
        test=gowalla_dir / "test.txt",
        split="preset",
    )
    meta = ingest(cfg).meta
    assert (meta["num_users"], meta["num_items"]) == (29858, 40981)
    counts = meta["counts"]
    assert counts["train"]["interactions"] + counts["valid"]["interactions"] == 810128
    assert counts["test"]["interactions"] == 217242
    assert counts["valid"]["interactions"] > 0
    # The test split is kept exactly: every raw (user, item) pair of test.txt, nothing else.
    raw = (
        pl.read_parquet(out / "test.parquet")
        .join(pl.read_parquet(out / "users.parquet").rename({"raw_id": "u"}), on="user_idx")
        .join(pl.read_parquet(out / "items.parquet").rename({"raw_id": "i"}), on="item_idx")
    )
    expected = set()
    for line in (gowalla_dir / "test.txt").read_text().splitlines():
        u, *items = map(int, line.split())
        expected.update((u, i) for i in items)
    assert set(zip(raw["u"].to_list(), raw["i"].to_list(), strict=True)) == expected
