import numpy as np
import polars as pl

from pipelines.idmap import build_id_map, compact


def test_integer_looking_strings_become_int_and_sort_numerically():
    m = build_id_map(pl.Series(["10", "9", "10", "-1"]), "user_idx")
    assert m["raw_id"].dtype == pl.Int64
    assert m["raw_id"].to_list() == [-1, 9, 10]
    assert m["user_idx"].to_list() == [0, 1, 2]
    assert m["key"].to_list() == ["-1", "9", "10"]


def test_non_canonical_integers_stay_strings():
    m = build_id_map(pl.Series(["007", "7", "b"]), "item_idx")
    assert m["raw_id"].dtype == pl.String
    assert m["raw_id"].to_list() == ["007", "7", "b"]


def test_round_trip_raw_to_index_to_raw():
    raw = pl.Series("user_id", ["u3", "u1", "u2", "u1"])
    m = build_id_map(raw, "user_idx")
    idx = pl.DataFrame({"user_id": raw}).join(m.rename({"key": "user_id"}), on="user_id", how="left")[
        "user_idx"
    ]
    back = m["raw_id"].gather(idx)
    assert back.to_list() == raw.to_list()


def test_compact_keeps_order():
    remap, present = compact(np.array([5, 2, 5, 0]), 7)
    assert present.tolist() == [0, 2, 5]
    assert remap.tolist() == [0, -1, 1, -1, -1, 2, -1]
