"""The ingest pipeline: read -> clean -> encode -> dedupe -> k-core -> split -> re-index -> write.

Ids are first encoded to provisional integer codes in sorted raw-id order, so dedupe, k-core and splitting
run on integers. After splitting, the users and items present in train are renumbered ``0..n-1`` in the
same order, so the final maps are again "sorted unique raw ids" and cover exactly the training graph.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipelines import cleaning, splits
from pipelines.columns import ITEM_ID, ITEM_IDX, RATING, RAW_ID, TIMESTAMP, USER_ID, USER_IDX
from pipelines.dataset import write_dataset
from pipelines.idmap import build_id_map, compact, encode
from pipelines.readers import LogSpec, read_log
from recsys.atomic import check_writable
from recsys.errors import InputError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestConfig:
    """Everything that decides the output of one ingest run (recorded in ``meta.json``).

    Args:
        out: Dataset directory to write.
        spec: How to read the log file(s).
        input: The log, for the random / temporal / cutoff splits.
        train: Training file of an existing split (``split="preset"``).
        test: Test file of an existing split (``split="preset"``).
        split: ``random`` (per user), ``temporal`` (per user, last events), ``cutoff`` (global time),
            or ``preset`` (keep the given train/test, carve valid out of train).
        valid_ratio: Share of each user's interactions for valid (random, preset, and cutoff quantile).
        test_ratio: Share of each user's interactions for test (random, and cutoff quantile).
        valid_n: Events per user for valid in the temporal split.
        test_n: Events per user for test in the temporal split.
        valid_cutoff: Time from which events are valid in the cutoff split (same units as the log).
        test_cutoff: Time from which events are test in the cutoff split.
        min_rating: Keep only rows with ``rating >= min_rating`` (needs a rating column).
        min_user_interactions: k-core threshold on users (1 = off).
        min_item_interactions: k-core threshold on items (1 = off).
        seed: Seed of the random and preset splits.
        force: Replace an existing output directory.
    """

    out: Path
    spec: LogSpec
    input: Path | None = None
    train: Path | None = None
    test: Path | None = None
    split: str = "random"
    valid_ratio: float = 0.1
    test_ratio: float = 0.2
    valid_n: int = 1
    test_n: int = 1
    valid_cutoff: int | None = None
    test_cutoff: int | None = None
    min_rating: float | None = None
    min_user_interactions: int = 1
    min_item_interactions: int = 1
    seed: int = 0
    force: bool = False

    def __post_init__(self) -> None:
        if self.split not in splits.SPLITS:
            msg = f"unknown split {self.split!r}; expected one of {', '.join(splits.SPLITS)}"
            raise InputError(msg)
        if self.split == "preset":
            if self.train is None or self.test is None or self.input is not None:
                msg = "the preset split takes --train FILE and --test FILE (and no --input)"
                raise InputError(msg)
            if self.min_user_interactions > 1 or self.min_item_interactions > 1:
                msg = "k-core filtering would change a preset split; drop --min-user/item-interactions"
                raise InputError(msg)
        elif self.input is None or self.train is not None or self.test is not None:
            msg = f"the {self.split} split takes --input FILE (--train/--test are for --split preset)"
            raise InputError(msg)
        if self.min_rating is not None and self.spec.rating_col is None:
            msg = "--min-rating needs the rating column named with --rating-col"
            raise InputError(msg)
        if self.min_user_interactions < 1 or self.min_item_interactions < 1:
            msg = "--min-user-interactions and --min-item-interactions must be >= 1"
            raise InputError(msg)

    def inputs(self) -> dict[str, Path]:
        """The files read, by role."""
        if self.split == "preset":
            assert self.train is not None and self.test is not None  # guaranteed by __post_init__
            return {"train": self.train, "test": self.test}
        assert self.input is not None
        return {"input": self.input}


@dataclass
class IngestResult:
    """What an ingest run wrote: the directory and its ``meta.json`` content."""

    out: Path
    meta: dict[str, Any] = field(default_factory=dict)


class _StepLog:
    """Records rows in/out of each cleaning step, logs it, and fails on a step that empties the data."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []

    def record(self, name: str, rows_in: int, rows_out: int, **extra: Any) -> None:
        self.steps.append({"step": name, "rows_in": rows_in, "rows_out": rows_out, **extra})
        logger.info("%-22s %12s -> %12s rows", name, f"{rows_in:,}", f"{rows_out:,}")
        if rows_in and not rows_out:
            msg = f"no interactions left after step {name!r} ({rows_in:,} rows in); loosen its option"
            raise InputError(msg)


def ingest(cfg: IngestConfig) -> IngestResult:
    """Run the whole pipeline and write the dataset directory atomically.

    Raises:
        InputError: bad input or options; nothing is written in that case.
    """
    start = time.perf_counter()
    check_writable(cfg.out, force=cfg.force)
    log = _StepLog()
    frames = {role: _read(path, cfg, log, role) for role, path in cfg.inputs().items()}

    user_map = build_id_map(pl.concat([f[USER_ID] for f in frames.values()]), USER_IDX)
    item_map = build_id_map(pl.concat([f[ITEM_ID] for f in frames.values()]), ITEM_IDX)
    coded = {role: _encode_dedupe(f, user_map, item_map, log, role) for role, f in frames.items()}

    if cfg.split == "preset":
        parts = splits.carve_valid(coded["train"], coded["test"], cfg.valid_ratio, cfg.seed)
    else:
        df = coded["input"]
        if cfg.min_user_interactions > 1 or cfg.min_item_interactions > 1:
            kept, rounds = cleaning.k_core(df, cfg.min_user_interactions, cfg.min_item_interactions)
            log.record("k_core", df.height, kept.height, rounds=rounds)
            df = kept
        parts = _split(df, cfg)

    parts, dropped = _restrict_to_train(parts, user_map.height, item_map.height)
    final, users, items = _reindex(parts, user_map, item_map)
    meta = _meta(cfg, log, final, users.height, items.height, dropped, start)
    write_dataset(cfg.out, final, users, items, meta, force=cfg.force)
    logger.info(
        "wrote %s: %s users, %s items, %s/%s/%s train/valid/test in %.1f s",
        cfg.out,
        f"{users.height:,}",
        f"{items.height:,}",
        f"{final.train.height:,}",
        f"{final.valid.height:,}",
        f"{final.test.height:,}",
        meta["elapsed_seconds"],
    )
    return IngestResult(out=cfg.out, meta=meta)


def _read(path: Path, cfg: IngestConfig, log: _StepLog, role: str) -> pl.DataFrame:
    df = read_log(path, cfg.spec)
    if df.height == 0:
        msg = f"{path}: no interactions found (only a header or blank lines?)"
        raise InputError(msg)
    kept = cleaning.drop_null_ids(df.lazy()).collect()
    log.record(f"{role}:drop_null_ids", df.height, kept.height, nulls=df.height - kept.height)
    if cfg.min_rating is not None:
        rated = cleaning.keep_min_rating(kept.lazy(), cfg.min_rating).collect()
        log.record(f"{role}:min_rating", kept.height, rated.height, min_rating=cfg.min_rating)
        kept = rated
    return kept.drop(RATING, strict=False)


def _encode_dedupe(
    df: pl.DataFrame, user_map: pl.DataFrame, item_map: pl.DataFrame, log: _StepLog, role: str
) -> pl.DataFrame:
    lf = df.lazy().pipe(encode, USER_ID, user_map, USER_IDX).pipe(encode, ITEM_ID, item_map, ITEM_IDX)
    deduped = cleaning.dedupe_earliest(lf).collect()
    log.record(f"{role}:dedupe", df.height, deduped.height)
    return deduped


def _split(df: pl.DataFrame, cfg: IngestConfig) -> splits.Splits:
    if cfg.split == "random":
        return splits.split_random(df, cfg.valid_ratio, cfg.test_ratio, cfg.seed)
    if cfg.split == "temporal":
        return splits.split_temporal(df, cfg.valid_n, cfg.test_n)
    return splits.split_cutoff(
        df,
        valid_cutoff=cfg.valid_cutoff,
        test_cutoff=cfg.test_cutoff,
        valid_ratio=cfg.valid_ratio,
        test_ratio=cfg.test_ratio,
    )


def _restrict_to_train(
    parts: splits.Splits, num_users: int, num_items: int
) -> tuple[splits.Splits, dict[str, int]]:
    """Drop valid/test rows whose user or item never occurs in train (they cannot be scored)."""
    seen_users = np.zeros(num_users, dtype=bool)
    seen_items = np.zeros(num_items, dtype=bool)
    seen_users[parts.train[USER_IDX].to_numpy()] = True
    seen_items[parts.train[ITEM_IDX].to_numpy()] = True
    kept, dropped = {}, {}
    for name in ("valid", "test"):
        df = getattr(parts, name)
        mask = seen_users[df[USER_IDX].to_numpy()] & seen_items[df[ITEM_IDX].to_numpy()]
        kept[name] = df.filter(pl.Series(mask))
        dropped[f"{name}_not_in_train"] = df.height - kept[name].height
        if dropped[f"{name}_not_in_train"]:
            logger.info(
                "dropped %s %s rows whose user or item is not in train", dropped[f"{name}_not_in_train"], name
            )
    return splits.Splits(parts.train, kept["valid"], kept["test"]), dropped


def _reindex(
    parts: splits.Splits, user_map: pl.DataFrame, item_map: pl.DataFrame
) -> tuple[splits.Splits, pl.DataFrame, pl.DataFrame]:
    """Renumber train's users and items to ``0..n-1`` (order kept) and build the final id maps."""
    user_remap, user_codes = compact(parts.train[USER_IDX].to_numpy(), user_map.height)
    item_remap, item_codes = compact(parts.train[ITEM_IDX].to_numpy(), item_map.height)

    def renumber(df: pl.DataFrame) -> pl.DataFrame:
        columns = [
            pl.Series(USER_IDX, user_remap[df[USER_IDX].to_numpy()]),
            pl.Series(ITEM_IDX, item_remap[df[ITEM_IDX].to_numpy()]),
        ]
        if TIMESTAMP in df.columns:
            columns.append(df[TIMESTAMP])
        return pl.DataFrame(columns).sort(USER_IDX, ITEM_IDX)

    users = user_map[user_codes].select(pl.int_range(pl.len(), dtype=pl.Int64).alias(USER_IDX), RAW_ID)
    items = item_map[item_codes].select(pl.int_range(pl.len(), dtype=pl.Int64).alias(ITEM_IDX), RAW_ID)
    final = splits.Splits(renumber(parts.train), renumber(parts.valid), renumber(parts.test))
    return final, users, items


def _meta(
    cfg: IngestConfig,
    log: _StepLog,
    parts: splits.Splits,
    num_users: int,
    num_items: int,
    dropped: dict[str, int],
    start: float,
) -> dict[str, Any]:
    counts = {
        name: {
            "interactions": df.height,
            "users": df[USER_IDX].n_unique(),
            "items": df[ITEM_IDX].n_unique(),
        }
        for name, df in (("train", parts.train), ("valid", parts.valid), ("test", parts.test))
    }
    options = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items() if k != "out"}
    return {
        "num_users": num_users,
        "num_items": num_items,
        "has_timestamp": TIMESTAMP in parts.train.columns,
        "counts": counts,
        "dropped": dropped,
        "steps": log.steps,
        "options": options,
        "inputs": [
            {"role": role, "name": path.name, "path": str(path.resolve()), "bytes": path.stat().st_size}
            for role, path in cfg.inputs().items()
        ],
        "elapsed_seconds": round(time.perf_counter() - start, 3),
    }
