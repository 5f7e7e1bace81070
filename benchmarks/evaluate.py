"""Full-ranking evaluation speed on the gowalla shapes, and the most-popular / random baselines on gowalla.

Times ``recsys.evaluate.evaluate_embeddings`` on random 64-d embeddings of 29,858 users x 40,981 items,
train interactions masked, K = 20, with ``torch.set_num_threads(2)``: median of several repeats, with the
breakdown score (matmul) / mask / top-k / metrics, for a few variants (chunk size, and a matmul that
allocates its result instead of writing into the preallocated buffer). The masked and ground-truth pairs
are gowalla's train and test when /work/shared/data/gowalla exists (ingested into a temporary directory
with the preset split), otherwise random pairs of the same sizes. It then evaluates the most-popular and
random baselines on gowalla test (honest protocol: train and valid masked) and prints Recall@20/NDCG@20.

Also reports how busy the machine was: CPU time used by other processes during the timed runs, in cores
(from /proc/stat minus this process's own CPU time), since another job on a 2-core machine inflates
every number here.

    python benchmarks/evaluate.py                      # 5 repeats, all variants, baselines
    python benchmarks/evaluate.py --repeats 3 --no-baselines --variants auto

Prints a table and writes benchmarks/results/evaluate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from recsys.dataset import Dataset, load_dataset
from recsys.evaluate import (
    EmbeddingScorer,
    FunctionScorer,
    Scorer,
    auto_batch_size,
    evaluate_split,
    full_ranking,
)

RESULTS = Path(__file__).resolve().parent / "results"
GOWALLA = Path("/work/shared/data/gowalla")
NUM_USERS, NUM_ITEMS, NUM_TRAIN, NUM_TEST = 29_858, 40_981, 727_874, 217_242
PHASES = ("setup", "score", "mask", "topk", "metrics")


class _CpuMeter:
    """CPU seconds used by other processes while the block runs (all cores, from /proc/stat)."""

    def __enter__(self) -> _CpuMeter:
        self.wall = time.perf_counter()
        self.busy = self._busy()
        self.own = self._own()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.others = max(0.0, (self._busy() - self.busy) - (self._own() - self.own))

    @staticmethod
    def _busy() -> float:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except OSError:
            return 0.0
        ticks = [int(x) for x in fields]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
        return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime


def _gowalla(workdir: Path) -> Dataset | None:
    if not (GOWALLA / "train.txt").is_file():
        return None
    from pipelines import IngestConfig, ingest
    from pipelines.readers import LogSpec

    out = workdir / "gowalla"
    cfg = IngestConfig(
        out=out,
        spec=LogSpec(format="lightgcn"),
        train=GOWALLA / "train.txt",
        test=GOWALLA / "test.txt",
        split="preset",
        force=True,
    )
    start = time.perf_counter()
    ingest(cfg)
    print(f"ingested gowalla into {out} in {time.perf_counter() - start:.1f} s")
    return load_dataset(out)


def _random_pairs(count: int, generator: torch.Generator) -> torch.Tensor:
    users = torch.randint(0, NUM_USERS, (count,), generator=generator)
    items = torch.randint(0, NUM_ITEMS, (count,), generator=generator)
    return torch.stack([users, items])


def _variants(user: torch.Tensor, item: torch.Tensor, names: list[str]) -> dict[str, tuple[Scorer, int]]:
    auto = auto_batch_size(NUM_ITEMS)
    item_t = item.t()  # a non-contiguous view: what `user @ item.T` does without the copy

    def alloc(users: torch.Tensor) -> torch.Tensor:
        return user[users] @ item_t

    table: dict[str, Callable[[], tuple[Scorer, int]]] = {
        "auto": lambda: (EmbeddingScorer(user, item), auto),
        "b256": lambda: (EmbeddingScorer(user, item), 256),
        "b1024": lambda: (EmbeddingScorer(user, item), 1024),
        "b4096": lambda: (EmbeddingScorer(user, item), 4096),
        "alloc": lambda: (FunctionScorer(alloc), auto),
    }
    unknown = sorted(set(names) - set(table))
    if unknown:
        msg = f"unknown variant(s) {unknown}; choose from {sorted(table)}"
        raise SystemExit(msg)
    return {name: table[name]() for name in names}


DESCRIPTIONS = {
    "auto": "mm(out=buffer), contiguous item^T, batch by 256 MiB budget",
    "b256": "same, batch 256",
    "b1024": "same, batch 1024",
    "b4096": "same, batch 4096",
    "alloc": "user[u] @ item.T allocated per chunk, copied into the buffer",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--variants", default="auto,b256,b1024,b4096,alloc", help="comma-separated")
    parser.add_argument("--dim", type=int, default=64, help="embedding dimension")
    parser.add_argument("--no-baselines", action="store_true", help="skip the gowalla baselines")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "recsys-bench-evaluate")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)

    opts.workdir.mkdir(parents=True, exist_ok=True)
    dataset = _gowalla(opts.workdir)
    g = torch.Generator().manual_seed(0)
    if dataset is not None:
        assert (dataset.num_users, dataset.num_items) == (NUM_USERS, NUM_ITEMS), "unexpected gowalla shape"
        train, test, source = dataset.train, dataset.test, "gowalla train (masked) / test (ground truth)"
    else:
        train, test, source = _random_pairs(NUM_TRAIN, g), _random_pairs(NUM_TEST, g), "random pairs"
    user = torch.randn(NUM_USERS, opts.dim, generator=g)
    item = torch.randn(NUM_ITEMS, opts.dim, generator=g)
    flop = 2 * NUM_USERS * NUM_ITEMS * opts.dim

    results: list[dict[str, Any]] = []
    for name, (scorer, batch_size) in _variants(user, item, opts.variants.split(",")).items():
        full_ranking(
            scorer,
            test,
            num_users=NUM_USERS,
            num_items=NUM_ITEMS,
            exclude=train,
            ks=[20],
            batch_size=batch_size,
        )  # warm-up: page in the buffer, load the kernels
        runs = []
        for _ in range(opts.repeats):
            timings: dict[str, float] = {}
            with _CpuMeter() as meter:
                res = full_ranking(
                    scorer,
                    test,
                    num_users=NUM_USERS,
                    num_items=NUM_ITEMS,
                    exclude=train,
                    ks=[20],
                    batch_size=batch_size,
                    timings=timings,
                )
            runs.append({"total": meter.wall, **timings, "others_cores": meter.others / meter.wall})
        median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        results.append(
            {
                "variant": name,
                "description": DESCRIPTIONS[name],
                "batch_size": batch_size,
                "median_s": {k: round(v, 3) for k, v in median.items()},
                "runs_total_s": [round(r["total"], 3) for r in runs],
                "matmul_gflops": round(flop / median["score"] / 1e9, 1),
                "recall@20": res.metrics["recall@20"],
            }
        )
        print(f"{name}: {median['total']:.2f} s (runs {[round(r['total'], 2) for r in runs]})", flush=True)

    baselines: dict[str, dict[str, float]] = {}
    if dataset is not None and not opts.no_baselines:
        report = evaluate_split(dataset, split="test", protocol="honest", ks=[20])
        baselines = {row.name: {**row.metrics, "seconds": row.seconds} for row in report.baselines}
        baseline_users = (report.num_users, report.num_skipped)

    print(
        f"\nfull-ranking evaluation, {NUM_USERS:,} users x {NUM_ITEMS:,} items, d={opts.dim}, K=20, "
        f"{source}\ntorch {torch.__version__}, {opts.threads} threads, {os.cpu_count()} cores, "
        f"median of {opts.repeats}; 'others' = cores used by other processes meanwhile"
    )
    print(
        f"{'variant':<8}{'batch':>6}{'total s':>9}"
        + "".join(f"{p:>9}" for p in PHASES)
        + f"{'GFLOP/s':>9}{'others':>8}  description"
    )
    for r in results:
        m = r["median_s"]
        print(
            f"{r['variant']:<8}{r['batch_size']:>6}{m['total']:>9.2f}"
            + "".join(f"{m[p]:>9.3f}" for p in PHASES)
            + f"{r['matmul_gflops']:>9.1f}{m['others_cores']:>8.2f}  {r['description']}"
        )
    if baselines:
        print(
            f"\nbaselines on gowalla test (honest: train + valid masked; {baseline_users[0]:,} users, "
            f"{baseline_users[1]} skipped)"
        )
        print(f"{'baseline':<14}{'recall@20':>10}{'ndcg@20':>10}{'seconds':>9}")
        for name, m in baselines.items():
            print(f"{name:<14}{m['recall@20']:>10.4f}{m['ndcg@20']:>10.4f}{m['seconds']:>9.2f}")

    RESULTS.mkdir(exist_ok=True)
    payload = {
        "shape": {"num_users": NUM_USERS, "num_items": NUM_ITEMS, "dim": opts.dim, "k": 20},
        "pairs": source,
        "threads": opts.threads,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg": os.getloadavg(),
        "repeats": opts.repeats,
        "results": results,
        "baselines_gowalla_test": baselines,
    }
    (RESULTS / "evaluate.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {RESULTS / 'evaluate.json'}")


if __name__ == "__main__":
    main()
