"""``recsys evaluate`` and ``recsys report``: full-ranking metrics of an artifact, as a table or a page.

Both load the evaluation stack once, in :func:`_import_evaluation` (when argparse converts ``--baselines``),
with the garbage collector paused. Neither loads Ray, serving, torch_geometric or polars, and only ``report``
loads matplotlib (in its handler), so ``recsys evaluate`` starts fast.
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from recsys.commands.options import HelpFormatter, csv_names
from recsys.errors import InputError

if TYPE_CHECKING:
    from recsys.evaluation.report import EvaluationReport


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


def _import_evaluation() -> None:
    """Import the evaluation stack (torch, numpy) once, with the cyclic garbage collector paused.

    Importing torch creates ~180k objects that live until the process ends. Left to the collector, they are
    walked by every collection while they load and again by the collections at interpreter exit, a large
    share of what `recsys evaluate` costs besides the ranking itself; frozen (:func:`gc.freeze`), they are
    skipped, and the objects the evaluation makes are collected as usual.
    """
    if (
        "recsys.evaluation.evaluate" in sys.modules
    ):  # loaded already (a test calling main), so nothing to save
        return
    enabled = gc.isenabled()
    gc.disable()
    try:
        import recsys.evaluation.evaluate  # noqa: F401
    finally:
        if enabled:
            gc.enable()
    gc.freeze()


def _baseline_names(text: str) -> tuple[str, ...]:
    _import_evaluation()  # argparse converts the default too: evaluate and report load their stack here
    from recsys.evaluation.baselines import BASELINES

    names = () if text.strip().lower() == "none" else csv_names(text)
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
        help="reference rows, of popular, random, the training-free graph filters gf-cf, chebycf, bspm,"
        " graph-filter (the best of them on valid; a fit and a search, about a minute on gowalla), or none",
    )
    p.add_argument(
        "--filter-on",
        choices=["train", "train+valid"],
        help="what the graph filters are applied to once tuned (default: the protocol's training data); "
        "train+valid refits them on train + valid with the hyperparameters chosen on valid, as for an "
        "artifact refit on train + valid (honest protocol, test split)",
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


def add_evaluate(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """``recsys evaluate``: the metrics of an artifact and the baselines, printed and written as JSON."""
    p = sub.add_parser(
        "evaluate",
        parents=[common],
        help="full-ranking offline metrics of a trained artifact (and the baselines) on valid or test",
        formatter_class=HelpFormatter,
        description=(
            "Score every item for every user with ground truth in --split, mask the items the user has in\n"
            "the training data (train for valid; train + valid for test), and report Recall, NDCG,\n"
            "Precision, Hit rate, MRR and coverage at each K, by user activity and item popularity segment,\n"
            "with popularity-bias measures, next to reference rows: most popular, random (closed-form\n"
            "expectation) and, when asked for, training-free graph filters tuned on valid (GF-CF,\n"
            "ChebyCF, BSPM, and graph-filter: the best of them; the strongest cheap competitors, at the\n"
            "cost of a fit and a search). Prints a table and writes JSON.\n"
            "The artifact is validated as serving does, and must have been trained on --dataset.\n\n"
            "protocols:\n"
            "  honest  model selected on valid, test reported once (default)\n"
            "  paper   trained on train + valid, best test epoch reported, as SELFRec does (for comparing\n"
            "          with published SimGCL/XSimGCL numbers only)\n\n"
            "examples:\n"
            "  recsys evaluate --artifact out/runs/simgcl --dataset out/gowalla --split test --k 10,20,50\n"
            "  recsys evaluate --artifact out/runs/simgcl --dataset out/gowalla \\\n"
            "      --baselines popular,random,graph-filter\n"
            "  recsys evaluate --dataset out/gowalla --baselines graph-filter        # baselines only\n"
            "  recsys evaluate --artifact out/runs/refit --dataset out/gowalla --baselines graph-filter \\\n"
            "      --filter-on train+valid        # the filter refit on train + valid, as the artifact was"
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
    _import_evaluation()
    from recsys.data.dataset import load_dataset
    from recsys.evaluation.evaluate import evaluate_artifact, evaluate_split
    from recsys.runtime import resolve_device

    if args.batch_size is not None and args.batch_size <= 0:
        msg = f"--batch-size needs a positive integer (got {args.batch_size})"
        raise InputError(msg)
    device = resolve_device(args.device)
    if not args.artifact and not args.baselines:
        msg = "nothing to evaluate: give --artifact, or some --baselines"
        raise InputError(msg)
    options = {
        "split": args.split,
        "ks": args.k,
        "baselines": args.baselines,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "filter_pairs": args.filter_on,
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
    from recsys.evaluation.report import format_report, write_report

    report = _evaluation(args)
    print(format_report(report))
    out = args.out
    if out is None and args.artifact is not None:
        out = args.artifact / f"eval_{args.split}.json"
    if out is not None:
        write_report(report, out)
        print(f"wrote {out}")
    return 0


def add_report(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """``recsys report``: the same evaluation as one self-contained HTML page."""
    p = sub.add_parser(
        "report",
        parents=[common],
        help="one self-contained HTML page on an artifact: curves, metrics vs baselines, segments, bias",
        formatter_class=HelpFormatter,
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
    from recsys.evaluation.report_html import write_html_report

    print(f"wrote {write_html_report(_evaluation(args), args.out)}")
    return 0
