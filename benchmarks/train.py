"""Training benchmark on gowalla (../shared/data/gowalla, preset split).

Two modes, each printing a table and writing JSON under benchmarks/results/:

* ``speed`` (default): one full epoch per model (paper protocol data: train ∪ valid, 396 batches of
  2048), split into sampling / propagation / noise / loss / backward / optimiser step, plus a bare sparse
  matmul forward + backward of the same layers, and the same step computed with the operations of the
  authors' SELFRec code (COO sparse.mm, rand_like noise, stacked mean), timed on a few batches here and
  projected to an epoch: the same-hardware reference. For SimGCL/XSimGCL it also times the in-batch
  InfoNCE's dense products bare (``x_floor_bound``: the least ratio to the floor an exact step can have).

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
from typing import Any

import torch
import torch.nn.functional as F

from pipelines import IngestConfig, ingest
from pipelines.readers import LogSpec
from recsys.artifact import read_json_object
from recsys.config import TrainConfig, config_from_dict
from recsys.data.dataset import Dataset, load_dataset
from recsys.data.graph import NodeOrder, build_graph, propagate
from recsys.data.sampling import NegativeSampler
from recsys.errors import InputError
from recsys.models import lightgcn
from recsys.models.build import build_model
from recsys.models.registry import MODELS
from recsys.training.jobs import train_artifact
from recsys.training.loop import epoch_batches, fit
from recsys.training.losses import bpr_loss, l2_reg
from recsys.training.objectives import OBJECTIVES, Batch
from recsys.training.run import CHECKPOINT_FILE

GOWALLA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gowalla"
RESULTS = Path(__file__).resolve().parent / "results"
_CHUNK_STEPS = 33  # steps between two timings of the floor (12 per gowalla epoch)


def write_rows(out: Path, threads: int, rows: list[dict]) -> None:
    """A benchmark's rows as JSON, with the machine's core count and the threads used."""
    out.write_text(json.dumps({"cpus": os.cpu_count(), "threads": threads, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


def merged_with_earlier(path: Path, rows: list[dict], key: tuple[str, ...]) -> list[dict]:
    """This run's rows plus earlier runs' rows with other ``key`` values, so cases can run one by one."""
    if not path.is_file():
        return rows
    fresh = {tuple(r.get(k) for k in key) for r in rows}
    earlier = [r for r in json.loads(path.read_text())["rows"] if tuple(r.get(k) for k in key) not in fresh]
    return earlier + rows


def trained_with(out: Path, cfg: TrainConfig) -> bool:
    """Whether ``out`` holds a finished artifact trained with ``cfg`` (compared resolved)."""
    if not (out / "metrics.json").is_file():
        return False
    return read_json_object(out / "config.json").get("config") == cfg.resolved().to_dict()


def train_or_resume(dataset: Path, cfg: TrainConfig, out: Path, what: object) -> None:
    """Train ``cfg`` into the artifact ``out`` unless :func:`trained_with`; an interrupted run resumes.

    ``what`` names the run in the log line ("training <what> from <out>").

    The benchmarks' runs are long, so each checkpoints (``<out>.ckpt``) and a re-run continues it. A
    checkpoint written with another config (``--threads`` included) ends the benchmark with what to do.
    """
    if trained_with(out, cfg):
        return
    resume = (Path(f"{out}.ckpt") / CHECKPOINT_FILE).is_file()
    logging.info("%s %s from %s", "resuming" if resume else "training", what, out)
    try:
        train_artifact(dataset, cfg, out, resume=resume, force=True, progress=False)
    except InputError as exc:
        if not resume:
            raise
        sys.exit(f"{exc}\nrun with the options it started with (--threads ...), or delete {out}.ckpt")


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
        self._wrapped: list[tuple[object, str, object]] = []

    def add(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - since
        return now

    def wrap(self, module: object, name: str, phase: str) -> None:
        """Count the time spent in ``module.name`` (a function the model calls) as ``phase``."""
        inner = getattr(module, name)

        def timed(*args: object, **kwargs: object) -> object:
            t = time.perf_counter()
            out = inner(*args, **kwargs)
            self.add(phase, t)
            return out

        self._wrapped.append((module, name, inner))
        setattr(module, name, timed)

    def unwrap(self) -> None:
        """Put back what :meth:`wrap` replaced."""
        for module, name, inner in self._wrapped:
            setattr(module, name, inner)


def speed(data: Dataset, model_name: str, threads: int) -> dict[str, Any]:
    """One full epoch of ``model_name`` with a per-phase breakdown (seconds), against the floor.

    Phases: sampling (shuffle + negatives), propagation (every sparse product of the forward passes),
    noise (SimGCL/XSimGCL perturbations), loss (the rest of the objective: gathers, BPR, InfoNCE, L2),
    backward, and the optimiser step. ``x_floor``: the median over chunks of the epoch of a step's cost
    over the floor step (``bare_spmm_fwd_bwd_ms``: the layers' bare sparse products, forward and
    backward) timed right after the chunk.
    """
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
    clock.wrap(lightgcn, "propagate", "propagation")
    clock.wrap(lightgcn, "uniform_noise", "noise")
    clock.wrap(lightgcn, "perturb", "noise")
    # The floor is timed between chunks of the epoch, so each chunk's cost per step has a floor measured
    # next to it: the machine's memory bandwidth drifts within minutes, and a floor timed once before or
    # after the epoch moved the ratio by up to a third here.
    chunk_ratios: list[float] = []
    floor_ms: list[float] = []
    # The contrastive term has a floor of its own: the in-batch InfoNCE's logits are a dense product per side,
    # and their backward two more. Those products are the same mathematics whatever the implementation, so
    # spmm + products bounds from below what any exact step can cost.
    contrastive = MODELS[model_name].contrastive
    products_ms: list[float] = []
    product_ratios: list[float] = []
    try:
        t = time.perf_counter()
        batches = epoch_batches(pairs, sampler, cfg.batch_size, rng)
        t = clock.add("sampling", t)
        for start in range(0, len(batches), _CHUNK_STEPS):
            chunk = batches[start : start + _CHUNK_STEPS]
            before = _step_seconds(clock)
            for batch in chunk:
                losses = objective(model, adj, batch, cfg, rng)
                t = clock.add("objective", t)
                optimizer.zero_grad(set_to_none=True)
                losses.total.backward()
                t = clock.add("backward", t)
                optimizer.step()
                t = clock.add("step", t)
            if adj is not None:
                step_ms = (_step_seconds(clock) - before) * 1000 / len(chunk)
                floor_ms.append(bare_spmm_ms(adj, cfg.num_layers, cfg.embedding_dim, repeats=3))
                chunk_ratios.append(step_ms / floor_ms[-1])
                if contrastive:
                    sides = [(b.users.unique().numel(), b.pos.unique().numel()) for b in chunk]
                    products_ms.append(bare_cl_products_ms(sides, cfg.embedding_dim, repeats=3))
                    product_ratios.append(step_ms / (floor_ms[-1] + products_ms[-1]))
                t = time.perf_counter()
    finally:
        clock.unwrap()
    s = clock.seconds
    inside = s.get("propagation", 0.0) + s.get("noise", 0.0)
    row: dict[str, Any] = {
        "model": model_name,
        "batches": len(batches),
        "epoch_s": round(sum(s[k] for k in ("sampling", "objective", "backward", "step")), 2),
        "sampling_s": round(s["sampling"], 2),
        "propagation_s": round(s.get("propagation", 0.0), 2),
        "noise_s": round(s.get("noise", 0.0), 2),
        "loss_s": round(s["objective"] - inside, 2),
        "backward_s": round(s["backward"], 2),
        "step_s": round(s["step"], 2),
    }
    if adj is not None:
        row["bare_spmm_fwd_bwd_ms"] = round(statistics.median(floor_ms), 1)
        row["x_floor"] = round(statistics.median(chunk_ratios), 2)
        row["x_floor_range"] = [round(min(chunk_ratios), 2), round(max(chunk_ratios), 2)]
    if products_ms:
        row["bare_cl_products_ms"] = round(statistics.median(products_ms), 1)
        # The least x_floor an exact step of this model can have here: (spmm + products) / spmm.
        row["x_floor_bound"] = round(
            statistics.median((f + p) / f for f, p in zip(floor_ms, products_ms, strict=True)), 2
        )
        row["x_floor_and_products"] = round(statistics.median(product_ratios), 2)
    return row


def _step_seconds(clock: _Clock) -> float:
    """Seconds in whole steps so far (the wrapped phases are inside the objective's)."""
    return sum(clock.seconds.get(phase, 0.0) for phase in ("objective", "backward", "step"))


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


def bare_cl_products_ms(sides: list[tuple[int, int]], dim: int, repeats: int = 3) -> float:
    """Median ms, per step, of the in-batch InfoNCE's dense products and nothing else.

    ``sides``: (unique users, unique positive items) of each batch. Per side of ``n`` nodes: the logits
    ``a bᵀ`` (n × n) forward, and ``g b``, ``gᵀ a`` backward. The median batch shape stands for the chunk.
    """
    users = int(statistics.median(u for u, _ in sides))
    items = int(statistics.median(i for _, i in sides))
    operands = [(torch.randn(n, dim), torch.randn(n, dim), torch.randn(n, n)) for n in (users, items)]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for a, b, g in operands:
            a @ b.T
            g @ b
            g.T @ a
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def _reference_layers(coo: torch.Tensor, ego: torch.Tensor, cfg: TrainConfig, perturbed: bool) -> list:
    """Layers ``1..L`` as SELFRec builds them: COO ``torch.sparse.mm``, ``rand_like`` noise."""
    assert cfg.noise_eps is not None, "resolve the config first"
    out, x = [], ego
    for _ in range(cfg.num_layers):
        x = torch.sparse.mm(coo, x)
        if perturbed:
            x = x + torch.sign(x) * F.normalize(torch.rand_like(x), dim=-1) * cfg.noise_eps
        out.append(x)
    return out


def reference_loss(
    model_name: str, coo: torch.Tensor, table: torch.Tensor, num_users: int, batch: Batch, cfg: TrainConfig
) -> torch.Tensor:
    """One step's loss computed with the operations of the authors' SELFRec code, to time them here.

    Written for this benchmark (not copied): a COO ``torch.sparse.mm`` with autograd's own sparse
    backward, ``torch.rand_like`` noise, a stacked ``torch.mean`` over the layers, InfoNCE through
    autograd's ``log_softmax`` and, for SimGCL, three separate propagations. BPR and L2 are ours (the same
    operations as theirs).
    """
    temperature, cl_weight = cfg.temperature or 0.0, cfg.cl_weight or 0.0  # unset: lightgcn reads neither

    def mean(layers: list) -> tuple[torch.Tensor, torch.Tensor]:
        final = torch.stack(layers, dim=1).mean(dim=1)
        return final[:num_users], final[num_users:]

    def info_nce(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # SELFRec's autograd form
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
        return -torch.diagonal(F.log_softmax(a @ b.T / temperature, dim=1)).mean()

    def cl(a: tuple, b: tuple) -> torch.Tensor:
        users, items = torch.unique(batch.users), torch.unique(batch.pos)
        return cl_weight * (info_nce(a[0][users], b[0][users]) + info_nce(a[1][items], b[1][items]))

    extra: torch.Tensor | float = 0.0
    if model_name == "lightgcn":
        rec = mean([table, *_reference_layers(coo, table, cfg, False)])
    elif model_name == "simgcl":
        rec = mean(_reference_layers(coo, table, cfg, False))
        extra = cl(
            mean(_reference_layers(coo, table, cfg, True)), mean(_reference_layers(coo, table, cfg, True))
        )
    else:
        layers = _reference_layers(coo, table, cfg, True)
        rec = mean(layers)
        view = layers[cfg.cl_layer - 1]
        extra = cl(rec, (view[:num_users], view[num_users:]))
    u, p, n = rec[0][batch.users], rec[1][batch.pos], rec[1][batch.neg]
    bpr = bpr_loss((u * p).sum(-1), (u * n).sum(-1))
    return bpr + cfg.reg_weight * l2_reg(u, p) + extra


def reference_epoch_s(data: Dataset, model_name: str, threads: int, batches: int) -> float:
    """SELFRec-style seconds per epoch, projected from ``batches`` timed steps (after 2 warm-up steps)."""
    torch.set_num_threads(threads)
    cfg = config_from_dict({"model": model_name, "protocol": "paper", "preset": "reference"}).resolved()
    pairs = torch.cat([data.train, data.valid], dim=1)
    graph = build_graph(pairs, data.num_users, data.num_items)
    coo = graph.adj.to_sparse_coo().coalesce()
    model = build_model(cfg, data.num_users, data.num_items)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = torch.Generator().manual_seed(0)
    epoch = epoch_batches(pairs, NegativeSampler(pairs, data.num_items), cfg.batch_size, rng)
    times = []
    for batch in epoch[: batches + 2]:
        t = time.perf_counter()
        loss = reference_loss(model_name, coo, model.embedding, data.num_users, batch, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t)
    return round(statistics.mean(times[2:]) * len(epoch), 1)


def accuracy(
    data: Dataset, model_name: str, protocol: str, epochs: int, threads: int, patience_steps: int
) -> dict:
    """Train under ``protocol`` (stopped by the rule or the ``epochs`` cap) and report the test metrics."""
    cfg = TrainConfig(
        model=model_name, protocol=protocol, epochs=epochs, patience_steps=patience_steps, threads=threads
    )
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
    parser.add_argument("--patience-steps", type=int, default=TrainConfig.patience_steps)
    parser.add_argument("--tag", default="", help="suffix of the JSON file name")
    parser.add_argument(
        "--reference-batches",
        type=int,
        default=30,
        help="speed: also time this many steps of the SELFRec-style path and project an epoch (0: skip)",
    )
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
        for row in rows:
            if opts.reference_batches and row["model"] != "mf":
                row["selfrec_style_epoch_s"] = reference_epoch_s(
                    data, str(row["model"]), opts.threads, opts.reference_batches
                )
        cols = [
            "model",
            "epoch_s",
            "sampling_s",
            "propagation_s",
            "noise_s",
            "loss_s",
            "backward_s",
            "step_s",
            "bare_spmm_fwd_bwd_ms",
            "x_floor",
            "x_floor_bound",
            "selfrec_style_epoch_s",
        ]
        print(f"\ngowalla, one epoch ({rows[0]['batches']} batches of 2048), {opts.threads} threads")
        print("".join(f"{c.removesuffix('_s'):>14}" for c in cols))
        for r in rows:
            print("".join(f"{r.get(c, '-')!s:>14}" for c in cols))
        out = RESULTS / f"train_speed{opts.tag}.json"
    else:
        rows = [
            accuracy(data, m, opts.protocol, opts.epochs, opts.threads, opts.patience_steps) for m in models
        ]
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
    write_rows(out, opts.threads, rows)


if __name__ == "__main__":
    main()
