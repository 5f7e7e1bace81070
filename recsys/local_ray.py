"""Connecting this process to Ray: a private Ray on the loopback interface, or an existing cluster.

Serving (``serving.runner``) and distributed training (``recsys.distributed``) both start Ray here, so the
loopback rules live in one place.

Why more than ``ray.init(_node_ip_address="127.0.0.1")``: Ray 2.x turns a loopback node address into the
machine's reachable one (``resolve_ip_for_localhost``, found by probing a route to the outside), so that
alone still binds Ray's servers to e.g. the eth0 address. Ray's own switch for a machine that must stay
local is ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (the default on Windows and macOS): node addresses then
resolve to 127.0.0.1. The variable is read once, when ``ray`` is first imported, so it is set in the
environment (for the raylet and workers this process starts) and, if ``ray`` is already imported, in Ray's
constants module as well. It is never set when joining a cluster.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

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
