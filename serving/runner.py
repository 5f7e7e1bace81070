"""Start and stop the service: local Ray bound to 127.0.0.1 by default, or an existing cluster."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from serving.app import ServeArgs, build_app

logger = logging.getLogger(__name__)

APP_NAME = "recsys"


def start(args: ServeArgs, *, host: str = "127.0.0.1", port: int = 8000, address: str | None = None) -> str:
    """Start Ray (unless running), Serve's HTTP proxy on ``host:port``, and the app; return its URL.

    Without ``address`` a local Ray starts with its node address pinned to 127.0.0.1 (otherwise Ray probes
    outside addresses to find its own IP), no dashboard and usage stats off.
    """
    import ray
    from ray import serve

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(
                _node_ip_address="127.0.0.1",
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(args), name=APP_NAME, route_prefix="/")
    url = f"http://{host}:{port}"
    logger.info("serving %s at %s", args.artifact, url)
    return url


def stop() -> None:
    """Shut Serve and Ray down (what Ctrl-C / SIGTERM does)."""
    import ray
    from ray import serve

    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()


@contextmanager
def running(args: ServeArgs, *, host: str = "127.0.0.1", port: int = 8000) -> Iterator[str]:
    """The service for the duration of a ``with`` block (demo, tests, benchmarks)."""
    url = start(args, host=host, port=port)
    try:
        yield url
    finally:
        stop()
