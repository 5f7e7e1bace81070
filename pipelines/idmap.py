"""Raw ids <-> contiguous indices, built explicitly from sorted unique raw ids.

Never from Categorical physical codes: those depend on the order strings were first seen and are not
stable across frames (pola-rs/polars#23948).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from pipelines.columns import RAW_ID

_INTEGER = r"^-?(0|[1-9][0-9]{0,17})$"


def build_id_map(values: pl.Series, index_name: str) -> pl.DataFrame:
    """Map every distinct raw id to a contiguous index in sorted raw-id order.

    String ids that are all canonical integers ("42", not "042") become Int64 and sort numerically, so a
    CSV of integer ids gives the same map as a Parquet file of them. Any other string keeps its text.

    Args:
        values: Raw ids, Int64 or String, possibly repeated; no nulls.
        index_name: Name of the index column (``user_idx`` or ``item_idx``).

    Returns:
        Frame ``(key, raw_id, <index_name>)`` sorted by the index: ``key`` has the dtype of ``values`` (for
        joining back), ``raw_id`` the dtype written to disk.
    """
    unique = values.unique().rename("key")
    raw = unique
    if unique.dtype == pl.String and unique.str.contains(_INTEGER).all() and unique.len() > 0:
        raw = unique.cast(pl.Int64)
    return (
        pl.DataFrame({"key": unique, RAW_ID: raw})
        .sort(RAW_ID)
        .with_row_index(index_name)
        .select("key", RAW_ID, pl.col(index_name).cast(pl.Int64))
    )


def encode(lf: pl.LazyFrame, column: str, id_map: pl.DataFrame, index_name: str) -> pl.LazyFrame:
    """Replace the raw id ``column`` by its index from ``id_map`` (an inner join: unknown ids vanish)."""
    keys = id_map.select(pl.col("key").alias(column), index_name).lazy()
    return lf.join(keys, on=column, how="inner").drop(column)


def compact(codes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Renumber the codes present in ``codes`` to ``0..m-1``, keeping their order.

    Returns:
        ``(remap, present)``: ``remap[c]`` is the new index of code ``c`` or -1 when absent, and
        ``present`` lists the kept old codes in order (``present[new] == old``).
    """
    mask = np.zeros(size, dtype=bool)
    mask[codes] = True
    present = np.flatnonzero(mask)
    remap = np.full(size, -1, dtype=np.int64)
    remap[present] = np.arange(len(present), dtype=np.int64)
    return remap, present
