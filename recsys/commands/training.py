"""``recsys train`` and ``recsys refresh``: the commands that train, and the hyperparameter flags they share.

The flags are generated from :class:`~recsys.config.TrainConfig`'s fields, whose metadata holds their help.
"""

from __future__ import annotations

import argparse
import os
import sys
import typing
from dataclasses import Field, fields
from pathlib import Path
from typing import Any

from recsys.commands.options import HelpFormatter
from recsys.config import TrainConfig, load_config_file, parse_bool
from recsys.errors import InputError
from recsys.models.registry import CONTRASTIVE_FIELDS, MODELS

_FIELDS: dict[str, Field[Any]] = {option.name: option for option in fields(TrainConfig)}


def _add_init_shrink(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--init-shrink",
        type=float,
        default=1.0,
        metavar="FACTOR",
        help="with a warm start, multiply the parent's layer-0 rows by this factor in (0, 1] first "
        "(shrink-and-perturb without the perturbation; 1 keeps them as trained; see docs/refresh.md)",
    )


def add_hyperparameters(p: argparse.ArgumentParser, title: str, *, show_defaults: bool = True) -> None:
    """``--config`` and one flag per :class:`~recsys.config.TrainConfig` field but ``model``.

    Train and refresh share them. Each flag's type, help and default are its field's (type hint, ``help``
    metadata, default), so the options are described once, in :mod:`recsys.config`. ``show_defaults=False``
    where the defaults come from an artifact (refresh), not :class:`~recsys.config.TrainConfig`.
    """
    p.add_argument("--config", type=Path, help="TOML file of hyperparameters; unknown keys are an error")
    hyper = p.add_argument_group(title)
    hints = typing.get_type_hints(TrainConfig)
    for name, option in _FIELDS.items():
        if name == "model":  # train's own option: a warm start (refresh) keeps the model
            continue
        kind = _value_type(hints[name])
        # A field with a ``const`` also takes its flag bare (``--refit`` means ``--refit valid``).
        bare = {"nargs": "?", "const": option.metadata["const"]} if "const" in option.metadata else {}
        # SUPPRESS: an option not given stays absent, so the config file's value is not overwritten.
        hyper.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=parse_bool if kind is bool else kind,  # bool("false") is True: parse the word instead
            default=argparse.SUPPRESS,
            help=_help(option, show_defaults=show_defaults),
            metavar="{true,false}" if kind is bool else None,
            choices=option.metadata.get("choices"),
            **bare,
        )


def _value_type(hint: Any) -> Any:
    """What a flag's text converts to: the field's type without its ``None`` (``int | None`` -> ``int``)."""
    types = [t for t in typing.get_args(hint) if t is not type(None)]
    return types[0] if types else hint


def _help(option: Field[Any], *, show_defaults: bool) -> str:
    """A field's help text, with its default: the registry's per-model values for λ, ε and τ."""
    text = str(option.metadata["help"]).replace("%", "%%")  # argparse formats help with %
    if not show_defaults:
        return text
    if option.default is not None:
        return f"{text} (default: {option.default})"
    if option.name in CONTRASTIVE_FIELDS:
        models = [m for m in MODELS.values() if m.contrastive]
        return f"{text} (default: " + ", ".join(f"{m.name} {m.defaults[option.name]}" for m in models) + ")"
    return text


def _train_values(args: argparse.Namespace) -> dict[str, Any]:
    """The config file's values, then the flags given (only those: absent flags are not in ``args``)."""
    values = load_config_file(args.config) if args.config else {}
    values.update({name: getattr(args, name) for name in _FIELDS if hasattr(args, name)})
    return values


def add_train(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """``recsys train``: dataset directory -> artifact."""
    model = _FIELDS["model"]
    p = sub.add_parser(
        "train",
        parents=[common],
        help="train mf / lightgcn / simgcl / xsimgcl on a dataset directory -> model artifact",
        formatter_class=HelpFormatter,
        description=(
            "Train a model on a dataset directory written by `recsys ingest` and write a model artifact\n"
            "(config, weights, embeddings, id maps, seen items, metrics, log and curve plot).\n"
            "Values come from the defaults (the authors' reference configuration), then --config FILE\n"
            "(TOML, top-level keys named like the options below with underscores), then the flags.\n"
            "With --init-from ARTIFACT (warm start on a new version of the data) the values start from that\n"
            "artifact's config instead of the defaults, and users and items it knows (matched by raw id)\n"
            "start from its trained layer-0 embeddings; new items from the mean of their known users, new\n"
            "users from the mean of their items (README, Keep a model fresh); it waits less to stop\n"
            "(--patience-steps, --min-steps).\n"
            "After selection it warns if the model is below the popular or graph-filter row on valid;\n"
            "--refit then retrains from scratch on train ∪ valid (all: ∪ test) for the selected steps.\n\n"
            "examples:\n"
            "  recsys train --dataset out/gowalla --model xsimgcl --out models/xsimgcl --epochs 20\n"
            "  recsys train --dataset out/gowalla --out models/xsimgcl --workers 4            # Ray Train\n"
            "  recsys train --dataset out/gowalla --out models/xsimgcl --refit                # + refit\n"
            "  recsys train --dataset out/gowalla-v2 --init-from models/xsimgcl --out models/xsimgcl-v2\n"
            "  ray job submit --address http://head:8265 -- recsys train --dataset out/gowalla \\\n"
            "      --out models/xsimgcl --workers 8 --use-gpu --address auto"
        ),
    )
    p.add_argument("--dataset", type=Path, required=True, help="dataset directory (from recsys ingest)")
    p.add_argument("--out", type=Path, required=True, help="artifact directory to write")
    p.add_argument(
        "--model",
        choices=list(MODELS),
        default=argparse.SUPPRESS,
        help=f"{model.metadata['help']} (default: {model.default})",
    )
    p.add_argument(
        "--init-from",
        type=Path,
        metavar="ARTIFACT",
        help="warm start from this artifact: its config is the default, known users/items start from its "
        "layer-0 embeddings, the optimiser starts fresh; same --model only (see README, Keep a model fresh)",
    )
    _add_init_shrink(p)
    p.add_argument("--resume", action="store_true", help="continue a killed run from <out>.ckpt/")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    add_hyperparameters(
        p, "hyperparameters (defaults: the authors' reference configuration, or the --init-from artifact's)"
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
    from recsys.config import config_from_dict
    from recsys.data.protocol import selection_split
    from recsys.training.distributed import ScaleConfig
    from recsys.training.jobs import train_artifact
    from recsys.training.warmstart import load_parent

    values = _train_values(args)
    source = str(args.config or "options")
    if args.init_shrink != 1.0 and not args.init_from:
        msg = "--init-shrink scales a warm start's parent rows; give the parent with --init-from ARTIFACT"
        raise InputError(msg)
    parent = load_parent(args.init_from, args.init_shrink) if args.init_from else None
    cfg = parent.inherit_config(values, source) if parent else config_from_dict(values, source=source)
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
        init_from=parent,
    )
    metric = result.config.metric
    ndcg = metric.replace("recall", "ndcg")
    split = selection_split(result.config.protocol)

    def test(metrics: dict[str, float]) -> str:
        return f"test {metric} {metrics[metric]:.4f} {ndcg} {metrics.get(ndcg, float('nan')):.4f}"

    line = (
        f"trained {result.config.model} -> {args.out}: best epoch {result.best_epoch}/{len(result.history)}, "
        f"{split} {metric} {result.selection[metric]:.4f}, "
    )
    if result.refit is not None:  # the artifact is the refit model; the selected one is reported beside it
        line += (
            f"selected model {test(result.selected_test)}; refit on {' ∪ '.join(result.refit['splits'])} "
            f"for {result.refit['steps']:,} steps: "
            + (test(result.test) if result.test else "no held-out test figures (it learned test)")
        )
    else:
        line += test(result.test)
    print(line + f" ({result.config.protocol} protocol, {result.seconds:.0f} s)")
    return 0


def add_refresh(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """``recsys refresh``: new log -> warm-started challenger -> promoted if not worse."""
    p = sub.add_parser(
        "refresh",
        parents=[common],
        help="new log -> warm-started challenger -> promoted over the serving champion only if not worse",
        formatter_class=HelpFormatter,
        description=(
            "Keep a deployed model fresh: ingest the new version of the log with the options of the\n"
            "champion's dataset (or take --dataset), warm-start train a challenger from the champion, score\n"
            "both on the new test split (the champion by raw id: new users folded in, new items it cannot\n"
            "recommend), and promote the challenger only if it is not worse than the gate allows:\n"
            "challenger >= champion - margin on the selection metric (--metric, default the champion's).\n"
            "Promotion reloads the running service (--serve-url, POST /admin/reload), or, without it, only\n"
            "leaves the challenger artifact in <workdir>/challenger. Prints a decision table.\n"
            "Safe to re-run after a crash: finished stages are reused, training resumes, and a refresh\n"
            "that was promoted is never promoted again (<workdir>/state.json, then GET /model).\n"
            "Hyperparameters default to the champion's, but for the stopping rule, which waits less for a\n"
            "warm start (--patience-steps); --config and the flags below override them.\n\n"
            "exit codes:\n"
            "  0  promoted (or promoted by an earlier run)\n"
            "  1  bad input or options (nothing promoted)\n"
            "  3  not promoted: the challenger is below the gate\n"
            "  4  the service could not be checked or reloaded (decision recorded; re-run to retry)\n\n"
            "examples:\n"
            "  recsys refresh --champion models/v1 --log logs/2024-06-02.csv --workdir runs/2024-06-02\n"
            "  recsys refresh --champion models/v1 --log logs/2024-06-02.csv --workdir runs/2024-06-02 \\\n"
            "      --serve-url http://127.0.0.1:8000 --token $RECSYS_ADMIN_TOKEN --epochs 20\n"
            "  recsys refresh --champion models/v1 --dataset data/v2 --workdir runs/v2 \\\n"
            "      --margin 0.005 --margin-type absolute"
        ),
    )
    p.add_argument("--champion", type=Path, required=True, help="the artifact being served now")
    new = p.add_mutually_exclusive_group(required=True)
    new.add_argument(
        "--log", type=Path, help="the new version of the whole log, ingested like the champion's dataset"
    )
    new.add_argument("--dataset", type=Path, help="a dataset directory of the new version (skip the ingest)")
    p.add_argument(
        "--workdir",
        type=Path,
        required=True,
        help="this refresh's own directory: dataset/, challenger/, decision.json, state.json (reuse it to "
        "re-run)",
    )
    p.add_argument(
        "--margin",
        type=float,
        default=0.01,
        help="how much worse than the champion the challenger may be and still be promoted",
    )
    p.add_argument(
        "--margin-type",
        choices=["relative", "absolute"],
        default="relative",
        help="relative: a share of the champion's value (0.01 = 1%%); absolute: in metric units",
    )
    p.add_argument("--serve-url", help="the running service to reload, e.g. http://127.0.0.1:8000")
    p.add_argument("--token", help="its admin bearer token (default: env RECSYS_ADMIN_TOKEN)")
    _add_init_shrink(p)
    add_hyperparameters(
        p,
        "training of the challenger (defaults: the champion's config; --metric also decides)",
        show_defaults=False,
    )
    p.set_defaults(handler=_run_refresh)


def _run_refresh(args: argparse.Namespace) -> int:
    from pipelines.refresh import EXIT_SERVICE_FAILED, RefreshConfig, ServiceError, format_result, refresh

    cfg = RefreshConfig(
        champion=args.champion,
        init_shrink=args.init_shrink,
        workdir=args.workdir,
        log=args.log,
        dataset=args.dataset,
        train=_train_values(args),
        train_source=str(args.config or "options"),
        margin=args.margin,
        margin_type=args.margin_type,
        serve_url=args.serve_url,
        token=args.token or os.environ.get("RECSYS_ADMIN_TOKEN"),
        progress=not args.quiet,
    )
    try:
        result = refresh(cfg)
    except ServiceError as exc:
        print(f"recsys refresh: service error: {exc}", file=sys.stderr)
        return EXIT_SERVICE_FAILED
    print(format_result(result))
    return result.exit_code
