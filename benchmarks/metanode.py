r"""Meta-node negatives benchmark on gowalla (../shared/data/gowalla, preset split).

Compares the InfoNCE negatives of SimGCL/XSimGCL (``cl_negatives``): ``in_batch`` (as published),
``metanode`` at several K (all nodes through K k-means meta-nodes, docs/metanode.md)
and ``full`` (every node, exact). Two modes, each printing a table and writing JSON under
benchmarks/results/:

* ``step``: the cost. For each model and variant, the contrastive loss step (both sides, forward +
  backward, B = 2048 batches of real gowalla indices), the k-means refresh, and a whole training step
  (objective + backward + Adam), medians; the epoch time is projected from the step time (396 steps plus
  one refresh).

      python benchmarks/metanode.py step --models xsimgcl,simgcl

* ``train``: the accuracy. Trains each variant under the honest protocol for the same number of epochs,
  for each λ of a grid, selects λ on valid Recall@20 and reports valid and test Recall@20 / NDCG@20, the
  probe's gap to the exact loss and the epoch seconds; also plots valid Recall@20 per epoch.

      python benchmarks/metanode.py train --models xsimgcl --epochs 4 --lambdas 0.1,0.2 \\
          --variants in_batch,metanode:256,metanode:1024,metanode:4096
"""

from __future__ import annotations

from recsys.runtime import configure_cpu_runtime

configure_cpu_runtime()  # before numpy and torch load

import argparse
import dataclasses
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from train import GOWALLA, RESULTS, gowalla, write_rows

from recsys.config import TrainConfig
from recsys.dataset import Dataset
from recsys.graph import NodeOrder, build_graph
from recsys.metanode import ContrastiveNegatives
from recsys.models import build_model
from recsys.objectives import OBJECTIVES
from recsys.sampling import NegativeSampler
from recsys.train import epoch_batches, fit

DEFAULT_VARIANTS = (
    "in_batch,metanode:256,metanode:1024,metanode:1024:first,metanode:1024:detach,metanode:4096,full"
)


def variant_config(cfg: TrainConfig, variant: str) -> TrainConfig:
    """``in_batch``, ``full`` or ``metanode:K[:first|:detach]`` applied to ``cfg``."""
    mode, *rest = variant.split(":")
    changes: dict[str, object] = {"cl_negatives": mode}
    if mode == "metanode":
        changes["metanode_clusters"] = int(rest[0])
        changes["metanode_second_order"] = "first" not in rest
        changes["metanode_detach"] = "detach" in rest
    return dataclasses.replace(cfg, **changes).resolved()


def _median_ms(fn, repeats: int) -> float:
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
    rows = []
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

        def loss_step(leaves=leaves, negatives=negatives, cfg=cfg, batch_iter=batch_iter) -> None:
            batch = next(batch_iter)
            users, items = torch.unique(batch.users), torch.unique(batch.pos)
            loss = negatives.loss(leaves[0], leaves[2], users, 0, cfg.temperature) + negatives.loss(
                leaves[1], leaves[3], items, 1, cfg.temperature
            )
            torch.autograd.grad(loss, leaves)

        def train_step(
            model=model, optimizer=optimizer, negatives=negatives, cfg=cfg, batch_iter=batch_iter
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


def train_variant(data: Dataset, model_name: str, variant: str, cl_weight: float, opts) -> dict:
    """One honest-protocol run; the probe is on for meta-node variants (every 20 steps)."""
    cfg = TrainConfig(
        model=model_name,
        protocol="honest",
        epochs=opts.epochs,
        threads=opts.threads,
        cl_weight=cl_weight,
    )
    cfg = variant_config(cfg, variant)
    if cfg.cl_negatives == "metanode":
        cfg = dataclasses.replace(cfg, metanode_probe_every=20)
    result = fit(data, cfg, progress=False)
    gaps = [r["probe_gap"] for r in result.history if "probe_gap" in r]
    cosines = [r["probe_grad_cos"] for r in result.history if "probe_grad_cos" in r]
    return {
        "model": model_name,
        "variant": variant,
        "cl_weight": cl_weight,
        "epochs": len(result.history),
        "best_epoch": result.best_epoch,
        "valid_recall@20": result.selection["recall@20"],
        "valid_ndcg@20": result.selection["ndcg@20"],
        "test_recall@20": result.test["recall@20"],
        "test_ndcg@20": result.test["ndcg@20"],
        "probe_gap": round(statistics.mean(gaps), 4) if gaps else None,
        "probe_grad_cos": round(statistics.mean(cosines), 4) if cosines else None,
        "epoch_s": round(statistics.median(r["train_seconds"] for r in result.history), 1),
        "valid_curve": [r["valid"]["recall@20"] for r in result.history if "valid" in r],
    }


def plot(rows: list[dict], path: Path) -> None:
    """Valid Recall@20 per epoch of each variant's selected λ, one panel per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for r in rows:
            if r["model"] == model and r.get("selected"):
                curve = r["valid_curve"]
                label = f"{r['variant']} (λ={r['cl_weight']})"
                ax.plot(range(1, len(curve) + 1), curve, marker="o", label=label)
        ax.set(title=f"{model}: valid Recall@20 (honest protocol)", xlabel="epoch", ylabel="Recall@20")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["step", "train"])
    parser.add_argument("--models", default="xsimgcl,simgcl")
    parser.add_argument(
        "--variants", default=DEFAULT_VARIANTS, help="in_batch, full, metanode:K[:first|:detach]"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15, help="step: timed loss steps per variant")
    parser.add_argument("--epochs", type=int, default=4, help="train: epochs of every run")
    parser.add_argument("--lambdas", default="0.1,0.2", help="train: λ grid (cl_weight), selected on valid")
    parser.add_argument("--tag", default="", help="suffix of the JSON file name")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "recsys-bench")
    opts = parser.parse_args()
    if not (GOWALLA / "train.txt").is_file():
        sys.exit(f"gowalla not found at {GOWALLA}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    data = gowalla(opts.workdir)
    models, variants = opts.models.split(","), opts.variants.split(",")
    RESULTS.mkdir(exist_ok=True)
    if opts.mode == "step":
        rows = [r for m in models for r in step_costs(data, m, variants, opts.threads, opts.repeats)]
        cols = ["model", "variant", "loss_step_ms", "loss_vs_in_batch", "refresh_s", "train_step_ms"]
        cols.append("epoch_s_projected")
        print(f"\ngowalla, B = 2048, {opts.threads} threads, medians")
    else:
        rows = []
        for model in models:
            for variant in variants:
                runs = [
                    train_variant(data, model, variant, float(lam), opts) for lam in opts.lambdas.split(",")
                ]
                max(runs, key=lambda r: r["valid_recall@20"])["selected"] = True
                rows.extend(runs)
        cols = ["model", "variant", "cl_weight", "selected", "valid_recall@20", "valid_ndcg@20"]
        cols += ["test_recall@20", "test_ndcg@20", "probe_gap", "probe_grad_cos", "epoch_s"]
        print(f"\ngowalla, honest protocol, {opts.epochs} epochs per run, λ selected on valid Recall@20")
        plot(rows, RESULTS / f"metanode_train{opts.tag}.png")
    print("".join(f"{c:>18}" for c in cols))
    for r in rows:
        print("".join(f"{r.get(c, '')!s:>18}" for c in cols))
    out = RESULTS / f"metanode_{opts.mode}{opts.tag}.json"
    write_rows(out, opts.threads, rows)


if __name__ == "__main__":
    main()
