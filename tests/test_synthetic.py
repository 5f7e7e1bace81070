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


@pytest.mark.parametrize(
    ("users", "items", "density"),
    [(300, 200, 0.06), (2000, 1000, 0.004)],  # a dense and a sparse log
)
def test_density_is_the_share_of_distinct_pairs(tmp_path, users, items, density):
    path = tmp_path / "log.csv"
    generate(SyntheticConfig(num_users=users, num_items=items, density=density, seed=3), path, progress=False)
    clean = pl.read_csv(path).drop_nulls()
    measured = clean.select("user_id", "item_id").unique().height / (users * items)
    assert measured == pytest.approx(density, rel=0.05)
    assert clean.height > clean.select("user_id", "item_id").unique().height  # users repeat items


def _drifted(tmp_path, drift):
    path = tmp_path / f"drift{drift}.csv"
    cfg = SyntheticConfig(num_users=2000, num_items=1500, num_interactions=60_000, drift=drift, seed=4)
    generate(cfg, path, progress=False)
    return pl.read_csv(path).drop_nulls().sort("timestamp", "user_id", "item_id")


def _window_counts(df, lo, hi):
    """Events per item (every item of the log, 0 when absent) within the time quantiles [lo, hi)."""
    t = df["timestamp"]
    part = df.filter((t >= t.quantile(lo)) & (t < t.quantile(hi)) if hi < 1 else t >= t.quantile(lo))
    counts = part["item_id"].value_counts()
    return df.select(pl.col("item_id").unique()).join(counts, on="item_id", how="left").fill_null(0)


def test_drift_moves_popularity_and_test_events_favour_late_items(tmp_path):
    still, moving = _drifted(tmp_path, 0.0), _drifted(tmp_path, 1.0)
    # Only popularity moves: the same users at the same times, other items.
    assert still.select("user_id", "timestamp").equals(moving.select("user_id", "timestamp"))
    assert not still["item_id"].equals(moving["item_id"])

    def spearman(df):
        first, last = _window_counts(df, 0.0, 0.25), _window_counts(df, 0.75, 1.0)
        pair = first.join(last, on="item_id")
        # Naive Spearman: Pearson correlation of average ranks.
        a = pair["count"].rank("average").to_numpy()
        b = pair["count_right"].rank("average").to_numpy()
        return float(np.corrcoef(a, b)[0, 1])

    def test_share_of_early_hits(df):
        """Share of the last 20 % of events (a cutoff split's test) on the top decile of the first half."""
        early = _window_counts(df, 0.0, 0.5).sort("count", descending=True)
        top = set(early["item_id"][: early.height // 10].to_list())
        test = df.filter(pl.col("timestamp") >= df["timestamp"].quantile(0.8))
        return test["item_id"].is_in(list(top)).mean()

    assert spearman(moving) < spearman(still) - 0.1, (spearman(moving), spearman(still))
    assert test_share_of_early_hits(moving) < 0.8 * test_share_of_early_hits(still)


def test_density_and_drift_are_deterministic_and_checked(tmp_path, capsys):
    cfg = SyntheticConfig(num_users=200, num_items=150, density=0.05, drift=0.7, seed=9)
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    generate(cfg, a, progress=False)
    generate(cfg, b, progress=False)
    assert a.read_bytes() == b.read_bytes()
    for bad in ({"density": 0.0}, {"density": 1.0}, {"drift": -0.1}, {"drift": 1.5}):
        with pytest.raises(InputError, match=next(iter(bad))):
            SyntheticConfig(**bad)
    with pytest.raises(InputError, match="out of reach"):
        generate(
            SyntheticConfig(num_users=50, num_items=40, density=0.95), tmp_path / "c.csv", progress=False
        )
    out = tmp_path / "cli.csv"
    args = ["generate", "-q", "--out", str(out), "--users", "200", "--items", "150", "--density", "0.05"]
    assert main([*args, "--drift", "0.7", "--seed", "9"]) == 0
    assert out.read_bytes() == a.read_bytes()
    assert main([*args, "--drift", "2"]) == 1
    assert "drift must be in [0, 1]" in capsys.readouterr().err
