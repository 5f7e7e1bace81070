"""Start and stop the service: local Ray bound to 127.0.0.1 by default, or an existing cluster."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from recsys.runtime import init_ray
from serving.app import ServeArgs, build_app

logger = logging.getLogger(__name__)

APP_NAME = "recsys"


def start(args: ServeArgs, *, host: str = "127.0.0.1", port: int = 8000, address: str | None = None) -> str:
    """Start Ray (unless running), Serve's HTTP proxy on ``host:port``, and the app; return its URL.

    Without ``address`` a local Ray starts on 127.0.0.1 with no dashboard and usage stats off
    (:func:`recsys.runtime.init_ray`); its workers' logs stay in Ray's log files.
    """
    from ray import serve

    init_ray(address, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(args), name=APP_NAME, route_prefix="/")
    url = f"http://{host}:{port}"
    logger.info("serving %s at %s", args.artifact, url)
    return url


def stop() -> None:
    """Delete the app and disconnect; a local Ray started by :func:`start` goes down with all it holds.

    Not ``serve.shutdown()``: its controller call never returns by design (the controller kills itself
    once everything is down), and as the controller retries tasks forever, Ray then reports "Task
    ServeController.graceful_shutdown failed ... will be retried". ``serve.delete`` drains the app's
    requests; the local Ray's shutdown then ends the controller and proxy with everything else. On a
    cluster joined with ``address``, Serve keeps running for the other applications there.
    """
    import ray
    from ray import serve
    from ray.serve.exceptions import RayServeException

    if ray.is_initialized():
        with contextlib.suppress(RayServeException):  # start failed before Serve was up: nothing to delete
            serve.delete(APP_NAME)
        ray.shutdown()


@contextmanager
def running(args: ServeArgs, *, host: str = "127.0.0.1", port: int = 8000) -> Iterator[str]:
    """The service for the duration of a ``with`` block (demo, tests, benchmarks)."""
    try:
        yield start(args, host=host, port=port)
    finally:  # also when start fails half-way: never leave a Ray behind
        stop()
