r"""Synthetic interaction logs with the shape of real ones, at any size.

The generative story is a low-rank (topic) preference model with power-law popularity:

* every item belongs to one of ``num_topics`` latent topics and has a Zipf popularity weight;
* every user prefers a primary and a secondary topic and has a log-normal activity level;
* every user is active for half a year, from a start drawn in the first half of the year, and an event's
  time is uniform over that half year;
* an event picks the primary topic (65 %), the secondary one (25 %) or "anything popular" (10 %), then an
  item by its popularity at the event's time within that choice.

So most-popular is a fair baseline, but a model that learns each user's topics beats it clearly. Ids are
strings (``u0001234``, ``i0000042``) in an order unrelated to activity; timestamps are epoch seconds;
ratings 1-5 are higher on the user's primary topic; and a few dirty rows (null ids, repeated events) are
mixed in for the cleaning steps to find. Generation is vectorised in chunks of users, so memory stays
bounded however many rows are asked for.

Two options change the shape of the log without changing its story:

* **density** (``SyntheticConfig.density``): the share of distinct (user, item) pairs in the clean log,

  .. math:: \rho = \frac{|\{(u, i)\}|}{|U| \cdot |I|},

  reached by calibrating the number of events. An event is drawn with replacement, so at high density a
  user repeats items (the repeats collapse in ingest's dedupe, as real re-consumption does); the
  calibration counts distinct pairs on a simulation of the same world (all users of a small world, an
  i.i.d. sample of a large one) and solves for the event count by a secant search in log space.
* **drift** (``SyntheticConfig.drift``, :math:`\delta \in [0, 1]`): item popularity changes over the year.
  Every item has an early and a late Zipf weight (two independent rankings), and at the normalised time
  :math:`t \in [0, 1)` of an event its weight is the geometric interpolation

  .. math:: w_i(t) = (w_i^{\text{early}})^{1 - \delta t} \, (w_i^{\text{late}})^{\delta t},

  i.e. each item's log-popularity moves linearly with time, up or down. With :math:`\delta = 1` the ranking
  at the end of the year is the late one, independent of the early one, so the last events of a temporal
  split favour items that were unremarkable early on. The weights are held constant over each of
  ``_DRIFT_WINDOWS`` equal windows of the year (at the window's midpoint), so every event is still drawn by
  one ``searchsorted`` into a table of ``windows × items`` cumulative weights.

Without density and drift (the defaults) the log is byte-for-byte what it was before these options
existed, for the same seed.
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
_DRIFT_WINDOWS = 16  # popularity is constant within each 1/16 of the year (~23 days)
# Density calibration: the simulated users hold about this many distinct pairs (all users of a small world);
# the secant search stops within _CALIBRATION_TOLERANCE of the target, after at most _CALIBRATION_STEPS
# simulations, and gives up past _MAX_REPEATS events per distinct pair (the target is out of reach).
_CALIBRATION_PAIRS = 1_000_000
_CALIBRATION_TOLERANCE = 0.002
_CALIBRATION_STEPS = 12
_MAX_REPEATS = 30.0


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and shape of a synthetic log.

    Args:
        num_users: Distinct users before dirty rows.
        num_items: Distinct items.
        num_interactions: Approximate number of clean events (the per-user counts are rounded); ignored when
            ``density`` is given.
        num_topics: Latent topics; 0 picks ``max(4, round(num_items ** 0.5 / 2))``.
        popularity_exponent: Zipf exponent of item popularity (1.0 is a typical long tail).
        dirty_fraction: Share of extra rows that are dirty: half null ids, half repeated events.
        seed: Seed of every random draw.
        density: Target share of distinct (user, item) pairs among all ``num_users * num_items`` in the
            clean log, in (0, 1); the number of events is calibrated to reach it (module docstring).
            ``None``: ``num_interactions`` events.
        drift: How far item popularity moves over the year, in [0, 1]: 0 keeps one Zipf ranking all year,
            1 ends the year on an independent one (module docstring).
    """

    num_users: int = 1000
    num_items: int = 800
    num_interactions: int = 30_000
    num_topics: int = 0
    popularity_exponent: float = 1.0
    dirty_fraction: float = 0.002
    seed: int = 0
    density: float | None = None
    drift: float = 0.0

    def __post_init__(self) -> None:
        if min(self.num_users, self.num_items, self.num_interactions) < 1:
            msg = "num_users, num_items and num_interactions must be >= 1"
            raise InputError(msg)
        if not 0.0 <= self.dirty_fraction < 0.5:
            msg = f"dirty_fraction must be in [0, 0.5), got {self.dirty_fraction}"
            raise InputError(msg)
        if self.density is not None and not 0.0 < self.density < 1.0:
            msg = f"density must be in (0, 1) (a share of users x items), got {self.density}"
            raise InputError(msg)
        if not 0.0 <= self.drift <= 1.0:
            msg = f"drift must be in [0, 1], got {self.drift}"
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
    """The latent structure shared by all chunks: topics, popularity over time, user tastes and activity."""

    def __init__(self, cfg: SyntheticConfig, rng: np.random.Generator) -> None:
        self.cfg = cfg
        topics = cfg.topics
        item_topic = rng.integers(topics, size=cfg.num_items)
        early = (rng.permutation(cfg.num_items) + 1.0) ** -cfg.popularity_exponent
        # Items sorted by topic; each topic's cumulative popularity spans [t, t + 1), so one searchsorted
        # of (topic + uniform) draws an item of that topic by popularity, for all events at once.
        self.order = np.lexsort((np.arange(cfg.num_items), item_topic))
        self.item_topic = item_topic
        self.primary = rng.integers(topics, size=cfg.num_users)
        self.secondary = (self.primary + rng.integers(1, max(topics, 2), size=cfg.num_users)) % topics
        activity = rng.lognormal(0.0, 1.0, size=cfg.num_users)
        self.share = activity / activity.sum()
        self.counts = _event_counts(self.share, cfg.num_interactions)
        self.user_names = rng.permutation(cfg.num_users)
        self.item_names = rng.permutation(cfg.num_items)
        self.start = rng.integers(_START, _START + _SPAN // 2, size=cfg.num_users)
        # From a stream of its own, and only with drift: a log without drift is the one this seed always
        # gave, and one with drift has the same topics, tastes, users and times (only popularity moves).
        late_rng = np.random.default_rng([cfg.seed, 2])
        late = (late_rng.permutation(cfg.num_items) + 1.0) ** -cfg.popularity_exponent if cfg.drift else early
        self.windows = _DRIFT_WINDOWS if cfg.drift else 1
        self._tables(early, late)
        if cfg.density is not None:
            self.counts = self._calibrated_counts(np.random.default_rng([cfg.seed, 1]))

    def _tables(self, early: np.ndarray, late: np.ndarray) -> None:
        """Cumulative weights per window: by topic (``topic_cdf``) and over all items (``global_cdf``).

        Window ``k`` of ``W`` holds the weights at its midpoint ``t_k = (k + 1/2) / W``,
        ``w(t_k) = early^(1 - drift t_k) * late^(drift t_k)`` (``(W, I)``), and is offset by ``k * topics``
        (topic table) or ``k`` (global table), so (window, topic, uniform) -> item is one searchsorted.
        Both tables are ``(W * I,)``.
        """
        cfg = self.cfg
        topics = cfg.topics
        share = cfg.drift * (np.arange(self.windows) + 0.5)[:, None] / self.windows
        weights = early ** (1.0 - share) * late**share  # exactly ``early`` without drift (x^1 y^0)
        sorted_topic = self.item_topic[self.order]
        per_topic = np.bincount(sorted_topic, minlength=topics)
        topic_cdf, global_cdf = [], []
        for k, weight in enumerate(weights):  # W rows of I: a short loop of vectorised passes
            sorted_weight = weight[self.order]
            totals = np.bincount(sorted_topic, weights=sorted_weight, minlength=topics)
            cum = np.cumsum(sorted_weight) - np.repeat(np.cumsum(totals) - totals, per_topic)
            topic_cdf.append(k * topics + sorted_topic + cum / np.maximum(totals[sorted_topic], 1e-300))
            global_cdf.append(k + np.cumsum(weight) / weight.sum())
        self.topic_cdf = np.concatenate(topic_cdf)
        self.global_cdf = np.concatenate(global_cdf)

    def _calibrated_counts(self, rng: np.random.Generator) -> np.ndarray:
        """Events per user whose distinct (user, item) pairs make ``cfg.density`` of users x items.

        ``D(n)``, the distinct pairs of a log of ``n`` events, grows with ``n`` and bends as users repeat
        items; it is measured by simulating the first users (i.i.d., so a fair sample; all of a small world)
        with the same random numbers at every step, so ``D`` is a smooth function of ``n``, and solved for
        ``D(n) = density * U * I`` by the secant method on ``log D`` against ``log n``.

        Raises:
            InputError: the density needs more than ``_MAX_REPEATS`` events per distinct pair, i.e. the
                users' tastes saturate before it (too few items per topic for it).
        """
        cfg = self.cfg
        assert cfg.density is not None, "called only with a density"
        target = cfg.density * cfg.num_users * cfg.num_items
        per_user = target / cfg.num_users
        sample = np.arange(min(cfg.num_users, max(500, round(_CALIBRATION_PAIRS / per_user))))
        scale = cfg.num_users / len(sample)
        state = rng.bit_generator.state

        def distinct(events: float) -> float:
            rng.bit_generator.state = state  # common random numbers: D(n) changes only through n
            users = np.repeat(sample, _event_counts(self.share[sample], events))
            items, _, _ = self._sample(users, rng)
            # Sort and count runs: numpy's hashed unique took 3x longer on these keys.
            keys = np.sort(users * cfg.num_items + items)
            return float(1 + np.count_nonzero(np.diff(keys))) * scale

        lo_n, lo_d = target, distinct(target)
        n, d = target * target / lo_d, 0.0
        for _ in range(_CALIBRATION_STEPS):
            d = distinct(n)
            if abs(d / target - 1.0) < _CALIBRATION_TOLERANCE or n > _MAX_REPEATS * target:
                break
            slope = np.log(d / lo_d) / np.log(n / lo_n) if n != lo_n and d != lo_d else 1.0
            lo_n, lo_d = n, d
            n = n * (target / d) ** (1.0 / float(np.clip(slope, 0.05, 1.0)))
        if abs(d / target - 1.0) > 0.02:
            reached = d / (cfg.num_users * cfg.num_items)
            msg = (
                f"density {cfg.density} is out of reach for this world: {n:,.0f} events give {reached:.4f} "
                "(users repeat their topics' items); lower --density, or use fewer --topics"
            )
            raise InputError(msg)
        logger.info("density %s: %s events for %s distinct pairs", cfg.density, f"{n:,.0f}", f"{d:,.0f}")
        return _event_counts(self.share, n)

    def user_chunks(self, rows: int) -> list[tuple[int, int]]:
        """Contiguous user ranges holding about ``rows`` events each."""
        ends = np.searchsorted(np.cumsum(self.counts), np.arange(rows, self.counts.sum() + rows, rows))
        edges = np.unique(np.concatenate([[0], np.minimum(ends + 1, self.cfg.num_users)]))
        return list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))

    def _sample(self, users: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        """One event per entry of ``users``: its item, timestamp and rating, ``(n,)`` each.

        The time is drawn first and picks the popularity window the item is drawn from.
        """
        n, items_n = len(users), self.cfg.num_items
        choice, by_topic_u, popular_u = rng.random(n), rng.random(n), rng.random(n)
        noise = rng.normal(0.0, 1.0, n)
        timestamp = self.start[users] + rng.integers(0, _SPAN // 2, size=n)
        window = (timestamp - _START) * self.windows // _SPAN  # in [0, W): timestamps stay within the year
        base = window * items_n  # the window's first row in the tables
        topic = np.where(choice < 0.65, self.primary[users], self.secondary[users])
        position = np.searchsorted(self.topic_cdf, window * self.cfg.topics + topic + by_topic_u) - base
        by_topic = self.order[np.minimum(position, items_n - 1)]
        popular = np.minimum(np.searchsorted(self.global_cdf, window + popular_u) - base, items_n - 1)
        items = np.where(choice < 0.9, by_topic, popular)
        affinity = 1.2 * (self.item_topic[items] == self.primary[users]) + 0.5 * (
            self.item_topic[items] == self.secondary[users]
        )
        rating = np.clip(np.round(3.0 + affinity + noise), 1, 5).astype(np.int64)
        return items, timestamp, rating

    def events(self, lo: int, hi: int, rng: np.random.Generator) -> pl.DataFrame:
        """All events of users ``lo..hi-1``, with their share of dirty rows, shuffled."""
        users = np.repeat(np.arange(lo, hi), self.counts[lo:hi])
        items, timestamp, rating = self._sample(users, rng)
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


def _event_counts(share: np.ndarray, total: float) -> np.ndarray:
    """Events per user: ``total`` split by activity ``share``, rounded, at least one each (int64)."""
    return np.maximum(1, np.round(share * total)).astype(np.int64)


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
