"""Train/valid/test splitters. Deterministic: the same input and seed always give the same split.

Every splitter takes deduplicated interactions with integer ``user_idx``/``item_idx`` sorted by
(user, item), and never leaves a user without a training interaction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from pipelines.columns import ITEM_IDX, TIMESTAMP, USER_IDX
from recsys.errors import InputError

SPLITS = ("random", "temporal", "cutoff", "preset")
_PART = "_part"
_TRAIN, _VALID, _TEST = 0, 1, 2


@dataclass(frozen=True)
class Splits:
    """The three parts of a dataset, same columns in each."""

    train: pl.DataFrame
    valid: pl.DataFrame
    test: pl.DataFrame


def split_random(df: pl.DataFrame, valid_ratio: float, test_ratio: float, seed: int) -> Splits:
    """Per-user random split: each user's items are shuffled, then the last shares go to test and valid.

    A user with n interactions gets ``round(n * test_ratio)`` test and ``round(n * valid_ratio)`` valid rows,
    both cut down so at least one stays in train (a user with one interaction is train only).
    """
    _check_ratios(valid_ratio, test_ratio)
    key = np.random.default_rng(seed).random(df.height)
    ordered = df.with_columns(pl.Series("_key", key)).with_columns(
        (pl.col("_key").rank("ordinal").over(USER_IDX) - 1).alias("_pos")
    )
    return _assign_tail(ordered, _share(valid_ratio), _share(test_ratio)).pipe(_to_splits)


def split_temporal(df: pl.DataFrame, valid_n: int, test_n: int) -> Splits:
    """Per-user leave-last-out: a user's last ``test_n`` events go to test, the ``valid_n`` before to valid.

    Ties in time are broken by item index so the split does not depend on file order.
    """
    _require_timestamp(df, "temporal")
    if valid_n < 0 or test_n < 1:
        msg = f"temporal split needs --test-n >= 1 and --valid-n >= 0, got {test_n} and {valid_n}"
        raise InputError(msg)
    ordered = df.sort(USER_IDX, TIMESTAMP, ITEM_IDX).with_columns(
        pl.int_range(pl.len()).over(USER_IDX).alias("_pos")
    )
    return _assign_tail(ordered, pl.lit(valid_n), pl.lit(test_n)).pipe(_to_splits)


def split_cutoff(
    df: pl.DataFrame,
    *,
    valid_cutoff: int | None,
    test_cutoff: int | None,
    valid_ratio: float,
    test_ratio: float,
) -> Splits:
    """Global temporal split: events at or after ``test_cutoff`` are test, from ``valid_cutoff`` valid.

    Missing cutoffs are taken at the time quantiles that leave ``test_ratio`` (and ``valid_ratio``) of all
    events after them. Users whose events all fall after the cutoffs have no training data; their valid
    and test rows are dropped later, with the count reported.
    """
    _require_timestamp(df, "cutoff")
    _check_ratios(valid_ratio, test_ratio)
    times = df[TIMESTAMP]
    if test_cutoff is None:
        test_cutoff = int(times.quantile(1.0 - test_ratio, "lower") or 0)
    if valid_cutoff is None:
        valid_cutoff = int(times.quantile(1.0 - test_ratio - valid_ratio, "lower") or 0)
    if valid_cutoff > test_cutoff:
        msg = f"--valid-cutoff ({valid_cutoff}) must not be after --test-cutoff ({test_cutoff})"
        raise InputError(msg)
    part = (
        pl.when(pl.col(TIMESTAMP) >= test_cutoff)
        .then(_TEST)
        .when(pl.col(TIMESTAMP) >= valid_cutoff)
        .then(_VALID)
        .otherwise(_TRAIN)
    )
    return _to_splits(df.with_columns(part.alias(_PART)))


def carve_valid(train: pl.DataFrame, test: pl.DataFrame, valid_ratio: float, seed: int) -> Splits:
    """Keep a given train/test split and move a per-user random share of train to valid.

    Used for published splits (gowalla): test is returned untouched, and no user or item loses its last
    training interaction, so the users, items and train+valid count stay exactly those of the input.
    """
    carved = split_random(train, valid_ratio, 0.0, seed)
    # An item whose every training row was drawn into valid would vanish from the graph; return its rows.
    orphan = carved.valid.join(carved.train.select(ITEM_IDX).unique(), on=ITEM_IDX, how="anti")
    if orphan.height:
        back = carved.valid.join(orphan.select(ITEM_IDX).unique(), on=ITEM_IDX, how="semi")
        carved = Splits(
            train=pl.concat([carved.train, back]).sort(USER_IDX, ITEM_IDX),
            valid=carved.valid.join(orphan.select(ITEM_IDX).unique(), on=ITEM_IDX, how="anti"),
            test=carved.test,
        )
    return Splits(train=carved.train, valid=carved.valid, test=test)


def _share(ratio: float) -> pl.Expr:
    """``round(n * ratio)`` rows of a user with n rows (halves round up)."""
    return (pl.len().over(USER_IDX) * ratio + 0.5).floor().cast(pl.Int64)


def _assign_tail(ordered: pl.DataFrame, valid_n: pl.Expr, test_n: pl.Expr) -> pl.DataFrame:
    """Label rows by position: the last ``test_n`` test, the ``valid_n`` before valid, the rest train.

    ``_pos`` is each row's 0-based position within its user; counts are clipped so train keeps >= 1 row.
    """
    n = pl.len().over(USER_IDX)
    n_test = pl.min_horizontal(test_n, n - 1)
    n_valid = pl.min_horizontal(valid_n, n - 1 - n_test)
    part = (
        pl.when(pl.col("_pos") >= n - n_test)
        .then(_TEST)
        .when(pl.col("_pos") >= n - n_test - n_valid)
        .then(_VALID)
        .otherwise(_TRAIN)
    )
    return ordered.with_columns(part.alias(_PART)).drop("_pos", "_key", strict=False)


def _to_splits(labelled: pl.DataFrame) -> Splits:
    parts = [
        labelled.filter(pl.col(_PART) == p).drop(_PART).sort(USER_IDX, ITEM_IDX)
        for p in (_TRAIN, _VALID, _TEST)
    ]
    return Splits(*parts)


def _check_ratios(valid_ratio: float, test_ratio: float) -> None:
    if not (0.0 <= valid_ratio < 1.0 and 0.0 <= test_ratio < 1.0 and valid_ratio + test_ratio < 1.0):
        msg = (
            f"--valid-ratio ({valid_ratio}) and --test-ratio ({test_ratio}) must each be in [0, 1) "
            "and sum to less than 1"
        )
        raise InputError(msg)


def _require_timestamp(df: pl.DataFrame, split: str) -> None:
    if TIMESTAMP not in df.columns:
        msg = f"the {split} split needs event times; name the time column with --time-col"
        raise InputError(msg)
