r"""Recommendation losses beyond BPR (issue 22): a resumable grid of honest-protocol runs, and its tables.

Each cell is one run of ``recsys.training.jobs.train_artifact`` under the honest protocol (train on train,
select on valid by the default stopping rule, test the selected weights once) on a graph of
``benchmarks/graphs.py``, with the config fields a grid names (``rec_loss``, ``rec_temperature``,
``cl_weight``, ...) over the reference preset, seed 0. A grid is ``field=v1|v2;field=v1`` (the cartesian
product); ``--grid`` may be given several times. Cells whose artifact is already there are read, an
interrupted one resumes from its checkpoint (same ``--threads``), so re-running a command continues it.

    python benchmarks/losses.py --graphs gowalla-u20 --threads 1 \
        --grid 'model=lightgcn;rec_loss=bpr' \
        --grid 'model=lightgcn;rec_loss=softmax;rec_temperature=0.05|0.1|0.2'
    python benchmarks/losses.py --graphs gowalla-u20 --report      # the tables of what has run

The report has one table of every cell and one of the selection: per graph, model and loss the cell with
the highest valid Recall@20 (its test figures read once). Seconds are indicative (shared machine).
Results go to ``<workdir>/losses.json`` (one row per cell, replaced when a cell is re-read).
"""

from __future__ import annotations

from recsys.runtime import configure_cpu_runtime

configure_cpu_runtime()  # before numpy and torch load

import argparse
import itertools
import json
import logging
import statistics
from dataclasses import fields
from pathlib import Path
from typing import Any

from graphs import GRAPHS, missing_source
from train import train_or_resume

from recsys.artifact import read_history, read_json_object
from recsys.atomic import atomic_write_text
from recsys.config import TrainConfig, config_from_dict, parse_bool

WORKDIR = Path("/work/bench/losses")
METRIC = "recall@20"
HEADER = (
    "| model | loss | settings | best epoch / run | valid R@20 | test R@20 / NDCG@20 | s / epoch | s to best "
    "|",
    "| --- | --- | --- | --- | ---: | --- | ---: | ---: |",
)
# Short names in run directories and tables.
SHORT = {
    "rec_loss": "loss",
    "rec_temperature": "tau",
    "rec_negatives": "M",
    "rec_pool": "pool",
    "rec_logq": "logq",
    "rec_denominator": "den",
    "rec_cosine": "cos",
    "bsl_temperature": "tau2",
    "cl_weight": "lambda",
    "metanode_clusters": "K",
    "metanode_detach": "detach",
    "metanode_full_below": "fullbelow",
    "metanode_probe_every": "probe",
}


def parse_grid(text: str) -> list[dict[str, Any]]:
    """``'model=lightgcn;rec_temperature=0.05|0.1'`` -> one dict of field values per cell of the product."""
    known = {f.name: f for f in fields(TrainConfig)}
    axes: list[list[tuple[str, Any]]] = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, values = part.partition("=")
        if name not in known:
            msg = f"unknown config field {name!r} in grid {text!r}"
            raise SystemExit(msg)
        axes.append([(name, convert(name, v)) for v in values.split("|")])
    return [dict(cell) for cell in itertools.product(*axes)]


def convert(name: str, text: str) -> Any:
    """A field's value from its text, by the type of its default."""
    default = next(f.default for f in fields(TrainConfig) if f.name == name)
    if isinstance(default, bool):
        return parse_bool(text)
    if isinstance(default, int) and not isinstance(default, bool):
        return int(text)
    if isinstance(default, float) or default is None and name in ("cl_weight", "noise_eps", "temperature"):
        return float(text)
    return text


def cell_name(values: dict[str, Any]) -> str:
    """The run directory's name: the model, then each other field as short=value."""
    parts = [str(values.get("model", TrainConfig.model))]
    parts += [f"{SHORT.get(k, k)}={v}" for k, v in values.items() if k != "model"]
    return "-".join(parts)


def cell_config(values: dict[str, Any], threads: int) -> TrainConfig:
    """The reference preset, seed 0, with the cell's values; no post-selection extras."""
    extra: dict[str, Any] = {"threads": threads}
    if any(f.name == "baseline_check" for f in fields(TrainConfig)):
        extra["baseline_check"] = False  # a graph-filter fit per run is not what is measured here
    return config_from_dict({**values, **extra})


def read_cell(graph: str, name: str, values: dict[str, Any], out: Path) -> dict[str, Any]:
    """One cell's row from its artifact."""
    metrics = read_json_object(out / "metrics.json")
    history = read_history(out)
    config = read_json_object(out / "config.json")["config"]
    best = metrics["best_epoch"]
    seconds = [r["train_seconds"] for r in history]
    probes = [r["rec_probe_gap"] for r in history if "rec_probe_gap" in r]
    cosines = [r["rec_probe_grad_cos"] for r in history if "rec_probe_grad_cos" in r]
    return {
        "graph": graph,
        "cell": name,
        "values": values,
        "model": config["model"],
        "rec_loss": config["rec_loss"],
        "best_epoch": best,
        "epochs": len(history),
        "valid": metrics[metrics.get("selection_split", "valid")],
        "test": metrics["test"],
        "median_epoch_seconds": statistics.median(seconds),
        "seconds_to_best": sum(seconds[:best]),
        "rec_probe_gap": statistics.mean(probes) if probes else None,
        "rec_probe_grad_cos": statistics.mean(cosines) if cosines else None,
        "valid_curve": [
            (r["epoch"], round(sum(seconds[: r["epoch"]]), 1), r["valid"][METRIC])
            for r in history
            if "valid" in r
        ],
    }


def load_rows(workdir: Path) -> list[dict[str, Any]]:
    path = workdir / "losses.json"
    return json.loads(path.read_text()) if path.is_file() else []


def save_row(workdir: Path, row: dict[str, Any]) -> None:
    rows = [r for r in load_rows(workdir) if (r["graph"], r["cell"]) != (row["graph"], row["cell"])]
    atomic_write_text(workdir / "losses.json", json.dumps([*rows, row], indent=1))


def settings(row: dict[str, Any]) -> str:
    return ", ".join(
        f"{SHORT.get(k, k)} {v}" for k, v in row["values"].items() if k not in ("model", "rec_loss")
    )


def report(rows: list[dict[str, Any]], graphs: list[str]) -> str:
    """Markdown: every cell, then the valid-selected cell per graph, model and loss."""
    lines: list[str] = []
    for graph in graphs:
        mine = [r for r in rows if r["graph"] == graph]
        if not mine:
            continue
        lines += [
            f"**{graph}**, every cell:",
            "",
            *HEADER,
        ]
        for r in sorted(mine, key=lambda r: (r["model"], r["rec_loss"], r["cell"])):
            lines.append(_line(r))
        lines += [
            "",
            f"**{graph}**, selected on valid per model and loss (test read once):",
            "",
            *HEADER,
        ]
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in mine:
            groups.setdefault((r["model"], r["rec_loss"]), []).append(r)
        for key in sorted(groups):
            lines.append(_line(max(groups[key], key=lambda r: r["valid"][METRIC])))
        lines.append("")
    return "\n".join(lines)


def _line(r: dict[str, Any]) -> str:
    probe = "" if r.get("rec_probe_gap") is None else f" (probe gap {r['rec_probe_gap']:.3f})"
    return (
        f"| {r['model']} | {r['rec_loss']} | {settings(r) or '–'}{probe} | "
        f"{r['best_epoch']} / {r['epochs']} | "
        f"{r['valid'][METRIC]:.4f} | {r['test'][METRIC]:.4f} / {r['test']['ndcg@20']:.4f} | "
        f"{r['median_epoch_seconds']:.1f} | {r['seconds_to_best']:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--graphs", default="sample", help="comma-separated graphs of benchmarks/graphs.py")
    parser.add_argument("--grid", action="append", default=[], help="field=v1|v2;field=v (repeatable)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=WORKDIR)
    parser.add_argument("--report", action="store_true", help="only print the tables of what has run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    graphs = [g for g in args.graphs.split(",") if g]
    for graph in graphs:
        problem = missing_source(graph)
        if problem:
            raise SystemExit(problem)
    cells = [cell for grid in args.grid for cell in parse_grid(grid)]
    args.workdir.mkdir(parents=True, exist_ok=True)
    if not args.report:
        for graph in graphs:
            dataset = GRAPHS[graph](args.workdir)
            for values in cells:
                name = cell_name(values)
                out = args.workdir / "runs" / graph / name
                train_or_resume(dataset, cell_config(values, args.threads), out, f"{graph} {name}")
                save_row(args.workdir, read_cell(graph, name, values, out))
                row = load_rows(args.workdir)[-1]
                logging.info("%s", _line(row))
    print(report(load_rows(args.workdir), graphs))


if __name__ == "__main__":
    main()
