"""Shared test set-up: one thread per test process (2-core machines oversubscribe otherwise)."""

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]
GOWALLA = REPO.parent / "shared" / "data" / "gowalla"


@pytest.fixture
def gowalla_dir() -> Path:
    """The real gowalla benchmark data, or a clean skip where it is absent."""
    if not (GOWALLA / "train.txt").is_file():
        pytest.skip(f"gowalla data not found at {GOWALLA}")
    return GOWALLA
