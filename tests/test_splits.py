import numpy as np
import polars as pl
import pytest

from pipelines.splits import carve_valid, split_cutoff, split_random, split_temporal
from recsys.errors import InputError


def interactions(num_users=50, per_user=10, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(num_users):
        n = 1 + (u % per_user) * 2
        for i in rng.choice(100, size=n, replace=False):
            rows.append((u, int(i), int(rng.integers(1000))))
    return pl.DataFrame(rows, schema=["user_idx", "item_idx", "timestamp"], orient="row").sort(
        "user_idx", "item_idx"
    )


def pairs(df):
    return set(zip(df["user_idx"].to_list(), df["item_idx"].to_list(), strict=True))


def check_partition(df, parts):
    train, valid, test = pairs(parts.train), pairs(parts.valid), pairs(parts.test)
    assert not (train & valid) and not (train & test) and not (valid & test)
    assert train | valid | test == pairs(df)
    # Every user keeps at least one training interaction.
    assert set(parts.train["user_idx"]) == set(df["user_idx"])


def test_random_split_is_deterministic_and_complete():
    df = interactions()
    a = split_random(df, 0.1, 0.2, seed=1)
    b = split_random(df, 0.1, 0.2, seed=1)
    c = split_random(df, 0.1, 0.2, seed=2)
    check_partition(df, a)
    assert pairs(a.test) == pairs(b.test) and pairs(a.valid) == pairs(b.valid)
    assert pairs(a.test) != pairs(c.test)
    # A user with 19 interactions: round(3.8) = 4 test, round(1.9) = 2 valid.
    u = df.group_by("user_idx").len().filter(pl.col("len") == 19)["user_idx"][0]
    assert a.test.filter(pl.col("user_idx") == u).height == 4
    assert a.valid.filter(pl.col("user_idx") == u).height == 2
    # A user with a single interaction keeps it in train.
    assert a.train.filter(pl.col("user_idx") == 0).height == 1


def test_temporal_split_takes_the_last_events():
    df = pl.DataFrame(
        {"user_idx": [0, 0, 0, 0, 1, 1], "item_idx": [0, 1, 2, 3, 0, 1], "timestamp": [40, 10, 30, 20, 5, 6]}
    )
    parts = split_temporal(df, valid_n=1, test_n=1)
    check_partition(df, parts)
    assert pairs(parts.test) == {(0, 0), (1, 1)}
    assert pairs(parts.valid) == {(0, 2)}  # user 1 has 2 events: test 1, valid 0, train 1
    assert pairs(parts.train) == {(0, 1), (0, 3), (1, 0)}


def test_cutoff_split_by_time():
    df = pl.DataFrame({"user_idx": [0, 0, 0, 1], "item_idx": [0, 1, 2, 3], "timestamp": [1, 5, 9, 9]})
    parts = split_cutoff(df, valid_cutoff=5, test_cutoff=9, valid_ratio=0.1, test_ratio=0.2)
    assert pairs(parts.train) == {(0, 0)}
    assert pairs(parts.valid) == {(0, 1)}
    assert pairs(parts.test) == {(0, 2), (1, 3)}  # user 1 has no train: dropped later by the pipeline


def test_time_splits_need_a_time_column():
    df = pl.DataFrame({"user_idx": [0], "item_idx": [0]})
    with pytest.raises(InputError, match="--time-col"):
        split_temporal(df, 1, 1)


def test_carve_valid_keeps_test_and_every_item():
    df = interactions(seed=3).drop("timestamp")
    test = df.head(5)
    parts = carve_valid(df, test, valid_ratio=0.5, seed=0)
    assert parts.test.equals(test)
    assert pairs(parts.train) | pairs(parts.valid) == pairs(df)
    assert set(parts.train["item_idx"]) == set(df["item_idx"])
    assert set(parts.train["user_idx"]) == set(df["user_idx"])
    assert parts.valid.height > 0
