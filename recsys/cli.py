"""The ``recsys`` command: one parser assembled from the subcommands of :mod:`recsys.commands`, and ``main``.

Each subcommand parses options into config objects and calls one library function. Its option plumbing
(merging a ``--config`` file under the flags, rejecting values and combinations, default output paths, the
printed summary) lives beside its parser in :mod:`recsys.commands`, never recommendation logic. Heavy imports
(torch, Ray) happen inside the handler that needs them, so ``recsys --help`` and ``recsys ingest`` start fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from recsys._version import __version__
from recsys.commands.data import add_generate, add_ingest
from recsys.commands.demo import add_demo
from recsys.commands.evaluation import add_evaluate, add_report
from recsys.commands.options import HelpFormatter
from recsys.commands.serve import add_recommend, add_serve
from recsys.commands.training import add_refresh, add_train
from recsys.errors import InputError
from recsys.runtime import configure_cpu_runtime

_Handler = Callable[[argparse.Namespace], int]

_EXIT_AT_ONCE = frozenset({"evaluate", "report"})
"""Commands whose process ends without the interpreter's teardown (see :func:`main`): they start no Ray, no
child process and no thread of their own, and have written (atomically) and closed their files when their
handler returns."""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for tests and documentation)."""
    parser = argparse.ArgumentParser(
        prog="recsys",
        formatter_class=HelpFormatter,
        description="Graph contrastive recommendation: raw interaction log -> dataset -> model -> HTTP.",
    )
    parser.add_argument("--version", action="version", version=f"recsys {__version__}")
    sub = parser.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="only print results and errors")
    commands = (
        add_ingest,
        add_generate,
        add_train,
        add_evaluate,
        add_report,
        add_serve,
        add_recommend,
        add_refresh,
    )
    for add in (*commands, add_demo):
        add(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``recsys`` console script.

    Run as the process's own command (``argv`` unset), the commands of :data:`_EXIT_AT_ONCE` end the process
    as soon as their handler returns (:func:`_exit_at_once`): the teardown of an interpreter that loaded torch
    is a noticeable share of a short command, and frees nothing the exit does not. So does any command that
    ran Ray in this process (serve, demo, refresh, train ``--workers``): its handler has shut Ray down, but
    Ray's native threads (GCS client, core worker I/O, gRPC timers) outlive ``ray.shutdown`` and race the
    interpreter's teardown, which can end a finished command with a segmentation fault. Called with ``argv``
    (tests, other code), ``main`` always returns.
    """
    parser = build_parser()
    configure_cpu_runtime()  # before numpy/torch load: parsing evaluate's --baselines imports them
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    handler: _Handler = args.handler
    try:
        code = handler(args)
    except InputError as exc:
        print(f"recsys {args.command}: error: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print(f"recsys {args.command}: interrupted", file=sys.stderr)
        code = 130
    if argv is None and (args.command in _EXIT_AT_ONCE or "ray" in sys.modules):
        _exit_at_once(code)
    return code


def _exit_at_once(code: int) -> None:
    """Flush the log and the standard streams and end the process with ``code``, skipping the teardown.

    Returns (to the interpreter's usual exit) only when a stream cannot be flushed, e.g. a closed pipe.
    """
    logging.shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        return
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
