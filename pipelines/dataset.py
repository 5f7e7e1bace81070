"""Write the dataset directory (contract 1 in ``docs/architecture.md``) atomically."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import polars as pl

from pipelines.splits import Splits
from recsys._version import __version__
from recsys.atomic import atomic_directory

DATASET_FORMAT_VERSION = 1


def write_dataset(
    out: Path,
    parts: Splits,
    users: pl.DataFrame,
    items: pl.DataFrame,
    meta: dict[str, Any],
    *,
    force: bool = False,
) -> None:
    """Write the splits, the id maps and ``meta.json`` into a temporary sibling, then rename it to ``out``.

    A crash or an error part-way leaves no ``out`` behind (or the previous one, untouched).
    """
    full_meta = {
        "format_version": DATASET_FORMAT_VERSION,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "recsys_version": __version__,
        **meta,
    }
    with atomic_directory(out, force=force) as tmp:
        for name in ("train", "valid", "test"):
            getattr(parts, name).write_parquet(tmp / f"{name}.parquet")
        users.write_parquet(tmp / "users.parquet")
        items.write_parquet(tmp / "items.parquet")
        (tmp / "meta.json").write_text(json.dumps(full_meta, indent=2) + "\n")
