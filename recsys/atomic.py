"""Directories as units: written so readers see all of it or none, checked as a whole when read."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from recsys.errors import InputError


def check_directory(path: Path, required: tuple[str, ...], *, kind: str, hint: str) -> None:
    """Fail with one clear message when ``path`` is not a directory holding every file in ``required``.

    Args:
        path: The directory to check.
        required: File names that must exist in it.
        kind: What the directory should be ("dataset", "artifact"), for the message.
        hint: How to make one, for the message when the directory is missing.
    """
    if not path.is_dir():
        msg = f"{path}: no such {kind} directory ({hint})"
        raise InputError(msg)
    missing = [name for name in required if not (path / name).is_file()]
    if missing:
        msg = f"{path}: not a complete {kind} directory, missing {', '.join(missing)}"
        raise InputError(msg)


def check_writable(dest: Path, *, force: bool) -> None:
    """Fail early, before any work, when ``dest`` exists and may not be replaced."""
    if dest.exists() and not force:
        msg = f"{dest} already exists; pass --force to replace it"
        raise InputError(msg)
    if dest.exists() and not dest.is_dir():
        msg = f"{dest} exists and is not a directory"
        raise InputError(msg)


@contextmanager
def atomic_directory(dest: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``dest`` to fill; rename it to ``dest`` only if the block succeeds.

    On any exception the temporary directory is removed and ``dest`` is left exactly as it was. With
    ``force`` an existing ``dest`` is replaced: it is first renamed aside, so a crash between the two renames
    loses nothing (the old copy stays next to it as ``.<name>.old-*``).
    """
    dest = Path(dest)
    check_writable(dest, force=force)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        dest.rename(old / dest.name)
    tmp.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary sibling renamed over it: readers see all of it or none.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes it private; a report is meant to be read and shared
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
