"""The ``recsys`` command: parse options into config objects and call one library function per subcommand.

No logic lives here. Heavy imports (torch, Ray) happen inside the subcommand that needs them, so
``recsys --help`` and ``recsys ingest`` start fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from recsys import __version__
from recsys.errors import InputError
from recsys.runtime import configure_cpu_runtime

if TYPE_CHECKING:
    from recsys.evaluate import EvaluationReport

_Handler = Callable[[argparse.Namespace], int]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep the hand-made line breaks of the descriptions."""


def _csv_names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _add_ingest(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "ingest",
        parents=[common],
        help="raw interaction log -> clean, split, id-mapped dataset directory",
        formatter_class=_HelpFormatter,
        description=(
            "Read a raw interaction log, clean it (drop null ids, rating threshold, dedupe keeping the\n"
            "earliest event, k-core), map raw ids to contiguous indices, split train/valid/test and write a\n"
            "dataset directory: train/valid/test.parquet, users/items.parquet and meta.json.\n\n"
            "examples:\n"
            "  recsys ingest --format csv --input data/sample/interactions.csv --time-col timestamp \\\n"
            "      --split temporal --out out/sample\n"
            "  recsys ingest --format lightgcn --train gowalla/train.txt --test gowalla/test.txt \\\n"
            "      --split preset --out out/gowalla\n"
            "  recsys ingest --format csv --separator :: --no-header --names user,item,rating,time \\\n"
            "      --user-col user --item-col item --rating-col rating --time-col time \\\n"
            "      --min-rating 4 --input ml-1m/ratings.dat --out out/ml1m"
        ),
    )
    src = p.add_argument_group("input")
    src.add_argument(
        "--format",
        required=True,
        choices=["csv", "tsv", "parquet", "jsonl", "lightgcn"],
        help="format of the input file(s); lightgcn is 'user item item ...' per line",
    )
    src.add_argument("--input", type=Path, help="the log file (random, temporal and cutoff splits)")
    src.add_argument("--train", type=Path, help="training file of an existing split (--split preset)")
    src.add_argument("--test", type=Path, help="test file of an existing split (--split preset)")
    src.add_argument("--user-col", default="user_id", help="column with the raw user id")
    src.add_argument("--item-col", default="item_id", help="column with the raw item id")
    src.add_argument("--time-col", help="column with the event time (epoch numbers or date-times)")
    src.add_argument("--rating-col", help="column with a numeric rating")
    src.add_argument(
        "--separator",
        help="csv/tsv field separator, several characters allowed (default ',' for csv, tab for tsv)",
    )
    src.add_argument("--no-header", action="store_true", help="the csv/tsv has no header line")
    src.add_argument(
        "--names",
        type=_csv_names,
        help="comma-separated column names of a header-less csv/tsv (default column_1, column_2, ...)",
    )
    clean = p.add_argument_group("cleaning (threshold and k-core are off unless given)")
    clean.add_argument("--min-rating", type=float, help="keep rows with rating >= this value")
    clean.add_argument(
        "--min-user-interactions", type=int, default=1, help="k-core: minimum interactions per user"
    )
    clean.add_argument(
        "--min-item-interactions", type=int, default=1, help="k-core: minimum interactions per item"
    )
    split = p.add_argument_group("split")
    split.add_argument(
        "--split",
        default="random",
        choices=["random", "temporal", "cutoff", "preset"],
        help="random: per-user random shares; temporal: per-user last events; cutoff: global "
        "time cutoffs; preset: keep --train/--test, carve valid out of train",
    )
    split.add_argument(
        "--valid-ratio",
        type=float,
        default=0.1,
        help="share per user for valid (random, preset, cutoff quantile)",
    )
    split.add_argument(
        "--test-ratio", type=float, default=0.2, help="share per user for test (random, cutoff quantile)"
    )
    split.add_argument("--valid-n", type=int, default=1, help="events per user for valid (temporal)")
    split.add_argument("--test-n", type=int, default=1, help="events per user for test (temporal)")
    split.add_argument("--valid-cutoff", help="time from which events are valid (cutoff); default: quantile")
    split.add_argument("--test-cutoff", help="time from which events are test (cutoff); default: quantile")
    split.add_argument("--seed", type=int, default=0, help="seed of the random and preset splits")
    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, required=True, help="dataset directory to write")
    out.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(handler=_run_ingest)


def _run_ingest(args: argparse.Namespace) -> int:
    from pipelines.ingest import IngestConfig, ingest
    from pipelines.readers import LogSpec, parse_time

    spec = LogSpec(
        format=args.format,
        user_col=args.user_col,
        item_col=args.item_col,
        time_col=args.time_col,
        rating_col=args.rating_col,
        separator=args.separator,
        has_header=not args.no_header,
        names=args.names,
    )
    cfg = IngestConfig(
        out=args.out,
        spec=spec,
        input=args.input,
        train=args.train,
        test=args.test,
        split=args.split,
        valid_ratio=args.valid_ratio,
        test_ratio=args.test_ratio,
        valid_n=args.valid_n,
        test_n=args.test_n,
        valid_cutoff=parse_time(args.valid_cutoff, "--valid-cutoff"),
        test_cutoff=parse_time(args.test_cutoff, "--test-cutoff"),
        min_rating=args.min_rating,
        min_user_interactions=args.min_user_interactions,
        min_item_interactions=args.min_item_interactions,
        seed=args.seed,
        force=args.force,
    )
    result = ingest(cfg)
    counts = result.meta["counts"]
    print(
        f"dataset {result.out}: {result.meta['num_users']:,} users, {result.meta['num_items']:,} items, "
        f"train {counts['train']['interactions']:,} / valid {counts['valid']['interactions']:,} / "
        f"test {counts['test']['interactions']:,} interactions"
    )
    return 0


def _add_generate(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "generate",
        parents=[common],
        help="write a synthetic interaction log (string ids, power-law popularity, topics, dirty rows)",
        formatter_class=_HelpFormatter,
        description=(
            "Write a synthetic log with columns user_id, item_id, timestamp (epoch s), rating (1-5).\n"
            "Users prefer latent topics and items follow a power law, so a good recommender beats\n"
            "most-popular; a few null ids and repeated events are mixed in for the cleaning steps."
        ),
    )
    p.add_argument("--out", type=Path, required=True, help="file to write")
    p.add_argument(
        "--format", default="csv", choices=["csv", "tsv", "parquet", "jsonl"], help="output format"
    )
    p.add_argument("--users", type=int, default=1000, help="number of users")
    p.add_argument("--items", type=int, default=800, help="number of items")
    p.add_argument("--interactions", type=int, default=30_000, help="approximate number of clean events")
    p.add_argument("--topics", type=int, default=0, help="latent topics (0: about sqrt(items)/2)")
    p.add_argument("--popularity-exponent", type=float, default=1.0, help="Zipf exponent of item popularity")
    p.add_argument("--dirty-fraction", type=float, default=0.002, help="share of extra null/repeated rows")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(handler=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from pipelines.synthetic import SyntheticConfig, generate

    cfg = SyntheticConfig(
        num_users=args.users,
        num_items=args.items,
        num_interactions=args.interactions,
        num_topics=args.topics,
        popularity_exponent=args.popularity_exponent,
        dirty_fraction=args.dirty_fraction,
        seed=args.seed,
    )
    rows = generate(cfg, args.out, args.format, progress=not args.quiet)
    print(f"wrote {rows:,} rows to {args.out}")
    return 0


_HYPER_HELP = {
    "preset": "optimisation settings to start from: reference (the authors' configuration exactly) or "
    "fast (learning rate 0.005: the authors' accuracy in 3 epochs instead of 8, ~1%% lower at convergence); "
    "flags override them",
    "embedding_dim": "embedding size d",
    "num_layers": "propagation layers L",
    "cl_weight": "λ, contrastive loss weight (default: SimGCL 0.5, XSimGCL 0.2)",
    "noise_eps": "ε, noise magnitude (default: SimGCL 0.1, XSimGCL 0.2)",
    "temperature": "τ of InfoNCE (default: SimGCL 0.2, XSimGCL 0.15)",
    "cl_layer": "l*, the layer XSimGCL contrasts with the final embedding",
    "reg_weight": "L2 regularisation weight",
    "lr": "Adam learning rate",
    "batch_size": "interactions per batch",
    "epochs": "maximum epochs (a safety cap: the stopping rule ends the run)",
    "eval_every": "evaluate every N epochs",
    "patience_steps": "stop once this many optimiser steps pass without a better --metric on the "
    "selection split (steps, not evaluations: the same wait on small and large datasets)",
    "min_steps": "never stop before this many optimiser steps",
    "metric": "model-selection metric",
    "protocol": "honest: train on train, select on valid, test once; paper: train on train+valid, "
    "best test epoch (as the authors)",
    "seed": "seed of initialisation, sampling and noise",
    "device": "auto (CUDA if available), cpu or cuda",
    "threads": "CPU threads for torch (default: torch's choice)",
    "cl_negatives": "InfoNCE negatives of simgcl/xsimgcl: in_batch (as published), full (all users/items, "
    "exact) or metanode (all, through k-means meta-nodes)",
    "metanode_clusters": "K, meta-nodes per side (clipped to the number of users/items)",
    "metanode_second_order": "add the diagonal-variance term to the meta-node logits (true/false)",
    "metanode_refresh_epochs": "re-run k-means every N epochs",
    "metanode_kmeans_iters": "Lloyd iterations of the first k-means (later ones: 3, warm-started)",
    "metanode_full_below": "use the exact full loss on a side with at most this many nodes",
    "metanode_detach": "no gradient through the meta-nodes' means and variances (true/false)",
    "metanode_key_weight": "key weights of full/metanode: uniform, or degree (N*deg(v)/sum of degrees)",
    "metanode_probe_every": "every N steps log the gap to the exact loss and the anchor-gradient cosine "
    "(0: off)",
}


def _add_train(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from recsys.config import MODEL_NAMES, PRESETS, TrainConfig, parse_bool

    defaults = TrainConfig()
    p = sub.add_parser(
        "train",
        parents=[common],
        help="train mf / lightgcn / simgcl / xsimgcl on a dataset directory -> model artifact",
        formatter_class=_HelpFormatter,
        description=(
            "Train a model on a dataset directory written by `recsys ingest` and write a model artifact\n"
            "(config, weights, embeddings, id maps, seen items, metrics, log and curve plot).\n"
            "Values come from the defaults (the authors' reference configuration), then --config FILE\n"
            "(TOML, top-level keys named like the options below with underscores), then the flags.\n\n"
            "examples:\n"
            "  recsys train --dataset out/gowalla --model xsimgcl --out models/xsimgcl --epochs 20\n"
            "  recsys train --dataset out/gowalla --out models/xsimgcl --workers 4            # Ray Train\n"
            "  ray job submit --address http://head:8265 -- recsys train --dataset out/gowalla \\\n"
            "      --out models/xsimgcl --workers 8 --use-gpu --address auto"
        ),
    )
    p.add_argument("--dataset", type=Path, required=True, help="dataset directory (from recsys ingest)")
    p.add_argument("--out", type=Path, required=True, help="artifact directory to write")
    p.add_argument(
        "--model",
        choices=MODEL_NAMES,
        default=argparse.SUPPRESS,
        help=f"model to train (default: {defaults.model})",
    )
    p.add_argument("--config", type=Path, help="TOML file of hyperparameters; unknown keys are an error")
    p.add_argument("--resume", action="store_true", help="continue a killed run from <out>.ckpt/")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    hyper = p.add_argument_group("hyperparameters (defaults: the authors' reference configuration)")
    for name, text in _HYPER_HELP.items():
        default = getattr(defaults, name)
        kind: Callable[[str], object] = (
            type(default) if default is not None else (int if name == "threads" else float)
        )
        if kind is bool:  # bool("false") is True: parse the word instead
            kind = parse_bool
        shown = f"{text} (default: {default})" if default is not None else text
        # SUPPRESS: an option not given stays absent, so the config file's value is not overwritten.
        hyper.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=kind,
            default=argparse.SUPPRESS,
            help=shown,
            metavar="{true,false}" if kind is parse_bool else None,
            choices=list(PRESETS) if name == "preset" else None,
        )
    scale = p.add_argument_group("scaling (Ray Train data-parallel workers; see README, Scaling)")
    scale.add_argument(
        "--workers", type=int, default=1, help="data-parallel workers; 1 trains in this process without Ray"
    )
    scale.add_argument("--use-gpu", action="store_true", help="one GPU per worker (NCCL); default CPU (gloo)")
    scale.add_argument(
        "--address", help="join this Ray cluster (e.g. auto); default: a local Ray on 127.0.0.1"
    )
    scale.add_argument(
        "--storage-path", help="Ray Train checkpoint storage (shared on multi-node); default: a temp dir"
    )
    scale.add_argument(
        "--max-failures", type=int, default=0, help="restart lost workers from the last epoch up to N times"
    )
    p.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from recsys.config import config_from_dict, load_config_file
    from recsys.distributed import ScaleConfig
    from recsys.train import train_artifact

    values = load_config_file(args.config) if args.config else {}
    values.update({name: getattr(args, name) for name in (*_HYPER_HELP, "model") if hasattr(args, name)})
    cfg = config_from_dict(values, source=str(args.config or "options"))
    scale = ScaleConfig(
        workers=args.workers,
        use_gpu=args.use_gpu,
        address=args.address,
        storage_path=args.storage_path,
        max_failures=args.max_failures,
    )
    result = train_artifact(
        args.dataset,
        cfg,
        args.out,
        resume=args.resume,
        force=args.force,
        progress=not args.quiet,
        scale=scale,
    )
    metric = result.config.metric
    ndcg = metric.replace("recall", "ndcg")
    split = "test" if result.config.protocol == "paper" else "valid"
    print(
        f"trained {result.config.model} -> {args.out}: best epoch {result.best_epoch}/{len(result.history)}, "
        f"{split} {metric} {result.selection[metric]:.4f}, test {metric} {result.test[metric]:.4f} "
        f"{ndcg} {result.test.get(ndcg, float('nan')):.4f} "
        f"({result.config.protocol} protocol, {result.seconds:.0f} s)"
    )
    return 0


def _add_serve(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "serve",
        parents=[common],
        help="serve an artifact over HTTP with Ray Serve (Ctrl-C to stop)",
        formatter_class=_HelpFormatter,
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


def _add_recommend(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "recommend",
        parents=[common],
        help="one-off recommendations from an artifact, without a server",
        formatter_class=_HelpFormatter,
        description="Print top-k items for users, for a new user (fold-in) or similar items, as JSON.",
    )
    p.add_argument("--artifact", type=Path, required=True, help="artifact directory (from recsys train)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--user", action="append", help="raw user id (repeat for several users)")
    what.add_argument("--new-user-items", type=_csv_names, help="comma-separated raw item ids of a new user")
    what.add_argument("--similar", help="raw item id to find similar items for")
    p.add_argument("--k", type=int, default=10, help="list length")
    p.add_argument("--include-seen", action="store_true", help="do not drop the user's training items")
    p.set_defaults(handler=_run_recommend)


def _run_recommend(args: argparse.Namespace) -> int:
    import json

    from recsys.recommend import Recommender

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


def _add_demo(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "demo",
        parents=[common],
        help="run the whole job on the bundled sample log (the README's Quick start)",
        formatter_class=_HelpFormatter,
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


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        msg = f"expected comma-separated positive integers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not ks or min(ks) <= 0:
        msg = f"expected comma-separated positive integers, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return ks


def _baseline_names(text: str) -> tuple[str, ...]:
    from recsys.baselines import BASELINES

    names = () if text.strip().lower() == "none" else _csv_names(text)
    unknown = [name for name in names if name not in BASELINES]
    if unknown:
        msg = f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)} (or none)"
        raise argparse.ArgumentTypeError(msg)
    return names


def _add_evaluation_options(p: argparse.ArgumentParser, *, artifact_required: bool, baselines: str) -> None:
    """The options `recsys evaluate` and `recsys report` share: what to rank, against what, how."""
    p.add_argument(
        "--artifact",
        type=Path,
        required=artifact_required,
        help="artifact directory written by `recsys train`"
        + ("" if artifact_required else " (omit: baselines)"),
    )
    p.add_argument("--dataset", type=Path, required=True, help="dataset directory written by `recsys ingest`")
    p.add_argument("--split", default="test", choices=["valid", "test"], help="split to evaluate")
    p.add_argument("--k", type=_ks, default="10,20,50", metavar="K,K,...", help="cut-offs of the metrics")
    p.add_argument(
        "--protocol",
        choices=["honest", "paper"],
        help="evaluation protocol (default: the artifact's, honest without an artifact)",
    )
    p.add_argument(
        "--baselines",
        type=_baseline_names,
        default=baselines,
        metavar="NAME,...",
        help="reference rows, of popular, random, graph-filter (a fit: under a minute on gowalla), or none",
    )
    p.add_argument(
        "--allow-other-dataset",
        action="store_true",
        help="evaluate an artifact whose recorded dataset digest differs from --dataset (warn, do not fail)",
    )
    p.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to score the model"
    )
    p.add_argument("--batch-size", type=int, help="users per scoring chunk; unset: fill a 256 MiB buffer")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the graph filter's randomized SVD and user sample"
    )


def _add_evaluate(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "evaluate",
        parents=[common],
        help="full-ranking offline metrics of a trained artifact (and the baselines) on valid or test",
        formatter_class=_HelpFormatter,
        description=(
            "Score every item for every user with ground truth in --split, mask the items the user has in\n"
            "the training data (train for valid; train + valid for test), and report Recall, NDCG,\n"
            "Precision, Hit rate, MRR and coverage at each K, by user activity and item popularity segment,\n"
            "with popularity-bias measures, next to reference rows: most popular, random (closed-form\n"
            "expectation) and, when asked for, a training-free graph filter tuned on valid (the strongest\n"
            "cheap competitor; it costs a fit). Prints a table and writes JSON.\n"
            "The artifact is validated as serving does, and must have been trained on --dataset.\n\n"
            "protocols:\n"
            "  honest  model selected on valid, test reported once (default)\n"
            "  paper   trained on train + valid, best test epoch reported, as SELFRec does (for comparing\n"
            "          with published SimGCL/XSimGCL numbers only)\n\n"
            "examples:\n"
            "  recsys evaluate --artifact out/runs/simgcl --dataset out/gowalla --split test --k 10,20,50\n"
            "  recsys evaluate --artifact out/runs/simgcl --dataset out/gowalla \\\n"
            "      --baselines popular,random,graph-filter\n"
            "  recsys evaluate --dataset out/gowalla --baselines graph-filter        # baselines only"
        ),
    )
    _add_evaluation_options(p, artifact_required=False, baselines="popular,random")
    p.add_argument(
        "--out",
        type=Path,
        help="JSON report to write; unset: <artifact>/eval_<split>.json, or none without --artifact",
    )
    p.set_defaults(handler=_run_evaluate)


def _evaluation(args: argparse.Namespace) -> EvaluationReport:
    """Run the evaluation the shared options describe."""
    import torch

    from recsys.dataset import load_dataset
    from recsys.evaluate import evaluate_artifact, evaluate_split

    if args.batch_size is not None and args.batch_size <= 0:
        msg = f"--batch-size needs a positive integer (got {args.batch_size})"
        raise InputError(msg)
    if args.device == "cuda" and not torch.cuda.is_available():
        msg = "--device cuda: no CUDA device is available"
        raise InputError(msg)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if not args.artifact and not args.baselines:
        msg = "nothing to evaluate: give --artifact, or some --baselines"
        raise InputError(msg)
    options = {
        "split": args.split,
        "ks": args.k,
        "baselines": args.baselines,
        "batch_size": args.batch_size,
        "seed": args.seed,
    }
    if args.artifact is None:
        return evaluate_split(
            load_dataset(args.dataset), protocol=args.protocol or "honest", device=device, **options
        )
    return evaluate_artifact(
        args.artifact,
        args.dataset,
        protocol=args.protocol,
        allow_other_dataset=args.allow_other_dataset,
        device=device,
        **options,
    )


def _run_evaluate(args: argparse.Namespace) -> int:
    from recsys.evaluate import format_report, write_report

    report = _evaluation(args)
    print(format_report(report))
    out = args.out
    if out is None and args.artifact is not None:
        out = args.artifact / f"eval_{args.split}.json"
    if out is not None:
        write_report(report, out)
        print(f"wrote {out}")
    return 0


def _add_report(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "report",
        parents=[common],
        help="one self-contained HTML page on an artifact: curves, metrics vs baselines, segments, bias",
        formatter_class=_HelpFormatter,
        description=(
            "Evaluate an artifact as `recsys evaluate` does and write one HTML file (no network needed,\n"
            "charts inline as SVG): the training curve from log.jsonl, the metric table against the\n"
            "baselines, recall by user and item segment, the popularity of the recommended items against\n"
            "the catalogue's, and how the numbers were obtained (protocol, split, counts).\n\n"
            "example:\n"
            "  recsys report --artifact out/demo/xsimgcl --dataset out/demo/dataset --out report.html"
        ),
    )
    _add_evaluation_options(p, artifact_required=True, baselines="popular,random,graph-filter")
    p.set_defaults(k="10,20")
    p.add_argument("--out", type=Path, required=True, help="HTML file to write (atomically)")
    p.set_defaults(handler=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from recsys.report_html import write_html_report

    print(f"wrote {write_html_report(_evaluation(args), args.out)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for tests and documentation)."""
    parser = argparse.ArgumentParser(
        prog="recsys",
        formatter_class=_HelpFormatter,
        description="Graph contrastive recommendation: raw interaction log -> dataset -> model -> HTTP.",
    )
    parser.add_argument("--version", action="version", version=f"recsys {__version__}")
    sub = parser.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="only print results and errors")
    commands = (
        _add_ingest,
        _add_generate,
        _add_train,
        _add_evaluate,
        _add_report,
        _add_serve,
        _add_recommend,
    )
    for add in (*commands, _add_demo):
        add(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``recsys`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_cpu_runtime()  # before numpy/torch are imported by a subcommand
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    handler: _Handler = args.handler
    try:
        return handler(args)
    except InputError as exc:
        print(f"recsys {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"recsys {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
