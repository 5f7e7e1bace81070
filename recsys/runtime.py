"""What entry points decide for the whole process: the device, faster CPU settings, and Ray on loopback.

Library code follows its input tensors' device; only entry points (the CLI, serving, benchmarks) pick one,
through :func:`resolve_device`. Nothing here imports torch at module level: the CLI calls
:func:`configure_cpu_runtime` before numpy or torch are loaded.

Ray: serving (``serving.runner``) and distributed training (``recsys.training.distributed``) both start or
join Ray through :func:`init_ray`, so the loopback rules live in one place.

Why more than ``ray.init(_node_ip_address="127.0.0.1")``: Ray 2.x turns a loopback node address into the
machine's reachable one (``resolve_ip_for_localhost``, found by probing a route to the outside), so that
alone still binds Ray's servers to e.g. the eth0 address. Ray's own switch for a machine that must stay
local is ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (the default on Windows and macOS): node addresses then
resolve to 127.0.0.1. The variable is read once, when ``ray`` is first imported, so it is set in the
environment (for the raylet and workers this process starts) and, if ``ray`` is already imported, in Ray's
constants module as well. It is never set when joining a cluster.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

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


LOOPBACK = "127.0.0.1"
_LOCAL_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def keep_ray_local() -> None:
    """Make a Ray started by this process (and its children) use loopback addresses, and send no stats."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Serve gives a new HTTP proxy 3 readiness checks of 5 s; on a 2-core machine that is also training,
    # its imports alone took longer (measured: never ready beside a 2-thread training job, 12 s without).
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30")
    os.environ[_LOCAL_ONLY] = "0"
    if "ray" in sys.modules:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False


def init_ray(address: str | None = None, **options: Any) -> bool:
    """Connect to Ray unless connected: the cluster at ``address``, or a new local Ray on 127.0.0.1.

    A local Ray has no dashboard and usage stats off. Returns whether this call started the connection
    (the caller then shuts it down); ``options`` go to ``ray.init``.
    """
    if not address:
        keep_ray_local()
    import ray

    if ray.is_initialized():
        return False
    options.setdefault("logging_level", logging.WARNING)
    if address:
        ray.init(address=address, **options)
    else:
        ray.init(_node_ip_address=LOOPBACK, include_dashboard=False, **options)
    return True
