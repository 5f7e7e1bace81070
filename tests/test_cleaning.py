import polars as pl
from polars.testing import assert_frame_equal

from pipelines.cleaning import dedupe_earliest, drop_null_ids, k_core, keep_min_rating


def test_drop_null_ids_and_min_rating():
    df = pl.DataFrame(
        {"user_id": ["a", None, "c", "d"], "item_id": ["x", "y", None, "z"], "rating": [5.0, 4.0, 3.0, None]}
    )
    kept = drop_null_ids(df.lazy()).collect()
    assert kept["user_id"].to_list() == ["a", "d"]
    # A missing rating never passes the threshold.
    assert keep_min_rating(kept.lazy(), 4.0).collect()["user_id"].to_list() == ["a"]


def test_dedupe_keeps_earliest_event():
    df = pl.DataFrame(
        {
            "line": [2, 3, 4, 5],
            "user_idx": [1, 0, 1, 1],
            "item_idx": [0, 0, 0, 1],
            "timestamp": [30, 10, 20, 40],
        }
    )
    expected = pl.DataFrame(
        {"user_idx": [0, 1, 1], "item_idx": [0, 0, 1], "line": [3, 2, 5], "timestamp": [10, 20, 40]}
    )
    assert_frame_equal(dedupe_earliest(df.lazy()).collect(), expected)


def test_dedupe_without_time_keeps_first_line():
    df = pl.DataFrame({"line": [7, 3], "user_idx": [0, 0], "item_idx": [4, 4]})
    assert dedupe_earliest(df.lazy()).collect()["line"].to_list() == [3]


def test_k_core_reaches_fixed_point():
    # Items 0 and 1 are shared by users 0-2; item 2 is seen only by user 3, who also saw item 0.
    # With k = 2: item 2 goes (1 user), then user 3 has 1 item left and goes, and the rest is a 2-core.
    edges = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 2)]
    df = pl.DataFrame({"user_idx": [u for u, _ in edges], "item_idx": [i for _, i in edges]})
    kept, rounds = k_core(df, min_user=2, min_item=2)
    assert sorted(zip(kept["user_idx"], kept["item_idx"], strict=True)) == edges[:6]
    assert rounds == 3  # round 1 drops item 2, round 2 drops user 3, round 3 confirms the fixed point
    users = kept.group_by("user_idx").len()["len"]
    items = kept.group_by("item_idx").len()["len"]
    assert users.min() >= 2 and items.min() >= 2


def test_k_core_can_empty_everything():
    df = pl.DataFrame({"user_idx": [0, 1], "item_idx": [0, 1]})
    kept, _ = k_core(df, min_user=2, min_item=1)
    assert kept.height == 0
