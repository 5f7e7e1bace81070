"""Scale benchmark: 1M users × 1M items × 50M interactions, from the raw log to top-k retrieval.

Three parts, each printed as a table and written to benchmarks/results/scale.json:

1. **Ingest**: a generated CSV log (``recsys generate``'s generator) through ``recsys ingest`` in a child
   process (no filters, random split): wall time and the child's peak RSS.
2. **Training**: load the dataset, build the graph (with the locality relabelling ``fit`` uses), then time
   a few XSimGCL steps (batch 2048) and project one epoch from their median; peak RSS of this process.
   A full epoch here would take days on 2 cores, hence the projection (the measured fraction is printed).
3. **Retrieval**: top-20 over 1M items, exact chunked scoring against faiss IVF (and HNSW with
   ``--hnsw``): build seconds, single-query latency p50/p99, batched queries per second, and the index's
   recall@20 against the exact answer. The item and query vectors are a clustered synthetic set (1,000
   Gaussian topics on the sphere, like learned embeddings), not the barely trained model's: on structure-
   less random vectors every approximate index loses much of its recall, which says nothing about real
   embeddings.

    python benchmarks/scale.py                      # the full size (needs ~12 GB RAM and ~4 GB disk)
    python benchmarks/scale.py --users 100000 --items 100000 --interactions 2000000   # a quick look
"""

from __future__ import annotations

from recsys.runtime import configure_cpu_runtime

configure_cpu_runtime()  # before numpy and torch load

import argparse
import json
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from ingest import run_once

from pipelines.synthetic import SyntheticConfig, generate
from recsys.config import TrainConfig
from recsys.data.dataset import load_dataset
from recsys.data.graph import NodeOrder, build_graph
from recsys.data.sampling import NegativeSampler
from recsys.inference.retrieval import build_index
from recsys.models.build import build_model
from recsys.training.loop import epoch_batches
from recsys.training.objectives import OBJECTIVES

RESULTS = Path(__file__).resolve().parent / "results"


def peak_rss_gib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def ingest_part(opts: argparse.Namespace) -> tuple[dict, Path]:
    """Generate the log once (cached in the work directory), then time its ingest."""
    log = opts.workdir / f"log_{opts.users}_{opts.items}_{opts.interactions}.csv"
    if not log.exists():
        t = time.perf_counter()
        cfg = SyntheticConfig(opts.users, opts.items, opts.interactions, dirty_fraction=0.0, seed=0)
        generate(cfg, log)
        print(f"generated {log} in {time.perf_counter() - t:.0f} s")
    out = opts.workdir / "dataset"
    wall, rss = run_once(log, out, ["--split", "random"])
    meta = json.loads((out / "meta.json").read_text())
    row = {
        "log_gib": round(log.stat().st_size / 2**30, 2),
        "ingest_s": round(wall, 1),
        "ingest_peak_rss_gib": round(rss, 2),
        "users": meta["num_users"],
        "items": meta["num_items"],
        "train_interactions": meta["counts"]["train"]["interactions"],
    }
    return row, out


def train_part(dataset_dir: Path, steps: int, threads: int) -> dict:
    """Graph build and a few XSimGCL steps on the full graph; one epoch projected from their median."""
    torch.set_num_threads(threads)
    t = time.perf_counter()
    data = load_dataset(dataset_dir)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    pairs = NodeOrder.locality(data.train, data.num_users, data.num_items).pairs(data.train)
    relabel_s = time.perf_counter() - t
    t = time.perf_counter()
    adj = build_graph(pairs, data.num_users, data.num_items).adj
    graph_s = time.perf_counter() - t
    cfg = TrainConfig(model="xsimgcl").resolved()
    model = build_model(cfg, data.num_users, data.num_items)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)
    rng = torch.Generator().manual_seed(0)
    t = time.perf_counter()
    batches = epoch_batches(pairs, NegativeSampler(pairs, data.num_items), cfg.batch_size, rng)
    sampling_s = time.perf_counter() - t
    times = []
    for batch in batches[: steps + 1]:  # the first step warms up allocations and is not counted
        t = time.perf_counter()
        losses = OBJECTIVES["xsimgcl"](model, adj, batch, cfg, rng)
        optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        optimizer.step()
        times.append(time.perf_counter() - t)
    step_s = statistics.median(times[1:])
    return {
        "load_s": round(load_s, 1),
        "relabel_s": round(relabel_s, 1),
        "graph_build_s": round(graph_s, 1),
        "graph_nnz": int(adj._nnz()),
        "epoch_sampling_s": round(sampling_s, 1),
        "steps_timed": steps,
        "step_s_median": round(step_s, 2),
        "batches_per_epoch": len(batches),
        "epoch_h_projected": round((step_s * len(batches) + sampling_s) / 3600, 1),
        "train_peak_rss_gib": peak_rss_gib(),
    }


def clustered(count: int, centres: torch.Tensor, spread: float, generator: torch.Generator) -> torch.Tensor:
    """``count`` vectors around random rows of ``centres`` (Gaussian noise of scale ``spread``)."""
    pick = torch.randint(0, centres.size(0), (count,), generator=generator)
    return centres[pick] + spread * torch.randn(count, centres.size(1), generator=generator)


def retrieval_part(items_count: int, queries: int, threads: int, hnsw: bool, k: int = 20) -> list[dict]:
    """Exact against approximate top-``k`` over ``items_count`` items: build, latency, QPS, recall@k."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(1000, 64, generator=g), dim=1)
    items = clustered(items_count, centres, 0.15, g)
    users = clustered(queries, centres, 0.15, g)
    exact = build_index(items, "exact")
    _, truth = exact.search(users, k)
    kinds = [
        ("exact", {}),
        ("ivf", {"nprobe": 16, "threads": threads}),
        ("ivf", {"nprobe": 64, "threads": threads}),
    ]
    if hnsw:
        kinds.append(("hnsw", {"ef_search": 128, "threads": threads}))
    rows = []
    for kind, options in kinds:
        index = build_index(items, kind, **options)
        single = []
        for q in users[:200]:
            t = time.perf_counter()
            index.search(q.unsqueeze(0), k)
            single.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        _, found = index.search(users, k)
        batched_qps = queries / (time.perf_counter() - t)
        hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, truth, strict=True))
        label = kind + "".join(f" {name}={value}" for name, value in options.items() if name != "threads")
        rows.append(
            {
                "retrieval": label,
                "build_s": round(index.build_seconds, 1),
                "p50_ms": round(statistics.median(single), 2),
                "p99_ms": round(statistics.quantiles(single, n=100)[98], 2),
                "batched_qps": round(batched_qps),
                "recall@20_vs_exact": round(hits / (k * queries), 4),
            }
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--interactions", type=int, default=50_000_000)
    parser.add_argument("--steps", type=int, default=3, help="timed XSimGCL steps (after one warm-up)")
    parser.add_argument("--queries", type=int, default=2000, help="retrieval queries")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hnsw", action="store_true", help="also build an HNSW index (minutes at 1M items)")
    parser.add_argument("--parts", default="ingest,train,retrieval")
    parser.add_argument("--keep", action="store_true", help="keep the generated log and dataset")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "recsys-bench-scale")
    opts = parser.parse_args()
    opts.workdir.mkdir(parents=True, exist_ok=True)
    parts = opts.parts.split(",")
    result: dict = {"cpus": os.cpu_count(), "threads": opts.threads}
    dataset = opts.workdir / "dataset"
    if "ingest" in parts:
        result["ingest"], dataset = ingest_part(opts)
        print(f"\ningest: {result['ingest']}", flush=True)
    if "train" in parts:
        result["train"] = train_part(dataset, opts.steps, opts.threads)
        print(f"\ntrain (xsimgcl, batch 2048): {result['train']}", flush=True)
    if "retrieval" in parts:
        result["retrieval"] = retrieval_part(opts.items, opts.queries, opts.threads, opts.hnsw)
        cols = ["retrieval", "build_s", "p50_ms", "p99_ms", "batched_qps", "recall@20_vs_exact"]
        print(f"\ntop-20 over {opts.items:,} items, {opts.queries} queries, {opts.threads} threads")
        print("".join(f"{c:>22}" for c in cols))
        for r in result["retrieval"]:
            print("".join(f"{r[c]!s:>22}" for c in cols))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "scale.json"
    if out.exists():  # a run of some --parts keeps the other parts' last results
        result = {**json.loads(out.read_text()), **result}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    if not opts.keep:
        shutil.rmtree(opts.workdir / "dataset", ignore_errors=True)


if __name__ == "__main__":
    main()
