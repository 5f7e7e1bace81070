"""Process-wide settings that make CPU training and evaluation faster; applied once by entry points."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

logger = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's upper bound on 64-bit


def configure_cpu_runtime() -> None:
    """Tune the allocator and BLAS threads for this process. Safe to call more than once.

    * glibc hands every allocation above 128 KiB back to the kernel when freed, so each (N, d) tensor of a
      training step (18 MB on gowalla) is page-faulted in afresh: ~15 % of an XSimGCL step here. Keeping
      blocks up to 32 MiB in the heap, and not trimming it, removes that.
    * ``OPENBLAS_THREAD_TIMEOUT``: idle OpenBLAS threads spin ~0.1 s after each product and take a core
      from torch's own threads (top-k in evaluation); set before numpy loads OpenBLAS, they sleep at once.
    """
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
    mallopt(_M_TRIM_THRESHOLD, 2**30)
    mallopt(_M_TOP_PAD, 64 * 2**20)
