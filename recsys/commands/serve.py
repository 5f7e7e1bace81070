"""``recsys serve`` and ``recsys recommend``: the commands that answer from an artifact, over HTTP or once."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from recsys.commands.options import HelpFormatter, csv_names


def add_serve(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """``recsys serve``: an artifact over HTTP."""
    p = sub.add_parser(
        "serve",
        parents=[common],
        help="serve an artifact over HTTP with Ray Serve (Ctrl-C to stop)",
        formatter_class=HelpFormatter,
        description=(
            "Start a Ray Serve application over a model artifact. Without --address a local Ray starts,\n"
            "bound to 127.0.0.1; with --address it joins an existing cluster (more --replicas,\n"
            "same code).\n\n"
            "endpoints: GET /recommend/{user_id}?k=20, POST /recommend, POST /recommend/new-user,\n"
            "GET /similar/{item_id}?k=20, GET /health, GET /model, POST /admin/reload (bearer token),\n"
            "and the OpenAPI docs at /docs."
        ),
    )
    p.add_argument("--artifact", type=Path, required=True, help="artifact directory (from recsys train)")
    p.add_argument("--host", default="127.0.0.1", help="address the HTTP proxy binds to")
    p.add_argument("--port", type=int, default=8000, help="HTTP port")
    p.add_argument("--replicas", type=int, default=1, help="replicas of the deployment")
    p.add_argument("--max-ongoing-requests", type=int, default=128, help="concurrent requests per replica")
    p.add_argument("--max-k", type=int, default=1000, help="largest k a request may ask for")
    p.add_argument("--max-batch-users", type=int, default=1000, help="most users in one POST /recommend")
    p.add_argument("--no-batching", action="store_true", help="do not batch concurrent single-user requests")
    p.add_argument(
        "--admin-token",
        help="bearer token enabling POST /admin/reload (default: env RECSYS_ADMIN_TOKEN; unset: disabled)",
    )
    p.add_argument(
        "--retrieval",
        choices=["exact", "ivf", "hnsw"],
        default="exact",
        help="top-k search: exact scoring of every item, or an approximate faiss index (ivf, hnsw) for "
        "catalogues of millions of items (pip install 'recsys[ann]'; see README, Scaling)",
    )
    p.add_argument("--nprobe", type=int, default=32, help="ivf: index cells scanned per query (recall/speed)")
    p.add_argument("--address", help="join this Ray cluster instead of starting a local Ray")
    p.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from recsys.artifact import REQUIRED_FILES
    from recsys.atomic import check_directory
    from serving.app import ServeArgs
    from serving.runner import start, stop

    # Fail here, before Ray starts, rather than in a replica's constructor.
    check_directory(args.artifact, REQUIRED_FILES, kind="artifact", hint="train one with `recsys train`")
    serve_args = ServeArgs(
        artifact=str(args.artifact.resolve()),
        max_k=args.max_k,
        max_batch_users=args.max_batch_users,
        admin_token=args.admin_token or os.environ.get("RECSYS_ADMIN_TOKEN"),
        batching=not args.no_batching,
        num_replicas=args.replicas,
        max_ongoing_requests=args.max_ongoing_requests,
        retrieval=args.retrieval,
        retrieval_nprobe=args.nprobe,
    )
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    url = start(serve_args, host=args.host, port=args.port, address=args.address)
    print(f"serving {args.artifact} at {url} (try {url}/docs); Ctrl-C to stop", flush=True)
    try:
        done.wait()
    finally:
        print("stopping ...", flush=True)
        stop()
    return 0


def add_recommend(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """``recsys recommend``: top-k lists from an artifact, without a server."""
    p = sub.add_parser(
        "recommend",
        parents=[common],
        help="one-off recommendations from an artifact, without a server",
        formatter_class=HelpFormatter,
        description="Print top-k items for users, for a new user (fold-in) or similar items, as JSON.",
    )
    p.add_argument("--artifact", type=Path, required=True, help="artifact directory (from recsys train)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--user", action="append", help="raw user id (repeat for several users)")
    what.add_argument("--new-user-items", type=csv_names, help="comma-separated raw item ids of a new user")
    what.add_argument("--similar", help="raw item id to find similar items for")
    p.add_argument("--k", type=int, default=10, help="list length")
    p.add_argument("--include-seen", action="store_true", help="do not drop the user's training items")
    p.set_defaults(handler=_run_recommend)


def _run_recommend(args: argparse.Namespace) -> int:
    import json

    from recsys.inference.recommend import Recommender

    rec = Recommender.from_artifact(args.artifact)
    exclude_seen = not args.include_seen
    if args.user:
        results = rec.recommend(args.user, args.k, exclude_seen=exclude_seen)
        out: object = [
            {"user_id": u, "items": r.items, "scores": r.scores}
            for u, r in zip(args.user, results, strict=True)
        ]
    elif args.new_user_items:
        result, unknown = rec.recommend_new_user(list(args.new_user_items), args.k, exclude_seen=exclude_seen)
        out = {"items": result.items, "scores": result.scores, "unknown_item_ids": unknown}
    else:
        result = rec.similar_items(args.similar, args.k)
        out = {"item_id": args.similar, "items": result.items, "scores": result.scores}
    print(json.dumps({"model_version": rec.model_version, "results": out}, indent=2, default=str))
    return 0
