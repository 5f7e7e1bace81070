"""Synthetic interaction logs with the shape of real ones, at any size.

The generative story is a low-rank (topic) preference model with power-law popularity:

* every item belongs to one of ``num_topics`` latent topics and has a Zipf popularity weight;
* every user prefers a primary and a secondary topic and has a log-normal activity level;
* an event picks the primary topic (65 %), the secondary one (25 %) or "anything popular" (10 %), then an
  item by popularity within that choice.

So most-popular is a fair baseline, but a model that learns each user's topics beats it clearly. Ids are
strings (``u0001234``, ``i0000042``) in an order unrelated to activity; timestamps are epoch seconds;
ratings 1-5 are higher on the user's primary topic; and a few dirty rows (null ids, repeated events) are
mixed in for the cleaning steps to find. Generation is vectorised in chunks of users, so memory stays
bounded however many rows are asked for.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys.errors import InputError
from recsys.progress import Progress

logger = logging.getLogger(__name__)

_START = 1_600_000_000  # 2020-09-13, epoch seconds
_SPAN = 365 * 24 * 3600
_CHUNK_ROWS = 2_000_000
_WRITERS = ("csv", "tsv", "parquet", "jsonl")


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and shape of a synthetic log.

    Args:
        num_users: Distinct users before dirty rows.
        num_items: Distinct items.
        num_interactions: Approximate number of clean events (the per-user counts are rounded).
        num_topics: Latent topics; 0 picks ``max(4, round(num_items ** 0.5 / 2))``.
        popularity_exponent: Zipf exponent of item popularity (1.0 is a typical long tail).
        dirty_fraction: Share of extra rows that are dirty: half null ids, half repeated events.
        seed: Seed of every random draw.
    """

    num_users: int = 1000
    num_items: int = 800
    num_interactions: int = 30_000
    num_topics: int = 0
    popularity_exponent: float = 1.0
    dirty_fraction: float = 0.002
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.num_users, self.num_items, self.num_interactions) < 1:
            msg = "num_users, num_items and num_interactions must be >= 1"
            raise InputError(msg)
        if not 0.0 <= self.dirty_fraction < 0.5:
            msg = f"dirty_fraction must be in [0, 0.5), got {self.dirty_fraction}"
            raise InputError(msg)

    @property
    def topics(self) -> int:
        """The number of topics actually used."""
        return self.num_topics or max(4, round(self.num_items**0.5 / 2))


def generate(cfg: SyntheticConfig, out: Path, fmt: str = "csv", *, progress: bool = True) -> int:
    """Write a synthetic log to ``out`` (atomically) and return the number of rows written.

    Columns: ``user_id``, ``item_id`` (strings), ``timestamp`` (epoch seconds), ``rating`` (1-5).
    """
    if fmt not in _WRITERS:
        msg = f"unknown output format {fmt!r}; expected one of {', '.join(_WRITERS)}"
        raise InputError(msg)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    rng = np.random.default_rng(cfg.seed)
    world = _World(cfg, rng)
    rows = 0
    try:
        with _Writer(tmp, fmt) as writer:
            bounds = world.user_chunks(_CHUNK_ROWS)
            for lo, hi in Progress(bounds, desc="generate", unit="chunk", enabled=progress):
                chunk = world.events(lo, hi, rng)
                writer.write(chunk)
                rows += chunk.height
        tmp.rename(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("wrote %s rows to %s", f"{rows:,}", out)
    return rows


class _World:
    """The latent structure shared by all chunks: topics, popularity, user tastes and activity."""

    def __init__(self, cfg: SyntheticConfig, rng: np.random.Generator) -> None:
        self.cfg = cfg
        topics = cfg.topics
        item_topic = rng.integers(topics, size=cfg.num_items)
        weight = (rng.permutation(cfg.num_items) + 1.0) ** -cfg.popularity_exponent
        # Items sorted by topic; each topic's cumulative popularity spans [t, t + 1), so one searchsorted
        # of (topic + uniform) draws an item of that topic by popularity, for all events at once.
        self.order = np.lexsort((np.arange(cfg.num_items), item_topic))
        sorted_topic = item_topic[self.order]
        sorted_weight = weight[self.order]
        totals = np.bincount(sorted_topic, weights=sorted_weight, minlength=topics)
        cum = np.cumsum(sorted_weight) - np.repeat(
            np.cumsum(totals) - totals, np.bincount(sorted_topic, minlength=topics)
        )
        self.topic_cdf = sorted_topic + cum / np.maximum(totals[sorted_topic], 1e-300)
        self.global_cdf = np.cumsum(weight) / weight.sum()
        self.item_topic = item_topic
        self.primary = rng.integers(topics, size=cfg.num_users)
        self.secondary = (self.primary + rng.integers(1, max(topics, 2), size=cfg.num_users)) % topics
        activity = rng.lognormal(0.0, 1.0, size=cfg.num_users)
        self.counts = np.maximum(1, np.round(activity / activity.sum() * cfg.num_interactions)).astype(
            np.int64
        )
        self.user_names = rng.permutation(cfg.num_users)
        self.item_names = rng.permutation(cfg.num_items)
        self.start = rng.integers(_START, _START + _SPAN // 2, size=cfg.num_users)

    def user_chunks(self, rows: int) -> list[tuple[int, int]]:
        """Contiguous user ranges holding about ``rows`` events each."""
        ends = np.searchsorted(np.cumsum(self.counts), np.arange(rows, self.counts.sum() + rows, rows))
        edges = np.unique(np.concatenate([[0], np.minimum(ends + 1, self.cfg.num_users)]))
        return list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))

    def events(self, lo: int, hi: int, rng: np.random.Generator) -> pl.DataFrame:
        """All events of users ``lo..hi-1``, with their share of dirty rows, shuffled."""
        users = np.repeat(np.arange(lo, hi), self.counts[lo:hi])
        n = len(users)
        choice = rng.random(n)
        topic = np.where(choice < 0.65, self.primary[users], self.secondary[users])
        by_topic = self.order[
            np.minimum(np.searchsorted(self.topic_cdf, topic + rng.random(n)), len(self.order) - 1)
        ]
        popular = np.minimum(np.searchsorted(self.global_cdf, rng.random(n)), self.cfg.num_items - 1)
        items = np.where(choice < 0.9, by_topic, popular)
        affinity = 1.2 * (self.item_topic[items] == self.primary[users]) + 0.5 * (
            self.item_topic[items] == self.secondary[users]
        )
        rating = np.clip(np.round(3.0 + affinity + rng.normal(0.0, 1.0, n)), 1, 5).astype(np.int64)
        timestamp = self.start[users] + rng.integers(0, _SPAN // 2, size=n)
        df = pl.DataFrame(
            {
                "user_id": self.user_names[users],
                "item_id": self.item_names[items],
                "timestamp": timestamp,
                "rating": rating,
            }
        )
        df = pl.concat([df, self._dirty(df, rng)]) if self.cfg.dirty_fraction else df
        return df.sample(fraction=1.0, shuffle=True, seed=int(rng.integers(2**31))).select(
            pl.format("u{}", pl.col("user_id").cast(pl.String).str.zfill(7)).alias("user_id"),
            pl.format("i{}", pl.col("item_id").cast(pl.String).str.zfill(7)).alias("item_id"),
            "timestamp",
            "rating",
        )

    def _dirty(self, df: pl.DataFrame, rng: np.random.Generator) -> pl.DataFrame:
        """Repeated events (same pair, later time) and rows with a missing user or item id."""
        k = max(1, int(df.height * self.cfg.dirty_fraction / 2))
        repeats = df.sample(k, seed=int(rng.integers(2**31)), with_replacement=True).with_columns(
            pl.col("timestamp") + 3600
        )
        nulls = df.sample(k, seed=int(rng.integers(2**31)), with_replacement=True).with_columns(
            pl.when(pl.int_range(pl.len()) % 2 == 0).then(None).otherwise(pl.col("user_id")).alias("user_id"),
            pl.when(pl.int_range(pl.len()) % 2 == 1).then(None).otherwise(pl.col("item_id")).alias("item_id"),
        )
        return pl.concat([repeats, nulls])


class _Writer:
    """Appends chunks to one file in the chosen format."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path, self.fmt = path, fmt
        self.first = True
        self.parquet_writer: Any = None  # pyarrow.parquet.ParquetWriter, created with the first chunk

    def __enter__(self) -> _Writer:
        self.handle = self.path.open("wb")
        return self

    def write(self, df: pl.DataFrame) -> None:
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            table = df.to_arrow()
            if self.parquet_writer is None:
                self.parquet_writer = pq.ParquetWriter(self.handle, table.schema)
            self.parquet_writer.write_table(table)
        elif self.fmt == "jsonl":
            df.write_ndjson(self.handle)
        else:
            df.write_csv(self.handle, separator="\t" if self.fmt == "tsv" else ",", include_header=self.first)
        self.first = False

    def __exit__(self, *exc: object) -> None:
        if self.parquet_writer is not None:
            self.parquet_writer.close()
        self.handle.close()
