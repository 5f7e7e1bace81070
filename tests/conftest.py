"""Shared test set-up: one thread per test process (2-core machines oversubscribe otherwise)."""

import os
import sys
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


_EXIT_STATUS = pytest.StashKey[int]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End a test process that ran Ray with its exit status once pytest is done, skipping the teardown.

    The serving, refresh, demo and distributed tests start and shut down Ray in this process, and Ray's native
    threads (GCS client, core worker I/O, gRPC timers) outlive ``ray.shutdown``. One CI run passed every
    test and then died with SIGSEGV in the interpreter's teardown. The console script ends Ray commands the
    same way (``recsys.cli.main``). Everything pytest writes is written by now (reports and cache at session
    finish, the rest in earlier unconfigure hooks).
    """
    if "ray" not in sys.modules or _EXIT_STATUS not in config.stash:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(config.stash[_EXIT_STATUS])
