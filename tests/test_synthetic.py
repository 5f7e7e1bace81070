import numpy as np
import polars as pl
import pytest

from pipelines import IngestConfig, ingest
from pipelines.readers import LogSpec, read_log
from pipelines.synthetic import SyntheticConfig, generate
from recsys.cli import main
from recsys.errors import InputError

CFG = SyntheticConfig(num_users=400, num_items=300, num_interactions=12_000, seed=5)


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic") / "log.csv"
    generate(CFG, path, progress=False)
    return path


def test_generation_is_deterministic_and_has_dirty_rows(log, tmp_path):
    again = tmp_path / "again.csv"
    generate(CFG, again, progress=False)
    assert again.read_bytes() == log.read_bytes()
    df = pl.read_csv(log)
    assert df.columns == ["user_id", "item_id", "timestamp", "rating"]
    assert df["user_id"].drop_nulls().str.starts_with("u").all()
    assert df["user_id"].null_count() > 0 and df["item_id"].null_count() > 0
    assert df.drop_nulls().select("user_id", "item_id").is_duplicated().any()
    assert df["rating"].min() >= 1 and df["rating"].max() <= 5
    assert 11_000 < df.height < 13_500


def test_popularity_is_long_tailed(log):
    counts = pl.read_csv(log).drop_nulls()["item_id"].value_counts()["count"].sort(descending=True).to_numpy()
    top_decile = counts[: len(counts) // 10].sum() / counts.sum()
    assert top_decile > 0.3  # a uniform catalogue would give 0.1


def test_a_collaborative_model_beats_popularity(log, tmp_path):
    """Item-item co-occurrence must clearly beat most-popular, or the data has no structure to learn."""
    out = ingest(
        IngestConfig(out=tmp_path / "ds", spec=LogSpec("csv"), input=log, test_ratio=0.2, seed=0)
    ).out
    meta = pl.read_parquet(out / "items.parquet").height, pl.read_parquet(out / "users.parquet").height
    num_items, num_users = meta
    train = pl.read_parquet(out / "train.parquet")
    test = pl.read_parquet(out / "test.parquet")
    x = np.zeros((num_users, num_items))
    x[train["user_idx"], train["item_idx"]] = 1.0
    truth = np.zeros_like(x)
    truth[test["user_idx"], test["item_idx"]] = 1.0

    def recall(scores):
        scores = np.where(x > 0, -np.inf, scores)
        top = np.argsort(-scores, axis=1)[:, :20]
        hits = np.take_along_axis(truth, top, axis=1).sum(1)
        has = truth.sum(1) > 0
        return float((hits[has] / truth.sum(1)[has]).mean())

    popular = recall(np.broadcast_to(x.sum(0), x.shape))
    cooccurrence = recall(x @ (x.T @ x))
    assert cooccurrence > 1.3 * popular, (cooccurrence, popular)


def test_other_formats_are_readable(tmp_path):
    small = SyntheticConfig(num_users=20, num_items=10, num_interactions=100, seed=1)
    for fmt in ("parquet", "jsonl", "tsv"):
        path = tmp_path / f"log.{fmt}"
        rows = generate(small, path, fmt, progress=False)
        df = read_log(path, LogSpec(fmt, time_col="timestamp", rating_col="rating"))
        assert df.height == rows


def test_bad_config_and_cli(tmp_path, capsys):
    with pytest.raises(InputError, match="dirty_fraction"):
        SyntheticConfig(dirty_fraction=0.9)
    out = tmp_path / "g.csv"
    assert (
        main(["generate", "-q", "--out", str(out), "--users", "30", "--items", "20", "--interactions", "300"])
        == 0
    )
    assert f"rows to {out}" in capsys.readouterr().out
    assert main(["generate", "-q", "--out", str(out), "--users", "0"]) == 1
    assert "must be >= 1" in capsys.readouterr().err
