"""What entry points decide for the whole process: the device, and settings that make CPU work faster.

Library code follows its input tensors' device; only entry points (the CLI, serving, benchmarks) pick one,
through :func:`resolve_device`. Nothing here imports torch at module level: the CLI calls
:func:`configure_cpu_runtime` before numpy or torch are loaded.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from typing import TYPE_CHECKING

from recsys.errors import InputError

if TYPE_CHECKING:
    import torch

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


def resolve_device(name: str) -> torch.device:
    """The device ``--device`` names: ``auto`` is CUDA when available, else CPU.

    Raises:
        InputError: a CUDA device was asked for on a machine without one.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        msg = f"--device {name} was asked for but CUDA is not available on this machine"
        raise InputError(msg)
    return torch.device(name)
