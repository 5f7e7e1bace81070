"""The benchmark graphs, each ingested once into a work directory: one home for the builders.

Shapes, smallest first: ``sample`` (the bundled demo log, ~1k users), ``generated``
(a ``recsys generate`` log with topic structure), ``gowalla-u20`` (20 % of gowalla's users with their
items, 5-core) and ``gowalla`` itself (the preset split of ``benchmarks/train.py``). Each builder takes the
work directory and returns the dataset directory, building it only if it is not there yet.

The accuracy benchmark (``benchmarks/accuracy.py``) adds shapes a user's log may have, each split in time
where the data has time:

* ``gowalla-core``: gowalla's dense core, the iterative 30-core of train ∪ test (1,011 users, 899 items,
  6.8 % dense; the 40- and 50-cores are empty), each interaction kept in its published train or test;
* ``generated-sparse``: 10,000 users x 8,000 items at 0.15 % density, no drift;
* ``generated-drift``: the same world with item popularity drifting all year (``--drift 1``);
* ``generated-dense``: 2,000 users x 1,500 items at 8 % density, no drift;
* ``generated-dense-drift``: the dense world with ``--drift 1``.

The generated ones are split by global time (``--split cutoff``: the last 20 % of events are test, the 10 %
before valid), as a model trained today is used on tomorrow's events.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial
from pathlib import Path

import polars as pl
from train import GOWALLA, gowalla

from pipelines import IngestConfig, ingest
from pipelines.cleaning import k_core
from pipelines.columns import ITEM_ID, ITEM_IDX, USER_ID, USER_IDX
from pipelines.readers import LogSpec, read_log
from pipelines.synthetic import SyntheticConfig, generate
from recsys.commands.demo import SAMPLE_LOG


def sample(workdir: Path) -> Path:
    """The bundled sample, ingested as the demo does."""
    out = workdir / "sample"
    if not (out / "meta.json").exists():
        spec = LogSpec("csv", time_col="timestamp", rating_col="rating")
        ingest(
            IngestConfig(
                out=out,
                spec=spec,
                input=SAMPLE_LOG,
                split="temporal",
                force=True,
                min_user_interactions=3,
                min_item_interactions=3,
            )
        )
    return out


def gowalla_users(workdir: Path, share: float = 0.2, seed: int = 0) -> Path:
    """``share`` of gowalla's users with all their interactions (train and test), 5-core, random split."""
    out = workdir / "gowalla-u20"
    if not (out / "meta.json").exists():
        lines = [
            line.split()
            for name in ("train.txt", "test.txt")
            for line in (GOWALLA / name).read_text().splitlines()
        ]
        users = sorted({fields[0] for fields in lines if fields})
        chosen = set(random.Random(seed).sample(users, round(share * len(users))))
        rows = ["user_id,item_id"]
        rows += [f"{user},{item}" for user, *items in filter(None, lines) if user in chosen for item in items]
        log = workdir / "gowalla-u20.csv"
        log.write_text("\n".join(rows) + "\n")
        ingest(
            IngestConfig(
                out=out,
                spec=LogSpec("csv"),
                input=log,
                split="random",
                force=True,
                min_user_interactions=5,
                min_item_interactions=5,
            )
        )
    return out


def generated(
    workdir: Path,
    users: int = 6000,
    items: int = 4000,
    events: int = 200_000,
    *,
    name: str = "generated",
    ratings: bool = True,
) -> Path:
    """A ``recsys generate`` log with topic structure and timestamps, random split; 6,000 x 4,000 by default.

    ``ratings=False`` ingests it without the rating column, as ``benchmarks/refresh.py``'s graphs are.
    """
    out = workdir / name
    if not (out / "meta.json").exists():
        log = workdir / f"{name}.csv"
        config = SyntheticConfig(num_users=users, num_items=items, num_interactions=events, seed=1)
        generate(config, log, "csv", progress=False)
        spec = LogSpec("csv", time_col="timestamp", rating_col="rating" if ratings else None)
        ingest(IngestConfig(out=out, spec=spec, input=log, split="random", force=True))
    return out


def gowalla_core(workdir: Path, k: int = 30) -> Path:
    """Gowalla's dense core: the iterative ``k``-core of train ∪ test, its published split kept.

    Gowalla has no timestamps, so the split stays the published one: the core's interactions are written
    back to a train and a test file as they were assigned, and ingested as a preset split (valid carved
    out of train). ``k = 30`` is the densest core that is not empty (1,011 users x 899 items, 6.8 %; the
    40-core is empty).
    """
    out = workdir / "gowalla-core"
    if not (out / "meta.json").exists():
        parts = {name: read_log(GOWALLA / f"{name}.txt", LogSpec("lightgcn")) for name in ("train", "test")}
        both = pl.concat([df.with_columns(pl.lit(name).alias("part")) for name, df in parts.items()])
        # Gowalla's raw ids are already contiguous integers, the codes k_core counts with.
        coded = both.rename({USER_ID: USER_IDX, ITEM_ID: ITEM_IDX}).cast(
            {USER_IDX: pl.Int64, ITEM_IDX: pl.Int64}
        )
        core, _ = k_core(coded, k, k)
        src = workdir / "gowalla-core-src"
        src.mkdir(parents=True, exist_ok=True)
        files = {}
        for name in ("train", "test"):
            lines = (
                core.filter(pl.col("part") == name)
                .group_by(USER_IDX)
                .agg(pl.col(ITEM_IDX).sort().cast(pl.String).str.join(" "))
                .sort(USER_IDX)
                .select(pl.format("{} {}", USER_IDX, ITEM_IDX))
                .to_series()
            )
            files[name] = src / f"{name}.txt"
            files[name].write_text("\n".join(lines) + "\n")
        ingest(
            IngestConfig(
                out=out,
                spec=LogSpec("lightgcn"),
                train=files["train"],
                test=files["test"],
                split="preset",
                force=True,
            )
        )
    return out


def generated_shape(
    workdir: Path, *, name: str, users: int, items: int, density: float, drift: float = 0.0
) -> Path:
    """A ``recsys generate`` log of a given density and drift, split by global time (``cutoff``)."""
    out = workdir / name
    if not (out / "meta.json").exists():
        log = workdir / f"{name}.csv"
        config = SyntheticConfig(num_users=users, num_items=items, density=density, drift=drift, seed=1)
        generate(config, log, "csv", progress=False)
        spec = LogSpec("csv", time_col="timestamp", rating_col="rating")
        ingest(IngestConfig(out=out, spec=spec, input=log, split="cutoff", force=True))
    return out


def gowalla_full(workdir: Path) -> Path:
    """Gowalla's preset split, ingested once (by ``benchmarks/train.py``'s ``gowalla``)."""
    gowalla(workdir)
    return workdir / "gowalla"


# The generated shapes: (users, items, density); each also with drift.
_SPARSE = (10_000, 8_000, 0.0015)
_DENSE = (2_000, 1_500, 0.08)


def _shape(name: str, size: tuple[int, int, float], drift: float = 0.0) -> Callable[[Path], Path]:
    users, items, density = size
    return partial(generated_shape, name=name, users=users, items=items, density=density, drift=drift)


GRAPHS: dict[str, Callable[[Path], Path]] = {
    "sample": sample,
    "gowalla-u20": gowalla_users,
    "generated": generated,
    "gowalla": gowalla_full,
    "gowalla-core": gowalla_core,
    "generated-sparse": _shape("generated-sparse", _SPARSE),
    "generated-drift": _shape("generated-drift", _SPARSE, drift=1.0),
    "generated-dense": _shape("generated-dense", _DENSE),
    "generated-dense-drift": _shape("generated-dense-drift", _DENSE, drift=1.0),
}
NEEDS_GOWALLA = frozenset({"gowalla-u20", "gowalla", "gowalla-core"})


def missing_source(name: str) -> str | None:
    """Why graph ``name`` cannot be built here (its source files are absent), or ``None``."""
    if name not in GRAPHS:
        return f"unknown graph {name!r}; expected one of {', '.join(GRAPHS)}"
    if name in NEEDS_GOWALLA and not (GOWALLA / "train.txt").is_file():
        return f"{name} needs gowalla, not found at {GOWALLA}"
    return None
