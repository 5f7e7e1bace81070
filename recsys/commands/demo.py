"""``recsys demo``: the whole job on the bundled sample log (the README's Quick start)."""

from __future__ import annotations

import argparse
from pathlib import Path

from recsys.commands.options import HelpFormatter


def add_demo(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """``recsys demo``: the Quick start's whole job."""
    p = sub.add_parser(
        "demo",
        parents=[common],
        help="run the whole job on the bundled sample log (the README's Quick start)",
        formatter_class=HelpFormatter,
        description=(
            "Ingest the bundled sample log, train XSimGCL on it, evaluate it on the test split, then serve\n"
            "it with Ray Serve on 127.0.0.1, query it once and stop it, printing what each stage produced\n"
            "(the commands to run each stage by hand are logged)."
        ),
    )
    p.add_argument("--log", type=Path, default=Path("data/sample/interactions.csv"), help="sample log (CSV)")
    p.add_argument("--workdir", type=Path, default=Path("out/demo"), help="where outputs are written")
    p.add_argument("--port", type=int, default=8765, help="HTTP port of the demo service (127.0.0.1)")
    p.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from recsys.demo import DemoConfig, run_demo

    run_demo(DemoConfig(log=args.log, workdir=args.workdir, progress=not args.quiet, port=args.port))
    return 0
