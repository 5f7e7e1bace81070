"""Training benchmark on gowalla (../shared/data/gowalla, preset split).

Two modes, each printing a table and writing JSON under benchmarks/results/:

* ``speed`` (default): one full epoch per model (paper protocol data: train ∪ valid, 396 batches of
  2048), split into sampling / propagation / loss / backward / optimiser step, plus the propagation's share
  against a bare sparse matmul forward + backward of the same layers.

      python benchmarks/train.py speed --models xsimgcl,simgcl,lightgcn,mf --threads 2

* ``accuracy``: trains each model under a protocol and reports test Recall@20 / NDCG@20 and wall time.

      python benchmarks/train.py accuracy --models xsimgcl --protocol paper --epochs 8
      python benchmarks/train.py accuracy --models xsimgcl,simgcl --protocol honest --epochs 40
"""

from __future__ import annotations

from recsys.runtime import configure_cpu_runtime

configure_cpu_runtime()  # before numpy and torch load

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from pipelines import IngestConfig, ingest
from pipelines.readers import LogSpec
from recsys.config import TrainConfig
from recsys.dataset import Dataset, load_dataset
from recsys.graph import NodeOrder, build_graph, propagate
from recsys.models import build_model
from recsys.objectives import OBJECTIVES
from recsys.sampling import NegativeSampler
from recsys.train import epoch_batches, fit

GOWALLA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gowalla"
RESULTS = Path(__file__).resolve().parent / "results"


def gowalla(workdir: Path) -> Dataset:
    """Ingest gowalla once (cached in ``workdir``) and load it."""
    out = workdir / "gowalla"
    if not (out / "meta.json").exists():
        ingest(
            IngestConfig(
                out=out,
                spec=LogSpec("lightgcn"),
                train=GOWALLA / "train.txt",
                test=GOWALLA / "test.txt",
                split="preset",
                force=True,
            )
        )
    return load_dataset(out)


class _Clock:
    """Accumulates wall seconds per phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - since
        return now


def speed(data: Dataset, model_name: str, threads: int) -> dict[str, float | str | int]:
    """One full epoch of ``model_name`` with a per-phase breakdown (seconds)."""
    torch.set_num_threads(threads)
    cfg = TrainConfig(model=model_name, protocol="paper").resolved()
    pairs = torch.cat([data.train, data.valid], dim=1)
    pairs = NodeOrder.locality(pairs, data.num_users, data.num_items).pairs(pairs)  # as fit() does
    graph = build_graph(pairs, data.num_users, data.num_items)
    adj = None if model_name == "mf" else graph.adj
    model = build_model(cfg, data.num_users, data.num_items)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)
    sampler = NegativeSampler(pairs, data.num_items)
    rng = torch.Generator().manual_seed(0)
    objective = OBJECTIVES[model_name]
    clock = _Clock()
    # Propagation = time inside model.forward, measured with hooks so the objective stays untouched.
    starts: list[float] = []

    def before(*_: object) -> None:
        starts.append(time.perf_counter())

    def after(*_: object) -> None:  # must return None: a forward hook's return value replaces the output
        clock.add("propagation", starts.pop())

    model.register_forward_pre_hook(before)
    model.register_forward_hook(after)

    t = time.perf_counter()
    batches = epoch_batches(pairs, sampler, cfg.batch_size, rng)
    t = clock.add("sampling", t)
    for batch in batches:
        losses = objective(model, adj, batch, cfg, rng)
        t = clock.add("objective", t)
        optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        t = clock.add("backward", t)
        optimizer.step()
        t = clock.add("step", t)
    s = clock.seconds
    propagation = s.get("propagation", 0.0)
    row: dict[str, float | str | int] = {
        "model": model_name,
        "batches": len(batches),
        "epoch_s": round(sum(v for k, v in s.items() if k != "propagation"), 2),
        "sampling_s": round(s["sampling"], 2),
        "propagation_s": round(propagation, 2),
        "loss_s": round(s["objective"] - propagation, 2),
        "backward_s": round(s["backward"], 2),
        "step_s": round(s["step"], 2),
    }
    if adj is not None:
        row["bare_spmm_fwd_bwd_ms"] = round(bare_spmm_ms(adj, cfg.num_layers, cfg.embedding_dim), 1)
    return row


def bare_spmm_ms(adj: torch.Tensor, num_layers: int, dim: int, repeats: int = 5) -> float:
    """Median ms of ``num_layers`` propagations forward + backward, nothing else."""
    x = torch.randn(adj.size(0), dim, requires_grad=True)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        y = x
        for _ in range(num_layers):
            y = propagate(adj, y)
        y.backward(torch.ones_like(y))
        times.append((time.perf_counter() - t) * 1000)
        x.grad = None
    return statistics.median(times)


def accuracy(data: Dataset, model_name: str, protocol: str, epochs: int, threads: int, patience: int) -> dict:
    """Train under ``protocol`` and report the selected epoch's test metrics."""
    cfg = TrainConfig(model=model_name, protocol=protocol, epochs=epochs, patience=patience, threads=threads)
    t = time.perf_counter()
    result = fit(data, cfg, progress=False)
    return {
        "model": model_name,
        "protocol": protocol,
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "test_recall@20": result.test["recall@20"],
        "test_ndcg@20": result.test["ndcg@20"],
        "wall_s": round(time.perf_counter() - t, 1),
        "s_per_epoch": round(statistics.median(r["train_seconds"] for r in result.history), 1),
        "history": result.history,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["speed", "accuracy"], nargs="?", default="speed")
    parser.add_argument("--models", default="xsimgcl,simgcl,lightgcn,mf")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--protocol", default="paper", choices=["paper", "honest"])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--tag", default="", help="suffix of the JSON file name")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "recsys-bench")
    opts = parser.parse_args()
    if not (GOWALLA / "train.txt").is_file():
        sys.exit(f"gowalla not found at {GOWALLA}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    data = gowalla(opts.workdir)
    models = opts.models.split(",")
    RESULTS.mkdir(exist_ok=True)
    if opts.mode == "speed":
        rows = [speed(data, m, opts.threads) for m in models]
        cols = [
            "model",
            "epoch_s",
            "sampling_s",
            "propagation_s",
            "loss_s",
            "backward_s",
            "step_s",
            "bare_spmm_fwd_bwd_ms",
        ]
        print(f"\ngowalla, one epoch ({rows[0]['batches']} batches of 2048), {opts.threads} threads")
        print("".join(f"{c:>22}" for c in cols))
        for r in rows:
            print("".join(f"{r.get(c, '-')!s:>22}" for c in cols))
        out = RESULTS / f"train_speed{opts.tag}.json"
    else:
        rows = [accuracy(data, m, opts.protocol, opts.epochs, opts.threads, opts.patience) for m in models]
        print(f"\ngowalla test, {opts.protocol} protocol, up to {opts.epochs} epochs")
        print(
            f"{'model':<10}{'epochs':>8}{'best':>6}{'Recall@20':>11}{'NDCG@20':>9}{'s/epoch':>9}{'wall s':>8}"
        )
        for r in rows:
            print(
                f"{r['model']:<10}{r['epochs_run']:>8}{r['best_epoch']:>6}{r['test_recall@20']:>11.4f}"
                f"{r['test_ndcg@20']:>9.4f}{r['s_per_epoch']:>9}{r['wall_s']:>8}"
            )
        out = RESULTS / f"train_accuracy_{opts.protocol}{opts.tag}.json"
    out.write_text(
        json.dumps({"cpus": os.cpu_count(), "threads": opts.threads, "rows": rows}, indent=2) + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
