"""Read a dataset directory (contract 1) into index tensors; the only place ``recsys/`` touches it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys.atomic import check_directory
from recsys.data.protocol import SPLIT_NAMES
from recsys.errors import InputError, first_line

_PAIR_COLUMNS = ("user_idx", "item_idx")
_REQUIRED = ("train.parquet", "valid.parquet", "test.parquet", "users.parquet", "items.parquet", "meta.json")


@dataclass(frozen=True)
class Dataset:
    """Interactions of one dataset as ``(2, E)`` int64 index tensors ``[user_idx; item_idx]``.

    Args:
        num_users: Number of users; indices are ``0..num_users-1``.
        num_items: Number of items; indices are ``0..num_items-1``.
        train: Training interactions, shape ``(2, E_train)``.
        valid: Validation interactions, shape ``(2, E_valid)``.
        test: Test interactions, shape ``(2, E_test)``.
        path: The directory it was read from.
        meta: The parsed ``meta.json``.
    """

    num_users: int
    num_items: int
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> torch.Tensor:
        """The interactions of split ``name`` (``train``, ``valid`` or ``test``)."""
        if name not in SPLIT_NAMES:
            msg = f"unknown split {name!r}; expected one of {', '.join(SPLIT_NAMES)}"
            raise ValueError(msg)
        tensor: torch.Tensor = getattr(self, name)
        return tensor

    def pairs(self, names: Sequence[str]) -> torch.Tensor:
        """The interactions of the splits ``names`` together, ``(2, E)`` (e.g. a protocol's training data)."""
        return torch.cat([self.split(name) for name in names], dim=1)


def load_dataset(path: Path) -> Dataset:
    """Load a dataset directory written by ``recsys ingest``.

    Raises:
        InputError: the directory or one of its files is missing or unreadable.
    """
    # pyarrow, here: it loads in a fraction of polars' import time (`recsys evaluate` imports no polars), and
    # serving, which reads no dataset, need not load it.
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    check_directory(path, _REQUIRED, kind="dataset", hint="write one with `recsys ingest`")
    try:
        meta = json.loads((path / "meta.json").read_text())
        tensors = {}
        for name in SPLIT_NAMES:
            with pq.ParquetFile(path / f"{name}.parquet") as file:
                table = file.read(columns=list(_PAIR_COLUMNS))
            # table.column raises KeyError for a missing column (read leaves it out). DLPack, not to_numpy:
            # pyarrow's to_numpy imports pandas, which takes longer than the rest of loading together.
            pairs = np.stack([np.from_dlpack(table.column(c).combine_chunks()) for c in _PAIR_COLUMNS])
            tensors[name] = torch.from_numpy(pairs).to(torch.int64)
        num_users = pq.read_metadata(path / "users.parquet").num_rows
        num_items = pq.read_metadata(path / "items.parquet").num_rows
    except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
        msg = f"{path}: cannot read the dataset: {first_line(exc)}"
        raise InputError(msg) from exc
    return Dataset(num_users=num_users, num_items=num_items, path=path, meta=meta, **tensors)
