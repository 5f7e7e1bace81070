"""Time to accuracy on gowalla: training wall time, in this machine's floor epochs, to a test Recall@20.

For each recipe (a ``--preset``), XSimGCL trains under the paper protocol (train ∪ valid, test after every
epoch, as the authors report) and the benchmark records, per epoch, the cumulative training wall time
(evaluation excluded) and test Recall@20 / NDCG@20. In the same run it times this machine's floor and the
authors' operations, so the figures are ratios that carry from one machine to another:

* **floor epoch**: 396 × 4 bare ``torch.sparse.mm`` of gowalla's normalised adjacency (1.62M non-zeros,
  d = 64, the training labelling): the sparse products an epoch of 2-layer steps cannot avoid (2 layers
  forward + backward). Timed before the recipes and again after every epoch: the machine's memory bandwidth
  drifts within minutes, so each epoch is counted in the floor timed next to it (an epoch restored from a
  checkpoint, in the median floor).
* **authors' operations**: the same step written with SELFRec's operations (``benchmarks/train.py``'s
  SELFRec-style reference), timed on a few batches and projected to an epoch. The reference preset
  matches SELFRec epoch for epoch, so the authors' time to the target is that epoch times the epochs the
  reference recipe needed.

``--protocol honest`` instead trains on train only, records valid Recall@20 after every epoch, stops by
the stopping rule (or ``--epochs``) and tests the selected weights once.

    python benchmarks/time_to_accuracy.py --recipes fast,reference --epochs fast=5,reference=8
    python benchmarks/time_to_accuracy.py --protocol honest --recipes fast --epochs fast=200 --resume

Results: ``benchmarks/results/time_to_accuracy[_honest].json`` and ``.png`` (recall against wall time).
Checkpoints go to ``--workdir``; ``--resume`` continues interrupted recipes.
"""

from __future__ import annotations

from recsys.runtime import configure_cpu_runtime

configure_cpu_runtime()  # before numpy and torch load

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from train import GOWALLA, RESULTS, gowalla, reference_epoch_s, write_rows

from recsys.config import config_from_dict
from recsys.data.dataset import Dataset
from recsys.data.graph import NodeOrder, build_graph
from recsys.data.protocol import selection_split
from recsys.training.loop import fit
from recsys.training.run import CHECKPOINT_FILE

FLOOR_PRODUCTS = 4  # sparse products per 2-layer step: 2 forward, 2 backward
BATCHES = 396  # gowalla's steps per epoch at batch 2048 (810,128 train ∪ valid pairs)


class Floor:
    """This machine's floor epoch, timeable at any moment of the run (one graph, one input, built once)."""

    def __init__(self, data: Dataset, threads: int) -> None:
        torch.set_num_threads(threads)
        pairs = torch.cat([data.train, data.valid], dim=1)
        pairs = NodeOrder.locality(pairs, data.num_users, data.num_items).pairs(pairs)
        self.adj = build_graph(pairs, data.num_users, data.num_items).adj
        self.x = torch.randn(self.adj.size(0), 64)
        self.spmm_ms: list[float] = []

    def epoch_s(self, repeats: int = 11) -> float:
        """Median seconds of one bare CSR ``sparse.mm`` now, times the products of an epoch."""
        times = []
        for _ in range(repeats + 1):
            tic = time.perf_counter()
            torch.sparse.mm(self.adj, self.x, "sum")
            times.append(time.perf_counter() - tic)
        spmm = statistics.median(times[1:])
        self.spmm_ms.append(round(spmm * 1000, 2))
        return spmm * FLOOR_PRODUCTS * BATCHES

    def median_epoch_s(self) -> float:
        """The floor epoch over every timing so far."""
        return statistics.median(self.spmm_ms) / 1000 * FLOOR_PRODUCTS * BATCHES


def run_recipe(
    data: Dataset,
    recipe: str,
    protocol: str,
    epochs: int,
    threads: int,
    workdir: Path,
    resume: bool,
    floor: Floor,
) -> dict[str, Any]:
    """Train one recipe; per epoch, the training seconds (also in floor epochs) and the split's metrics."""
    cfg = config_from_dict(
        {"model": "xsimgcl", "preset": recipe, "protocol": protocol, "epochs": epochs, "threads": threads}
    )
    if protocol == "paper":  # a fixed number of epochs: the curve, not a stopping point, is measured
        cfg = config_from_dict({**cfg.to_dict(), "min_steps": 10**12})
    checkpoint = workdir / f"{recipe}-{protocol}"
    floors: dict[int, float] = {}  # epoch -> the floor epoch timed right after it
    result = fit(
        data,
        cfg,
        checkpoint_dir=checkpoint,
        resume=resume and (checkpoint / CHECKPOINT_FILE).is_file(),
        progress=True,  # a bar on a terminal, a line every 30 s in a log (recsys.progress)
        callback=lambda record: floors.__setitem__(record["epoch"], floor.epoch_s()),
    )
    split = selection_split(protocol)
    curve, wall, in_floors = [], 0.0, 0.0
    for record in result.history:
        wall += record["train_seconds"]
        floor_s = floors.get(record["epoch"], floor.median_epoch_s())
        in_floors += record["train_seconds"] / floor_s
        curve.append(
            {
                "epoch": record["epoch"],
                "train_s": round(wall, 2),
                "epoch_train_s": record["train_seconds"],
                "floor_epoch_s": round(floor_s, 2),
                "floor_epochs": round(in_floors, 3),
                "recall@20": record[split]["recall@20"],
                "ndcg@20": record[split]["ndcg@20"],
            }
        )
    return {
        "recipe": recipe,
        "protocol": protocol,
        "config": cfg.to_dict(),
        "split": split,
        "curve": curve,
        "best_epoch": result.best_epoch,
        "test": result.test,
        "median_epoch_s": round(statistics.median(r["epoch_train_s"] for r in curve), 2),
        "x_floor": round(statistics.median(r["epoch_train_s"] / r["floor_epoch_s"] for r in curve), 2),
    }


def time_to(curve: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The first epoch whose Recall@20 reaches ``target``, with the seconds and floor epochs spent so far."""
    hit = next((c for c in curve if c["recall@20"] >= target), None)
    return None if hit is None else {k: hit[k] for k in ("epoch", "train_s", "floor_epochs")}


def plot(rows: list[dict[str, Any]], target: float, out: Path) -> None:
    """Recall@20 against training time (in floor epochs), one line per recipe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for row in rows:
        xs = [c["floor_epochs"] for c in row["curve"]]
        ax.plot(xs, [c["recall@20"] for c in row["curve"]], marker="o", label=row["recipe"])
    if rows and rows[0]["protocol"] == "paper":
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target}")
    ax.set_xlabel("training time (floor epochs of this machine)")
    ax.set_ylabel(f"{rows[0]['split'] if rows else ''} Recall@20")
    ax.set_title(f"XSimGCL on gowalla, {rows[0]['protocol'] if rows else ''} protocol")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipes", default="fast,reference", help="comma-separated presets")
    parser.add_argument(
        "--epochs", default="fast=5,reference=8", help="epoch cap per recipe, e.g. fast=5,reference=8"
    )
    parser.add_argument("--protocol", default="paper", choices=["paper", "honest"])
    parser.add_argument(
        "--target", type=float, default=0.1830, help="test Recall@20 to reach (paper protocol)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--reference-batches", type=int, default=20, help="steps timed for the authors' operations (0: skip)"
    )
    parser.add_argument("--resume", action="store_true", help="continue recipes from their checkpoints")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "recsys-bench")
    opts = parser.parse_args()
    if not (GOWALLA / "train.txt").is_file():
        sys.exit(f"gowalla not found at {GOWALLA}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    caps = dict(item.split("=") for item in opts.epochs.split(","))
    data = gowalla(opts.workdir)
    floor = Floor(data, opts.threads)
    floor.epoch_s()
    authors_epoch_s = (
        reference_epoch_s(data, "xsimgcl", opts.threads, opts.reference_batches)
        if opts.reference_batches
        else None
    )
    rows = []
    for recipe in opts.recipes.split(","):
        epochs = int(caps.get(recipe, 8))
        rows.append(
            run_recipe(data, recipe, opts.protocol, epochs, opts.threads, opts.workdir, opts.resume, floor)
        )
        logging.info("%s: %s", recipe, rows[-1]["curve"][-1])
    floor_s = floor.median_epoch_s()
    reference = next((r for r in rows if r["recipe"] == "reference"), None)
    reference_hit = time_to(reference["curve"], opts.target) if reference else None
    print(f"\nXSimGCL on gowalla, {opts.protocol} protocol, {opts.threads} threads")
    print(
        f"floor: one sparse.mm {min(floor.spmm_ms)}-{max(floor.spmm_ms)} ms over {len(floor.spmm_ms)} "
        f"timings (median {statistics.median(floor.spmm_ms)}); floor epoch = {BATCHES} x {FLOOR_PRODUCTS} "
        f"products = {floor_s:.1f} s (median); each epoch is counted in the floor timed right after it"
    )
    if authors_epoch_s:
        print(
            f"authors' operations: {authors_epoch_s:.1f} s per epoch "
            f"= {authors_epoch_s / floor_s:.2f} floor epochs"
        )
    head = f"{'recipe':<11}{'epochs':>7}{'s/epoch':>9}{'x floor':>9}{'best R@20':>11}{'to target':>26}"
    print(head)
    for row in rows:
        hit = time_to(row["curve"], opts.target) if opts.protocol == "paper" else None
        row["time_to_target"] = hit
        best = max(c["recall@20"] for c in row["curve"])
        reached = (
            f"not in {len(row['curve'])} epochs"
            if hit is None
            else f"epoch {hit['epoch']}, {hit['floor_epochs']:.2f} floor ep."
        )
        print(
            f"{row['recipe']:<11}{len(row['curve']):>7}{row['median_epoch_s']:>9.1f}"
            f"{row['x_floor']:>9.2f}{best:>11.4f}  {reached:>24}"
        )
    summary: dict[str, Any] = {
        "floor_spmm_ms": floor.spmm_ms,
        "floor_epoch_s": floor_s,
        "target": opts.target,
    }
    if authors_epoch_s and reference_hit:
        authors_s = authors_epoch_s * reference_hit["epoch"]
        summary["authors_time_to_target"] = {
            "epochs": reference_hit["epoch"],
            "seconds": round(authors_s, 1),
            "floor_epochs": round(authors_s / floor_s, 2),
        }
        print(
            f"authors' operations to target: {reference_hit['epoch']} epochs x {authors_epoch_s:.1f} s = "
            f"{authors_s / floor_s:.2f} floor epochs"
        )
    summary["authors_epoch_s"] = authors_epoch_s
    tag = "" if opts.protocol == "paper" else "_honest"
    RESULTS.mkdir(exist_ok=True)
    write_rows(RESULTS / f"time_to_accuracy{tag}.json", opts.threads, [summary, *rows])
    plot(rows, opts.target, RESULTS / f"time_to_accuracy{tag}.png")
    print(f"wrote {RESULTS / f'time_to_accuracy{tag}.png'}")


if __name__ == "__main__":
    main()
