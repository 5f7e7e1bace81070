"""The benchmark graphs, each ingested once into a work directory: one home for the builders.

Shapes, smallest first: ``sample`` (the bundled demo log, ~1k users), ``generated``
(a ``recsys generate`` log with topic structure), ``gowalla-u20`` (20 % of gowalla's users with their
items, 5-core) and ``gowalla`` itself (the preset split of ``benchmarks/train.py``). Each builder takes the
work directory and returns the dataset directory, building it only if it is not there yet.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from train import GOWALLA, gowalla

from pipelines import IngestConfig, ingest
from pipelines.readers import LogSpec
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


def gowalla_full(workdir: Path) -> Path:
    """Gowalla's preset split, ingested once (by ``benchmarks/train.py``'s ``gowalla``)."""
    gowalla(workdir)
    return workdir / "gowalla"


GRAPHS: dict[str, Callable[[Path], Path]] = {
    "sample": sample,
    "gowalla-u20": gowalla_users,
    "generated": generated,
    "gowalla": gowalla_full,
}
NEEDS_GOWALLA = frozenset({"gowalla-u20", "gowalla"})


def missing_source(name: str) -> str | None:
    """Why graph ``name`` cannot be built here (its source files are absent), or ``None``."""
    if name not in GRAPHS:
        return f"unknown graph {name!r}; expected one of {', '.join(GRAPHS)}"
    if name in NEEDS_GOWALLA and not (GOWALLA / "train.txt").is_file():
        return f"{name} needs gowalla, not found at {GOWALLA}"
    return None
