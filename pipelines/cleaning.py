"""Cleaning steps, each a pure frame -> frame function whose row counts the pipeline logs."""

from __future__ import annotations

import numpy as np
import polars as pl

from pipelines.columns import ITEM_ID, ITEM_IDX, LINE, RATING, TIMESTAMP, USER_ID, USER_IDX


def drop_null_ids(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Drop rows whose raw user or item id is missing (empty fields in text formats count as missing)."""
    return lf.filter(pl.col(USER_ID).is_not_null() & pl.col(ITEM_ID).is_not_null())


def keep_min_rating(lf: pl.LazyFrame, min_rating: float) -> pl.LazyFrame:
    """Keep rows with ``rating >= min_rating``; a missing rating never passes the threshold."""
    return lf.filter(pl.col(RATING) >= min_rating)


def dedupe_earliest(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Keep one row per (user, item): the earliest event, or the first in the file when there is no time.

    The result is sorted by (user, item) so every later step sees the same row order for the same input.
    """
    names = lf.collect_schema().names()
    aggs = [pl.col(LINE).min()]
    if TIMESTAMP in names:
        aggs.append(pl.col(TIMESTAMP).min())
    return lf.group_by(USER_IDX, ITEM_IDX).agg(aggs).sort(USER_IDX, ITEM_IDX)


def k_core(
    df: pl.DataFrame, min_user: int, min_item: int, *, max_rounds: int = 1000
) -> tuple[pl.DataFrame, int]:
    """Iteratively drop users with < ``min_user`` and items with < ``min_item`` interactions.

    Removing an item can push a user under the threshold and vice versa, so the filter repeats until a
    round removes nothing (a fixed point: every remaining user and item meets its threshold).
    Counts are ``np.bincount`` over the integer codes: one vectorised pass per round.

    Args:
        df: Deduplicated interactions with integer ``user_idx`` / ``item_idx`` codes.
        min_user: Minimum interactions per user (1 disables the user side).
        min_item: Minimum interactions per item (1 disables the item side).
        max_rounds: Safety bound; each productive round removes at least one row, so it is never hit
            before the input runs out.

    Returns:
        The filtered frame and the number of rounds it took.
    """
    users = df[USER_IDX].to_numpy()
    items = df[ITEM_IDX].to_numpy()
    num_users = int(users.max()) + 1 if len(users) else 0
    num_items = int(items.max()) + 1 if len(items) else 0
    keep = np.ones(len(users), dtype=bool)
    kept = len(users)
    rounds = 0
    while kept and rounds < max_rounds:
        rounds += 1
        user_ok = np.bincount(users[keep], minlength=num_users) >= min_user
        item_ok = np.bincount(items[keep], minlength=num_items) >= min_item
        keep &= user_ok[users] & item_ok[items]
        if int(keep.sum()) == kept:
            break
        kept = int(keep.sum())
    return df.filter(pl.Series(keep)), rounds
