r"""Meta-node negatives benchmark: the cost on gowalla, and the accuracy on several graphs.

Compares the InfoNCE negatives of SimGCL/XSimGCL (``cl_negatives``): ``in_batch`` (as published),
``metanode`` at several K (all nodes through K k-means meta-nodes, docs/metanode.md)
and ``full`` (every node, exact). Two modes, each printing a table and writing under benchmarks/results/:

* ``step``: the cost, on gowalla (../shared/data/gowalla, preset split). For each model and variant, the
  contrastive loss step (both sides, forward + backward, B = 2048 batches of real gowalla indices), the
  k-means refresh, and a whole training step (objective + backward + Adam), medians; the epoch time is
  projected from the step time (396 steps plus one refresh).

      python benchmarks/metanode.py step --models xsimgcl,simgcl

* ``train``: the accuracy. One cell is one honest-protocol run (``recsys.training.jobs.train_artifact``: train
  on train, select on valid, test once) of a graph, model, preset, variant and λ, ended by the default
  stopping rule (or ``--max-steps``). Each cell's row (selected epoch, valid and test Recall@20 / NDCG@20,
  training seconds per epoch and to the best, the probe's gap, the valid curve with cumulative seconds) is
  added to ``metanode_train<tag>.json`` as soon as the cell ends; re-running the same command skips recorded
  cells and resumes an interrupted one from its checkpoint (same ``--threads``: the config must match). Then,
  per
  graph: λ is selected on valid per variant, the markdown tables are printed (with the valid Recall@20 each
  variant had by the training time in_batch took to its best) and valid Recall@20 against training seconds
  is plotted (``metanode_train<tag>_<graph>.png``). Graphs are those of ``benchmarks/graphs.py``.

      python benchmarks/metanode.py train --graphs sample,generated,gowalla-u20 --models xsimgcl \\
          --lambdas 0.05,0.1,0.2,0.5 --threads 1
      python benchmarks/metanode.py train --graphs sample --variants in_batch,metanode:256 \\
          --lambdas 0.2 --max-steps 40 --no-write      # a smoke run
"""

from __future__ import annotations

from recsys.runtime import configure_cpu_runtime

configure_cpu_runtime()  # before numpy and torch load

import argparse
import dataclasses
import fcntl
import itertools
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from graphs import GRAPHS, missing_source
from train import GOWALLA, RESULTS, gowalla, train_or_resume, write_rows

from recsys.artifact import read_history, read_json_object
from recsys.atomic import atomic_write_text
from recsys.config import DEFAULT_PRESET, TrainConfig, config_from_dict
from recsys.data.dataset import Dataset, load_dataset
from recsys.data.graph import NodeOrder, build_graph
from recsys.data.protocol import training_splits
from recsys.data.sampling import NegativeSampler
from recsys.models.base import EmbeddingModel
from recsys.models.build import build_model
from recsys.training.loop import epoch_batches, should_stop
from recsys.training.metanode import ContrastiveNegatives
from recsys.training.objectives import OBJECTIVES, Batch

METRIC = "recall@20"
DEFAULT_VARIANTS = (
    "in_batch,metanode:256,metanode:1024,metanode:1024:first,metanode:1024:detach,metanode:4096,full"
)
# The study's grid: K in {256, 1024, 4096}, second and first order, detached statistics.
TRAIN_VARIANTS = (
    "in_batch,full,metanode:256,metanode:1024,metanode:4096,"
    "metanode:256:first,metanode:1024:first,metanode:4096:first,metanode:1024:detach"
)
VARIANT_FLAGS = ("first", "detach", "degree")


def variant_config(cfg: TrainConfig, variant: str) -> TrainConfig:
    """``in_batch``, ``full`` or ``metanode:K[:first][:detach][:degree]`` applied to ``cfg``."""
    mode, *rest = variant.split(":")
    changes: dict[str, Any] = {"cl_negatives": mode}
    if mode == "metanode":
        if not rest or not rest[0].isdigit() or any(flag not in VARIANT_FLAGS for flag in rest[1:]):
            sys.exit(f"variant {variant!r}: expected metanode:K[:first][:detach][:degree]")
        changes["metanode_clusters"] = int(rest[0])
        changes["metanode_second_order"] = "first" not in rest
        changes["metanode_detach"] = "detach" in rest
        changes["metanode_key_weight"] = "degree" if "degree" in rest else "uniform"
    elif rest:
        sys.exit(f"variant {variant!r}: only metanode takes :K and flags")
    return dataclasses.replace(cfg, **changes).resolved()


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def step_costs(data: Dataset, model_name: str, variants: list[str], threads: int, repeats: int) -> list[dict]:
    """Loss-step, refresh and whole-step milliseconds of each variant, on the same batches and weights."""
    torch.set_num_threads(threads)
    base = TrainConfig(model=model_name, protocol="paper").resolved()
    pairs = torch.cat([data.train, data.valid], dim=1)
    pairs = NodeOrder.locality(pairs, data.num_users, data.num_items).pairs(pairs)
    adj = build_graph(pairs, data.num_users, data.num_items).adj
    rng = torch.Generator().manual_seed(0)
    batches = epoch_batches(pairs, NegativeSampler(pairs, data.num_items), base.batch_size, rng)
    rows: list[dict[str, Any]] = []
    for variant in variants:
        cfg = variant_config(base, variant)
        model = build_model(cfg, data.num_users, data.num_items)
        model.reset_parameters(torch.Generator().manual_seed(0))
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)
        negatives = ContrastiveNegatives.from_config(cfg, pairs, data.num_users, data.num_items)
        t = time.perf_counter()
        negatives.refresh(model, adj, 1)
        refresh_s = time.perf_counter() - t if cfg.cl_negatives == "metanode" else 0.0
        with torch.no_grad():
            views = model(adj, perturbed=True, generator=rng)
            view_b = views.cl if views.cl is not None else model(adj, perturbed=True, generator=rng).final
        view_a = views.final
        leaves = [x.detach().requires_grad_(True) for x in (*view_a, *view_b)]
        batch_iter = iter(batches * 2)

        def loss_step(
            leaves: list[torch.Tensor] = leaves,
            negatives: ContrastiveNegatives = negatives,
            cfg: TrainConfig = cfg,
            batch_iter: Iterator[Batch] = batch_iter,
        ) -> None:
            assert cfg.temperature is not None, "resolve the config first"
            batch = next(batch_iter)
            users, items = torch.unique(batch.users), torch.unique(batch.pos)
            loss = negatives.loss(leaves[0], leaves[2], users, 0, cfg.temperature) + negatives.loss(
                leaves[1], leaves[3], items, 1, cfg.temperature
            )
            torch.autograd.grad(loss, leaves)

        def train_step(
            model: EmbeddingModel = model,
            optimizer: torch.optim.Optimizer = optimizer,
            negatives: ContrastiveNegatives = negatives,
            cfg: TrainConfig = cfg,
            batch_iter: Iterator[Batch] = batch_iter,
        ) -> None:
            batch = next(batch_iter)
            losses = OBJECTIVES[model_name](model, adj, batch, cfg, rng, negatives=negatives)
            optimizer.zero_grad(set_to_none=True)
            losses.total.backward()
            optimizer.step()

        loss_ms = _median_ms(loss_step, repeats)
        step_ms = _median_ms(train_step, max(3, repeats // 3))
        rows.append(
            {
                "model": model_name,
                "variant": variant,
                "loss_step_ms": round(loss_ms, 1),
                "refresh_s": round(refresh_s, 2),
                "train_step_ms": round(step_ms, 1),
                "epoch_s_projected": round(step_ms / 1000 * len(batches) + refresh_s, 1),
            }
        )
        logging.info("%s", rows[-1])
    in_batch = next((r["loss_step_ms"] for r in rows if r["variant"] == "in_batch"), None)
    for r in rows:
        r["loss_vs_in_batch"] = round(r["loss_step_ms"] / in_batch, 2) if in_batch else None
    return rows


@dataclasses.dataclass(frozen=True)
class Cell:
    """One training run of the grid, and the key of its row in the results JSON."""

    graph: str
    model: str
    preset: str
    variant: str
    cl_weight: float
    max_steps: int | None  # None: the stopping rule alone ends the run

    def run_dir(self, workdir: Path) -> Path:
        """The artifact directory of this run (its checkpoints go to ``<dir>.ckpt`` until it ends)."""
        name = f"{self.variant.replace(':', '-')}-lambda{self.cl_weight:g}"
        if self.max_steps:
            name += f"-max{self.max_steps}steps"
        return workdir / "metanode-runs" / self.graph / f"{self.model}-{self.preset}" / name


CELL_FIELDS = tuple(f.name for f in dataclasses.fields(Cell))


def row_key(row: dict[str, Any]) -> tuple:
    return tuple(row.get(name) for name in CELL_FIELDS)


@dataclasses.dataclass(frozen=True)
class Graph:
    """A dataset directory and the sizes a cell's config and row need."""

    name: str
    path: Path
    num_users: int
    num_items: int
    train_pairs: int  # the honest protocol's training split


def load_graph(name: str, workdir: Path) -> Graph:
    path = GRAPHS[name](workdir)
    data = load_dataset(path)
    pairs = data.pairs(training_splits("honest")).size(1)
    return Graph(name, path, data.num_users, data.num_items, pairs)


def cell_config(cell: Cell, graph: Graph, threads: int, probe_every: int, full_below: int) -> TrainConfig:
    """The default configuration of ``cell.preset``, honest protocol, with the cell's model, variant and λ.

    Meta-node variants get the probe and ``full_below`` (0 by default: on the small graphs every side has at
    most 8,192 nodes, so the product default would silently train them with the exact loss). ``max_steps``
    caps the epochs (whole epochs, at least that many steps); without it only the stopping rule ends a run.
    """
    values = {
        "model": cell.model,
        "preset": cell.preset,
        "protocol": "honest",
        "threads": threads,
        "cl_weight": cell.cl_weight,
    }
    cfg = variant_config(config_from_dict(values), cell.variant)
    if cfg.cl_negatives == "metanode":
        cfg = dataclasses.replace(cfg, metanode_probe_every=probe_every, metanode_full_below=full_below)
    if cell.max_steps:
        steps_per_epoch = math.ceil(graph.train_pairs / cfg.batch_size)
        cfg = dataclasses.replace(cfg, epochs=math.ceil(cell.max_steps / steps_per_epoch))
    return cfg.resolved()


def run_cell(cell: Cell, graph: Graph, cfg: TrainConfig, workdir: Path) -> dict[str, Any]:
    """Train the cell through ``training.jobs.train_artifact`` (resuming its checkpoint), then read its row.

    A finished artifact of the same config is read, not retrained; everything in the row comes from the
    artifact's log and metrics, so a resumed run reports all its epochs.
    """
    out = cell.run_dir(workdir)
    train_or_resume(graph.path, cfg, out, cell)
    return cell_row(cell, graph, cfg, out)


def cell_row(cell: Cell, graph: Graph, cfg: TrainConfig, out: Path) -> dict[str, Any]:
    """The results row of a finished run: selected epoch, valid and test metrics, times, probe, curve.

    Times come from the epoch records: ``train_s`` counts training (sampling, k-means refresh, steps) and
    ``wall_s`` adds the valid evaluation; neither counts loading the data or building the graph.
    """
    metrics = read_json_object(out / "metrics.json")
    records = read_history(out)
    train_s = list(itertools.accumulate(r["train_seconds"] for r in records))
    wall_s = list(itertools.accumulate(r["seconds"] for r in records))
    best = next(i for i, r in enumerate(records) if r["epoch"] == metrics["best_epoch"])
    gaps = [r["probe_gap"] for r in records if "probe_gap" in r]
    cosines = [r["probe_grad_cos"] for r in records if "probe_grad_cos" in r]
    curve: dict[str, list[Any]] = {
        "epoch": [],
        "step": [],
        "train_s": [],
        "wall_s": [],
        "valid": [],
        "probe_gap": [],
    }
    for record, train, wall in zip(records, train_s, wall_s, strict=True):
        if "valid" in record:
            values = (record["epoch"], record["step"], round(train, 2), round(wall, 2))
            for name, value in zip(("epoch", "step", "train_s", "wall_s"), values, strict=True):
                curve[name].append(value)
            curve["valid"].append(record["valid"][METRIC])
            curve["probe_gap"].append(record.get("probe_gap"))
    metanode = cfg.cl_negatives == "metanode"
    return {
        **dataclasses.asdict(cell),
        "num_users": graph.num_users,
        "num_items": graph.num_items,
        "train_pairs": graph.train_pairs,
        "steps_per_epoch": math.ceil(graph.train_pairs / cfg.batch_size),
        "clusters": _clusters(cfg, graph) if metanode else None,
        "threads": cfg.threads,
        "cpus": os.cpu_count(),
        "best_epoch": metrics["best_epoch"],
        "best_step": records[best]["step"],
        "epochs": len(records),
        "steps": records[-1]["step"],
        "ended_by": "rule" if should_stop(cfg, records[-1]["step"], records[best]["step"]) else "cap",
        "valid_recall@20": metrics["valid"][METRIC],
        "valid_ndcg@20": metrics["valid"]["ndcg@20"],
        "test_recall@20": metrics["test"][METRIC],
        "test_ndcg@20": metrics["test"]["ndcg@20"],
        "epoch_train_s": round(statistics.median(r["train_seconds"] for r in records), 2),
        "train_s": round(train_s[-1], 1),
        "wall_s": round(wall_s[-1], 1),
        "train_s_to_best": round(train_s[best], 2),
        "wall_s_to_best": round(wall_s[best], 2),
        "probe_every": cfg.metanode_probe_every if metanode else None,
        "probe_gap": round(statistics.median(gaps), 4) if gaps else None,  # over the probed epochs
        "probe_grad_cos": round(statistics.median(cosines), 4) if cosines else None,
        "curve": curve,
        "config": cfg.to_dict(),
    }


def _clusters(cfg: TrainConfig, graph: Graph) -> dict[str, int | str]:
    """K per side as trained: clipped to the side's size, or ``exact`` at or below ``full_below`` nodes."""
    sides = {"users": graph.num_users, "items": graph.num_items}
    return {
        side: "exact" if n <= cfg.metanode_full_below else min(cfg.metanode_clusters, n)
        for side, n in sides.items()
    }


def load_rows(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text())["rows"] if path.is_file() else []


def record_row(path: Path, row: dict[str, Any]) -> None:
    """Add or replace ``row`` (by its cell) in the results JSON, atomically and under a lock.

    The lock (on the results directory) lets several invocations, e.g. one per graph, share one file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        rows = [r for r in load_rows(path) if row_key(r) != row_key(row)] + [row]
        lines = ",\n".join(f"    {json.dumps(r)}" for r in rows)  # one line per cell: readable diffs
        atomic_write_text(path, f'{{\n  "cpus": {os.cpu_count()},\n  "rows": [\n{lines}\n  ]\n}}\n')
    finally:
        os.close(fd)  # releases the lock


def select_lambdas(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """Per (graph, model, preset, variant), the row of the λ with the best valid Recall@20 (first on ties)."""
    best: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = (row["graph"], row["model"], row["preset"], row["variant"])
        if key not in best or row["valid_recall@20"] > best[key]["valid_recall@20"]:
            best[key] = row
    return best


def value_at(xs: list[float], ys: list[float], x: float) -> float | None:
    """The best ``y`` reached by ``x`` (running maximum, linear between evaluations); ``None`` before any."""
    running = list(itertools.accumulate(ys, max))
    if not xs or x < xs[0]:
        return None
    for i in range(1, len(xs)):
        if x <= xs[i]:
            share = (x - xs[i - 1]) / (xs[i] - xs[i - 1]) if xs[i] > xs[i - 1] else 1.0
            return running[i - 1] + share * (running[i] - running[i - 1])
    return running[-1]  # the run ended earlier: its selected weights are what it has


def time_to_reach(xs: list[float], ys: list[float], target: float) -> float | None:
    """The first ``x`` where ``y`` reaches ``target``, linear between evaluations; ``None``: never."""
    running = list(itertools.accumulate(ys, max))
    for i, (x, y) in enumerate(zip(xs, running, strict=True)):
        if y >= target:
            if i == 0:
                return x
            return xs[i - 1] + (x - xs[i - 1]) * (target - running[i - 1]) / (y - running[i - 1])
    return None


def versus_in_batch(selected: dict[tuple, dict[str, Any]]) -> dict[tuple, dict[str, float | None]]:
    """Each selected variant against in_batch's selected run of the same graph, model and preset.

    ``at_epoch``: the variant's best valid Recall@20 by in_batch's best epoch (equal epochs);
    ``at_seconds``: the same by the training seconds in_batch took to its best (equal time; linear between
    evaluations); ``s_to_reach``: the training seconds the variant took to reach in_batch's best valid
    Recall@20 (``None``: never).
    """
    out: dict[tuple, dict[str, float | None]] = {}
    for key, row in selected.items():
        base = selected.get((*key[:3], "in_batch"))
        if base is None:
            continue
        curve, base_curve = row["curve"], base["curve"]
        base_time = base_curve["train_s"][base_curve["epoch"].index(base["best_epoch"])]
        values = {
            "at_epoch": value_at(curve["epoch"], curve["valid"], base["best_epoch"]),
            "at_seconds": value_at(curve["train_s"], curve["valid"], base_time),
            "s_to_reach": time_to_reach(curve["train_s"], curve["valid"], base["valid_recall@20"]),
        }
        out[key] = {k: None if v is None else round(v, 4) for k, v in values.items()}
    return out


def markdown_tables(rows: list[dict[str, Any]], lambdas: list[float]) -> str:
    """Per graph: the variants at their selected λ (test numbers of that λ), then valid R@20 per λ."""
    selected = select_lambdas(rows)
    versus = versus_in_batch(selected)
    text = []
    for graph in dict.fromkeys(r["graph"] for r in rows):
        first = next(r for r in rows if r["graph"] == graph)
        cap = f"at most {first['max_steps']:,} steps" if first["max_steps"] else "the default stopping rule"
        text.append(
            f"\n**{graph}**: {first['num_users']:,} users, {first['num_items']:,} items, "
            f"{first['train_pairs']:,} training pairs ({first['steps_per_epoch']} steps per epoch); honest "
            f"protocol, {cap}; threads: {first['threads']} of {first['cpus']} cores. λ selected on valid "
            "Recall@20; test is the selected run's, evaluated once. Seconds are training seconds "
            "(evaluation excluded); the last three columns compare with in_batch's selected run.\n"
        )
        text.append(
            "| model | variant | K users / items | λ | best epoch / epochs | valid R@20 | test R@20 "
            "| test NDCG@20 | s / epoch | s to best | probe gap (median) "
            "| valid R@20 at in_batch's best epoch | valid R@20 at in_batch's time to best "
            "| s to in_batch's best |"
        )
        text.append("|" + " --- |" * 14)
        for key, r in selected.items():
            if key[0] != graph:
                continue
            k = "" if r["clusters"] is None else f"{r['clusters']['users']} / {r['clusters']['items']}"
            vs = versus.get(key, {})
            cells = [
                f"{r['model']} ({r['preset']})",
                r["variant"],
                k,
                f"{r['cl_weight']:g}",
                f"{r['best_epoch']} / {r['epochs']}" + (" (cap)" if r["ended_by"] == "cap" else ""),
                f"{r['valid_recall@20']:.4f}",
                f"{r['test_recall@20']:.4f}",
                f"{r['test_ndcg@20']:.4f}",
                _seconds(r["epoch_train_s"]),
                _seconds(r["train_s_to_best"]),
                _fmt(r["probe_gap"]),
                _fmt(vs.get("at_epoch")),
                "before epoch 1"
                if key in versus and vs["at_seconds"] is None
                else _fmt(vs.get("at_seconds")),
                "never" if key in versus and vs["s_to_reach"] is None else _seconds(vs.get("s_to_reach")),
            ]
            text.append("| " + " | ".join(cells) + " |")
        text.append("\n| model | variant | " + " | ".join(f"λ = {lam:g}" for lam in lambdas) + " |")
        text.append("|" + " --- |" * (2 + len(lambdas)))
        for key, chosen in selected.items():
            if key[0] != graph:
                continue
            by_lambda = {
                r["cl_weight"]: r for r in rows if (r["graph"], r["model"], r["preset"], r["variant"]) == key
            }
            cells = [f"{key[1]} ({key[2]})", key[3]]
            for lam in lambdas:
                run = by_lambda.get(lam)
                value = "" if run is None else f"{run['valid_recall@20']:.4f}"
                cells.append(f"**{value}**" if run is chosen else value)
            text.append("| " + " | ".join(cells) + " |")
    return "\n".join(text)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def plot(rows: list[dict[str, Any]], graph: str, path: Path) -> None:
    """Valid Recall@20 against cumulative training seconds, each variant at its selected λ, per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    selected = {k: r for k, r in select_lambdas(rows).items() if k[0] == graph}
    panels = list(dict.fromkeys(k[1:3] for k in selected))
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    for ax, (model, preset) in zip(axes[0], panels, strict=True):
        for (_, m, p, variant), r in selected.items():
            if (m, p) != (model, preset):
                continue
            curve = r["curve"]
            line = ax.plot(curve["train_s"], curve["valid"], label=f"{variant} (λ={r['cl_weight']:g})")
            ax.plot(r["train_s_to_best"], r["valid_recall@20"], marker="o", color=line[0].get_color())
            if variant == "in_batch":
                ax.axvline(r["train_s_to_best"], color="grey", linestyle=":", linewidth=1)
        ax.set(
            title=f"{graph}, {model} ({preset}): valid Recall@20, honest protocol",
            xlabel="training seconds (cumulative; evaluation excluded)",
            ylabel="valid Recall@20",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def train_grid(opts: argparse.Namespace) -> None:
    """Run (or resume, or read back) every cell of the grid, then print the tables and plot."""
    graphs = [g for g in opts.graphs.split(",") if g]
    for name in graphs:
        if (why := missing_source(name)) is not None:
            sys.exit(why)
    lambdas = [float(x) for x in opts.lambdas.split(",")]
    variants = (opts.variants or TRAIN_VARIANTS).split(",")
    out = RESULTS / f"metanode_train{opts.tag}.json"
    done = {row_key(r): r for r in load_rows(out)}
    opts.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in graphs:
        graph = load_graph(name, opts.workdir)
        cells = [
            Cell(name, model, preset, variant, lam, opts.max_steps)
            for model in opts.models.split(",")
            for preset in opts.presets.split(",")
            for variant in variants
            for lam in lambdas
        ]
        for cell in cells:
            cfg = cell_config(cell, graph, opts.threads, opts.probe_every, opts.full_below)
            earlier = done.get(dataclasses.astuple(cell))
            if earlier is not None and earlier["config"] == cfg.to_dict():
                rows.append(earlier)
                continue
            if earlier is not None:
                logging.warning("%s: recorded with another config; training it again", cell)
            row = run_cell(cell, graph, cfg, opts.workdir)
            if not opts.no_write:
                record_row(out, row)
            rows.append(row)
        if not opts.no_write:
            plot(
                [r for r in rows if r["graph"] == name],
                name,
                RESULTS / f"metanode_train{opts.tag}_{name}.png",
            )
    print(markdown_tables(rows, lambdas))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["step", "train"])
    parser.add_argument("--models", default="xsimgcl,simgcl")
    parser.add_argument(
        "--variants",
        help="in_batch, full, metanode:K[:first][:detach][:degree]; default: "
        f"step {DEFAULT_VARIANTS}; train {TRAIN_VARIANTS}",
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: step 2; train 1, steadier beside other jobs)"
    )
    parser.add_argument("--repeats", type=int, default=15, help="step: timed loss steps per variant")
    parser.add_argument(
        "--graphs",
        default="sample,generated,gowalla-u20",
        help="train: comma-separated, from " + ", ".join(GRAPHS),
    )
    parser.add_argument("--presets", default=DEFAULT_PRESET, help="train: comma-separated presets")
    parser.add_argument(
        "--lambdas", default="0.1,0.2,0.5", help="train: λ grid (cl_weight), selected on valid"
    )
    parser.add_argument(
        "--max-steps", type=int, help="train: cap every run (whole epochs; default: the stopping rule alone)"
    )
    parser.add_argument(
        "--probe-every",
        type=int,
        default=500,
        help="train: meta-node probe every N steps per side (its exact-loss cost is in the seconds; 0: off)",
    )
    parser.add_argument(
        "--full-below",
        type=int,
        default=0,
        help="train: metanode_full_below of meta-node runs (0: every side through meta-nodes)",
    )
    parser.add_argument("--tag", default="", help="suffix of the result file names")
    parser.add_argument("--no-write", action="store_true", help="print only; write nothing under results/")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "recsys-bench",
        help="datasets, and train's runs (<workdir>/metanode-runs: artifacts and checkpoints)",
    )
    opts = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    RESULTS.mkdir(exist_ok=True)
    if opts.mode == "train":
        opts.threads = opts.threads or 1
        train_grid(opts)
        return
    if not (GOWALLA / "train.txt").is_file():
        sys.exit(f"gowalla not found at {GOWALLA}")
    opts.threads = opts.threads or 2
    data = gowalla(opts.workdir)
    models, variants = opts.models.split(","), (opts.variants or DEFAULT_VARIANTS).split(",")
    rows = [r for m in models for r in step_costs(data, m, variants, opts.threads, opts.repeats)]
    cols = ["model", "variant", "loss_step_ms", "loss_vs_in_batch", "refresh_s", "train_step_ms"]
    cols.append("epoch_s_projected")
    print(f"\ngowalla, B = 2048, {opts.threads} threads, medians")
    print("".join(f"{c:>18}" for c in cols))
    for r in rows:
        print("".join(f"{r.get(c, '')!s:>18}" for c in cols))
    if not opts.no_write:
        write_rows(RESULTS / f"metanode_step{opts.tag}.json", opts.threads, rows)


if __name__ == "__main__":
    main()
