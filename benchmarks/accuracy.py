r"""Accuracy benchmark: recipes and baselines on graphs of every shape, honest protocol, over seeds.

The product must rank well on any user's log, not only on sparse benchmarks. This runs a grid of graphs
(``benchmarks/graphs.py``: gowalla, its dense core, the bundled sample, generated logs that are sparse,
dense, and drifting in time) x rows x seeds and reports, per graph and row, test Recall@20 and NDCG@20
(mean ± sample std over seeds), the selected epoch, the epochs run, the training time to the selected epoch
and that time in floor epochs.

**Protocol** (honest): train on train, select the epoch on valid Recall@20 (the default stopping rule ends
the run, or ``--max-epochs``), read test once with the selected weights
(``recsys.training.jobs.train_artifact``). The baselines use the same splits
(``recsys.evaluation.evaluate.evaluate_split`` with ``baselines=``): ``popular`` (train popularity) and
``graph-filter`` (tuned on valid); they are deterministic, so they run once, not per seed.

**Rows**: ``default`` (the ``recsys train`` recipe: whatever ``TrainConfig()`` is when the benchmark runs),
``mf`` and ``lightgcn`` (BPR, their defaults), the baselines ``popular`` and ``graph-filter``, and recipes
``name:key=value,key=value`` whose keys are ``TrainConfig`` fields, e.g. ``xsimgcl-l005:model=xsimgcl,
cl_weight=0.05`` (a token with ``name:`` starts a recipe; the ``key=value`` tokens after it belong to it).

**Floor epoch**: the graph's steps per epoch (its training pairs over the default batch size, 2,048) x 4
bare CSR ``torch.sparse.mm`` of its normalised training adjacency with a (nodes x 64) dense matrix: the
sparse products an epoch of 2-layer steps cannot avoid (2 forward, 2 backward), as in
``benchmarks/time_to_accuracy.py`` (its ``Floor`` times them). The floor is timed in this process before and
right after every run, and the run is counted in the mean of the two, so the ratio carries between machines
(and between minutes of a shared machine, whose memory bandwidth drifts). Times are training seconds (the
valid evaluations excluded) as the epoch records have them; a resumed run's earlier epochs were timed in the
process that ran them.

**Resumable**: one JSON file per cell under ``--out/cells`` (graph/row/seed), written when the cell ends
and read back instead of re-running (unless its config differs from today's, e.g. ``TrainConfig``'s
defaults changed, then the cell runs again); every training run is an artifact under ``--out/runs`` that
checkpoints after each epoch, so a killed benchmark continues where it stopped when run again with the same
options. The markdown table is printed and written to ``--out/summary.md``, and the rows to
``--out/summary.json``.

    python benchmarks/accuracy.py --graphs sample,generated-sparse,generated-drift,generated-dense,\
generated-dense-drift,gowalla-core --seeds 0 --threads 1 \
        --rows default,mf,lightgcn,xsimgcl-l005:model=xsimgcl,cl_weight=0.05,popular,graph-filter \
        --out /work/bench/accuracy
    python benchmarks/accuracy.py --graphs gowalla --seeds 0,1,2 --threads 1 --out /work/bench/accuracy
    python benchmarks/accuracy.py --graphs sample --rows default,popular --seeds 0 --max-epochs 3 \
        --out /tmp/acc-smoke          # a smoke run
"""

from __future__ import annotations

from recsys.runtime import configure_cpu_runtime

configure_cpu_runtime()  # before numpy and torch load

import argparse
import dataclasses
import itertools
import json
import logging
import math
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from graphs import GRAPHS, missing_source
from time_to_accuracy import BATCHES, FLOOR_PRODUCTS, Floor
from train import train_or_resume, trained_with

from recsys.artifact import read_history, read_json_object
from recsys.atomic import atomic_write_text
from recsys.config import TrainConfig, config_from_dict
from recsys.data.dataset import Dataset, load_dataset
from recsys.errors import InputError
from recsys.evaluation.evaluate import evaluate_split

PROTOCOL = "honest"
METRICS = ("recall@20", "ndcg@20")
RECIPES: dict[str, dict[str, Any]] = {"default": {}, "mf": {"model": "mf"}, "lightgcn": {"model": "lightgcn"}}
BASELINES = ("popular", "graph-filter")
DEFAULT_ROWS = "default,mf,lightgcn,popular,graph-filter"
GRID_KEYS = ("protocol", "seed", "threads", "epochs")  # set by the grid (--seeds, --threads, --max-epochs)
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


@dataclasses.dataclass(frozen=True)
class Row:
    """A row of the table: a training recipe (``TrainConfig`` overrides) or a baseline (no recipe)."""

    name: str
    recipe: dict[str, Any] | None

    @property
    def baseline(self) -> bool:
        """Whether the row is a baseline: deterministic, evaluated once per graph, not per seed."""
        return self.recipe is None


def parse_rows(texts: list[str]) -> list[Row]:
    """Rows from ``--rows`` values: built-in names and ``name:key=value,key=value`` recipes, comma-separated.

    A token ``name:key=value`` starts a recipe (a ``:`` before any ``=``), a ``key=value`` token adds to the
    recipe before it, and any other token is a built-in row. Values are JSON where they parse (numbers,
    ``true``/``false``), else strings; the recipe is checked by building its config.

    Raises:
        InputError: an unknown row, a ``key=value`` outside a recipe, a bad name, a duplicate, a key the
            grid sets (``protocol``, ``seed``, ``threads``, ``epochs``) or not a ``TrainConfig`` field.
    """
    rows: list[Row] = []
    recipe: dict[str, Any] | None = None
    for token in (t.strip() for text in texts for t in text.split(",")):
        if not token:
            continue
        colon, equals = token.find(":"), token.find("=")
        if colon > 0 and (equals < 0 or colon < equals):
            name, _, assignment = token.partition(":")
            if not _NAME.match(name) or name in RECIPES or name in BASELINES:
                msg = f"--rows: bad recipe name {name!r}; expected letters, digits, '.', '_', '+', '-' and "
                msg += "not a built-in row"
                raise InputError(msg)
            recipe = {}
            rows.append(Row(name, recipe))
            token = assignment
            if not token:
                continue
        elif equals < 0:
            if token in RECIPES:
                rows.append(Row(token, dict(RECIPES[token])))
            elif token in BASELINES:
                rows.append(Row(token, None))
            else:
                msg = f"--rows: unknown row {token!r}; expected one of {', '.join([*RECIPES, *BASELINES])} "
                msg += "or a recipe name:key=value,..."
                raise InputError(msg)
            recipe = None
            continue
        if recipe is None:
            msg = f"--rows: {token!r} belongs to no recipe; start one with name:{token}"
            raise InputError(msg)
        key, _, value = token.partition("=")
        if key in GRID_KEYS:
            msg = f"--rows: {key} is set by the grid (--seeds, --threads, --max-epochs), not by a recipe"
            raise InputError(msg)
        recipe[key] = _value(value)
    names = [row.name for row in rows]
    if not rows or len(set(names)) != len(names):
        msg = f"--rows: expected distinct row names, got {', '.join(names) or 'none'}"
        raise InputError(msg)
    for row in rows:
        if row.recipe is not None:
            config_from_dict(row.recipe, f"--rows {row.name}")  # unknown keys and bad values, up front
    return rows


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_seeds(text: str) -> list[int]:
    """``0,1,2`` -> ``[0, 1, 2]`` (distinct non-negative integers)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        msg = f"--seeds: expected distinct non-negative integers such as 0,1,2, got {text!r}"
        raise InputError(msg)
    return seeds


def row_config(row: Row, seed: int, threads: int, max_epochs: int | None) -> TrainConfig:
    """The resolved config of a recipe row: its overrides, the honest protocol, the seed and the threads."""
    assert row.recipe is not None, "baselines have no config"
    cfg = config_from_dict({**row.recipe, "protocol": PROTOCOL, "seed": seed, "threads": threads})
    if max_epochs is not None:
        cfg = dataclasses.replace(cfg, epochs=min(cfg.epochs, max_epochs))
    return cfg.resolved()


def describe(cfg: TrainConfig) -> str:
    """A recipe in a few words: the model, its preset and λ where it has one."""
    text = f"{cfg.model} ({cfg.preset}"
    if cfg.spec.contrastive:
        text += f", λ={cfg.cl_weight:g}"
    return text + ")"


class GraphFloor:
    """One graph's floor epoch: its steps per epoch x ``FLOOR_PRODUCTS`` bare CSR ``sparse.mm``.

    ``time_to_accuracy.Floor`` builds the adjacency of train ∪ valid (the paper protocol's graph) and times
    one product; the honest protocol trains on train alone, so it gets a dataset whose valid split is empty.
    Built and timed only when a cell of the graph runs.
    """

    def __init__(self, data: Dataset, threads: int) -> None:
        self.data, self.threads = data, threads
        self.steps = math.ceil(data.train.size(1) / TrainConfig().batch_size)
        self._floor: Floor | None = None
        self.last_ms: float | None = None  # the latest timing: the "before" of the next run

    def time(self) -> float:
        """Milliseconds of one bare CSR ``sparse.mm`` now (a median of 11), remembered as ``last_ms``."""
        if self._floor is None:
            training = dataclasses.replace(self.data, valid=self.data.valid[:, :0])
            self._floor = Floor(training, self.threads)
        # Floor.epoch_s is one product x gowalla's steps x FLOOR_PRODUCTS, unrounded: back to one product.
        self.last_ms = self._floor.epoch_s() / (BATCHES * FLOOR_PRODUCTS) * 1000
        return self.last_ms

    def before(self) -> float:
        """The floor timed right before a run: the last timing (after the previous run), or now."""
        return self.last_ms if self.last_ms is not None else self.time()

    def epoch_s(self, spmm_ms: float) -> float:
        """Seconds of one floor epoch at ``spmm_ms`` per product."""
        return spmm_ms / 1000 * FLOOR_PRODUCTS * self.steps


def graph_info(name: str, data: Dataset, floor: GraphFloor) -> dict[str, Any]:
    """Sizes of a graph as the table's header says them."""
    pairs = {split: int(data.split(split).size(1)) for split in ("train", "valid", "test")}
    return {
        "graph": name,
        "num_users": data.num_users,
        "num_items": data.num_items,
        "pairs": pairs,
        "density": round(sum(pairs.values()) / (data.num_users * data.num_items), 6),
        "has_timestamp": bool(data.meta.get("has_timestamp")),
        "split": data.meta.get("options", {}).get("split"),
        "floor_steps_per_epoch": floor.steps,
    }


def cell_path(out: Path, graph: str, row: Row, seed: int | None) -> Path:
    base = out / "cells" / graph / row.name
    return base.with_suffix(".json") if seed is None else base / f"seed{seed}.json"


def train_cell(
    graph: str, dataset_dir: Path, row: Row, cfg: TrainConfig, floor: GraphFloor, out: Path
) -> dict[str, Any]:
    """Train (or resume) one recipe at one seed, time the floor right after, and return its cell."""
    run_dir = out / "runs" / graph / row.name / f"seed{cfg.seed}"
    reused = trained_with(run_dir, cfg)  # finished before its cell was written (a kill in between)
    resumed = not reused and Path(f"{run_dir}.ckpt").is_dir()  # its first epochs ran in another process
    before = floor.before()
    train_or_resume(dataset_dir, cfg, run_dir, f"{graph} {row.name} seed {cfg.seed}")
    after = floor.time()
    metrics = read_json_object(run_dir / "metrics.json")
    records = read_history(run_dir)
    train_s = list(itertools.accumulate(r["train_seconds"] for r in records))
    wall_s = list(itertools.accumulate(r["seconds"] for r in records))
    best = next(i for i, r in enumerate(records) if r["epoch"] == metrics["best_epoch"])
    floor_epoch_s = floor.epoch_s((before + after) / 2)
    return {
        "graph": graph,
        "row": row.name,
        "seed": cfg.seed,
        "recipe": row.recipe,
        "describe": describe(cfg),
        "best_epoch": metrics["best_epoch"],
        "epochs": len(records),
        "best_step": records[best]["step"],
        "steps": records[-1]["step"],
        "steps_per_epoch": math.ceil(floor.data.train.size(1) / cfg.batch_size),
        "ended_by": "cap" if len(records) >= cfg.epochs else "rule",
        **{f"valid_{m}": metrics["valid"][m] for m in METRICS},
        **{f"test_{m}": metrics["test"][m] for m in METRICS},
        "train_s": round(train_s[-1], 3),
        "train_s_to_best": round(train_s[best], 3),
        "wall_s_to_best": round(wall_s[best], 3),  # with the valid evaluations
        "floor_spmm_ms": [round(before, 4), round(after, 4)],
        "floor_epoch_s": round(floor_epoch_s, 5),
        "floor_epochs_to_best": round(train_s[best] / floor_epoch_s, 2),
        "resumed": resumed,
        "reused_artifact": reused,
        "threads": cfg.threads,
        "cpus": os.cpu_count(),
        "curve": {
            "epoch": [r["epoch"] for r in records],
            "train_s": [round(t, 3) for t in train_s],
            "valid_recall@20": [r.get("valid", {}).get("recall@20") for r in records],
        },
        "config": cfg.to_dict(),
    }


def baseline_cells(
    graph: str, data: Dataset, rows: list[Row], floor: GraphFloor, threads: int
) -> list[dict[str, Any]]:
    """The baseline rows of one graph, evaluated on test once (the graph filter tuned on valid)."""
    torch.set_num_threads(threads)
    before = floor.before()
    report = evaluate_split(data, split="test", protocol=PROTOCOL, baselines=[row.name for row in rows])
    after = floor.time()
    floor_epoch_s = floor.epoch_s((before + after) / 2)
    cells = []
    for row, result in zip(rows, report.baselines, strict=True):
        details = {k: v for k, v in result.details.items() if k not in ("grid", "description")}
        cells.append(
            {
                "graph": graph,
                "row": row.name,
                "seed": None,
                "recipe": None,
                "describe": "baseline",
                **{f"test_{m}": result.metrics[m] for m in METRICS},
                "seconds": round(result.seconds, 3),
                "floor_spmm_ms": [round(before, 4), round(after, 4)],
                "floor_epoch_s": round(floor_epoch_s, 5),
                "floor_epochs": round(result.seconds / floor_epoch_s, 2),
                "details": details,
                "threads": threads,
                "cpus": os.cpu_count(),
            }
        )
    return cells


def write_cell(path: Path, cell: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(cell, indent=1) + "\n")


def read_cell(path: Path) -> dict[str, Any] | None:
    return read_json_object(path) if path.is_file() else None


def run_graph(name: str, rows: list[Row], opts: argparse.Namespace) -> tuple[dict[str, Any], list[dict]]:
    """Every cell of one graph: recorded ones read back, the others run (seed by seed, row by row)."""
    dataset_dir = GRAPHS[name](opts.workdir)
    data = load_dataset(dataset_dir)
    floor = GraphFloor(data, opts.threads)
    info = graph_info(name, data, floor)
    cells: list[dict[str, Any]] = []
    baselines = [row for row in rows if row.baseline]
    pending = [row for row in baselines if read_cell(cell_path(opts.out, name, row, None)) is None]
    if pending:
        logging.info("%s: baselines %s", name, ", ".join(row.name for row in pending))
        for cell in baseline_cells(name, data, pending, floor, opts.threads):
            write_cell(cell_path(opts.out, name, Row(cell["row"], None), None), cell)
    cells += [read_json_object(cell_path(opts.out, name, row, None)) for row in baselines]
    for seed, row in itertools.product(opts.seeds, rows):
        if row.baseline:
            continue
        cfg = row_config(row, seed, opts.threads, opts.max_epochs)
        path = cell_path(opts.out, name, row, seed)
        recorded = read_cell(path)
        if recorded is not None and recorded.get("config") == cfg.to_dict():
            cells.append(recorded)
            continue
        if recorded is not None:
            logging.warning("%s: recorded with another config (defaults changed?); running it again", path)
        cell = train_cell(name, dataset_dir, row, cfg, floor, opts.out)
        write_cell(path, cell)
        cells.append(cell)
    index = {row.name: i for i, row in enumerate(rows)}
    cells.sort(key=lambda c: (index[c["row"]], opts.seeds.index(c["seed"]) if c["seed"] is not None else 0))
    return info, cells


def aggregate(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (graph, row): mean and sample std over seeds of the metrics and times; the epochs as lists."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for cell in cells:
        groups.setdefault((cell["graph"], cell["row"]), []).append(cell)
    out = []
    for (graph, row), group in groups.items():
        first = group[0]
        baseline = first["recipe"] is None
        fields = [f"test_{m}" for m in METRICS]
        fields += ["seconds", "floor_epochs"] if baseline else ["train_s_to_best", "floor_epochs_to_best"]
        entry: dict[str, Any] = {
            "graph": graph,
            "row": row,
            "describe": first["describe"],
            "baseline": baseline,
            "seeds": [c["seed"] for c in group],
            "floor_spmm_ms": [ms for c in group for ms in c["floor_spmm_ms"]],
        }
        for field in fields:
            values = [float(c[field]) for c in group]
            entry[field] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "values": values,
            }
        if not baseline:
            entry["best_epoch"] = [c["best_epoch"] for c in group]
            entry["epochs"] = [c["epochs"] for c in group]
            entry["ended_by"] = [c["ended_by"] for c in group]
        out.append(entry)
    return out


def _pm(stat: dict[str, Any], digits: int = 4) -> str:
    if len(stat["values"]) == 1:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _seconds(stat: dict[str, Any]) -> str:
    mean, std = stat["mean"], stat["std"]
    digits = 0 if mean >= 100 else 1 if mean >= 10 else 2
    return f"{mean:.{digits}f}" + ("" if len(stat["values"]) == 1 else f" ± {std:.{digits}f}")


def markdown(graphs: list[dict[str, Any]], entries: list[dict[str, Any]], threads: int) -> str:
    """Per graph: a line of sizes and floor, then one table row per benchmark row."""
    text = []
    for info in graphs:
        spmm = [ms for e in entries if e["graph"] == info["graph"] for ms in e.get("floor_spmm_ms", [])]
        pairs = info["pairs"]
        floor = (
            f"floor epoch = {info['floor_steps_per_epoch']} steps x {FLOOR_PRODUCTS} CSR sparse.mm "
            f"({min(spmm):.3g}-{max(spmm):.3g} ms each, timed before and after every run)"
            if spmm
            else f"floor epoch = {info['floor_steps_per_epoch']} steps x {FLOOR_PRODUCTS} CSR sparse.mm"
        )
        text.append(
            f"\n**{info['graph']}**: {info['num_users']:,} users, {info['num_items']:,} items, "
            f"{pairs['train']:,} / {pairs['valid']:,} / {pairs['test']:,} train / valid / test pairs "
            f"({100 * info['density']:.2f} % dense), {info['split']} split; honest protocol, {threads} "
            f"thread(s) of {os.cpu_count()} cores; {floor}. Timing is indicative (shared machine).\n"
        )
        text.append(
            "| row | recipe | seeds | test Recall@20 | test NDCG@20 | selected epoch | epochs run "
            "| s to selected | floor epochs to selected |"
        )
        text.append("|" + " --- |" * 9)
        for e in entries:
            if e["graph"] != info["graph"]:
                continue
            if e["baseline"]:
                times = [f"{_seconds(e['seconds'])} (fit + rank)", _pm(e["floor_epochs"], 2)]
                epochs = ["", ""]
                seeds = "-"
            else:
                times = [_seconds(e["train_s_to_best"]), _pm(e["floor_epochs_to_best"], 2)]
                caps = ["*" if ended == "cap" else "" for ended in e["ended_by"]]
                epochs = [
                    " / ".join(map(str, e["best_epoch"])),
                    " / ".join(f"{n}{c}" for n, c in zip(e["epochs"], caps, strict=True)),
                ]
                seeds = str(len(e["seeds"]))
            cells = [e["row"], e["describe"], seeds, _pm(e["test_recall@20"]), _pm(e["test_ndcg@20"])]
            text.append("| " + " | ".join([*cells, *epochs, *times]) + " |")
    text.append(
        "\nTest metrics: mean ± sample std over seeds (one value: one seed). Selected epoch and epochs run: "
        "per seed (* = the --max-epochs cap ended the run, else the stopping rule). Seconds: training to "
        "the selected epoch (valid evaluations excluded), mean over seeds; baselines: fit, tuning and "
        "ranking."
    )
    return "\n".join(text)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--graphs",
        default="sample,generated-sparse,generated-dense",
        help="comma-separated, from " + ", ".join(GRAPHS),
    )
    parser.add_argument(
        "--rows",
        action="append",
        help=f"rows, comma-separated: built-in ({', '.join([*RECIPES, *BASELINES])}) or recipes "
        f"name:key=value,key=value; may be repeated (default: {DEFAULT_ROWS})",
    )
    parser.add_argument("--seeds", default="0,1,2", help="training seeds, comma-separated")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every run and of the floor")
    parser.add_argument(
        "--max-epochs", type=int, help="cap every run (default: the stopping rule alone ends it)"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="results: cells/, runs/ (artifacts), summary.json/.md"
    )
    parser.add_argument("--workdir", type=Path, help="dataset directories (default: <out>/graphs)")
    opts = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        graphs = [g for g in opts.graphs.split(",") if g]
        for name in graphs:
            if (why := missing_source(name)) is not None:
                raise InputError(why)
        rows = parse_rows(opts.rows or [DEFAULT_ROWS])
        opts.seeds = parse_seeds(opts.seeds)
        if opts.threads < 1 or (opts.max_epochs is not None and opts.max_epochs < 1):
            msg = "--threads and --max-epochs must be >= 1"
            raise InputError(msg)
    except InputError as exc:
        sys.exit(f"accuracy.py: error: {exc}")
    torch.set_num_threads(opts.threads)
    opts.workdir = opts.workdir or opts.out / "graphs"
    opts.workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    infos, cells = [], []
    for name in graphs:
        info, graph_cells = run_graph(name, rows, opts)
        infos.append(info)
        cells += graph_cells
    entries = aggregate(cells)
    table = markdown(infos, entries, opts.threads)
    print(table)
    summary = {
        "protocol": PROTOCOL,
        "metric": "recall@20",
        "threads": opts.threads,
        "cpus": os.cpu_count(),
        "seeds": opts.seeds,
        "max_epochs": opts.max_epochs,
        "graphs": infos,
        "rows": entries,
        "cells": [{k: v for k, v in c.items() if k != "curve"} for c in cells],
    }
    atomic_write_text(opts.out / "summary.json", json.dumps(summary, indent=1) + "\n")
    atomic_write_text(opts.out / "summary.md", table + "\n")
    logging.info("wrote %s and summary.md (%.0f s)", opts.out / "summary.json", time.perf_counter() - start)


if __name__ == "__main__":
    main()
