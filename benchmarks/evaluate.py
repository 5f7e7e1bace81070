"""Full-ranking evaluation speed on the gowalla shapes, and the whole ``recsys evaluate`` on gowalla.

Part 1 times ``recsys.evaluation.ranking.full_ranking`` on random 64-d embeddings of 29,858 users x 40,981
items, train interactions masked, K = 20, with ``torch.set_num_threads(2)``: median of several repeats, with
the breakdown setup / score (the matmul) / mask / top-k / metrics, for a few variants (matmul backend and
layout, top-k prefilter on or off, chunk size). The masked and ground-truth pairs are gowalla's train and
test when /work/shared/data/gowalla exists (ingested into a temporary directory with the preset split),
otherwise random pairs of the same sizes.

Part 2 (gowalla only) writes an artifact of the same random embeddings and, in the same run:

* times the whole ``recsys evaluate --artifact A --dataset D --split test`` in a child process (start-up,
  imports, loading and validating the artifact, the model row with segments and geometry, the default
  baselines popular and random, the JSON, exit) ``--repeats`` times, and the floor it is held to, the bare
  fp32 score matmul (numpy, 4,096-user chunks into one preallocated buffer, every user), before each run
  and after the last; the ratio is the median command over the median floor (target: at most 4x);
* times ``recsys evaluate --dataset D --baselines graph-filter --k 20`` in a child process, end to end,
  against the floor timed just before and after it (target: at most 60x), and prints the graph filter's
  honest test Recall@20 / NDCG@20, the filter chosen on valid with its settings, its phases and the
  children's peak RSS (``--filter-on train+valid``: the filter refitted on train + valid).

It also reports how busy the machine was: the cores used by other processes during the timed runs
(/proc/stat minus this process's own CPU time, and its children's), since another job on a 2-core machine
inflates every number here.

    python benchmarks/evaluate.py                      # 5 repeats, all variants, then part 2
    OPENBLAS_NUM_THREADS=1 python benchmarks/evaluate.py --threads 1 --variants auto --repeats 3
    python benchmarks/evaluate.py --repeats 3 --variants auto,torch-nn --no-command --no-graph-filter
    OPENBLAS_NUM_THREADS=1 python benchmarks/evaluate.py --threads 1 --variants auto --repeats 1 --no-command

Prints a table and writes benchmarks/results/evaluate.json.
"""

from __future__ import annotations

import os

# As `recsys evaluate` does, before numpy loads OpenBLAS: idle BLAS threads sleep at once instead of spinning
# ~0.1 s after each product and taking a core from torch's top-k. Set it to 28 (OpenBLAS's default) to see
# the difference.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from recsys.artifact import write_embeddings_artifact  # noqa: E402
from recsys.data.dataset import Dataset, load_dataset  # noqa: E402
from recsys.evaluation.ranking import full_ranking  # noqa: E402
from recsys.inference import topk  # noqa: E402
from recsys.inference.scoring import EmbeddingScorer, FunctionScorer, Scorer  # noqa: E402
from recsys.inference.topk import auto_batch_size  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GOWALLA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gowalla"
NUM_USERS, NUM_ITEMS, NUM_TRAIN, NUM_TEST = 29_858, 40_981, 727_874, 217_242
PHASES = ("setup", "score", "mask", "topk", "metrics")
VARIANTS: dict[str, str] = {
    "auto": "default: numpy/OpenBLAS matmul into the buffer (item (N,d) used transposed), block-max top-k",
    "torch-nn": "torch.mm(out=buffer) (MKL) with a contiguous (d,N) item matrix, block-max top-k",
    "numpy-nn": "numpy matmul with a contiguous (d,N) item matrix, block-max top-k",
    "plain-topk": "default matmul, plain torch.topk over the full rows",
    "alloc": "user[u] @ item.T allocated by torch per chunk, then copied into the buffer",
    "b256": "default, batch 256",
    "b512": "default, batch 512",
    "b1024": "default, batch 1024",
    "b4096": "default, batch 4096",
}


class _CpuMeter:
    """Wall time of the block and the CPU seconds other processes used meanwhile (all cores)."""

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
            ticks = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        except OSError:
            return 0.0
        idle = ticks[3] + ticks[4]  # idle + iowait
        return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


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


def _variant(name: str, user: torch.Tensor, item: torch.Tensor) -> tuple[Scorer, int]:
    auto = auto_batch_size(NUM_ITEMS)
    if name.startswith("b") and name[1:].isdigit():
        return EmbeddingScorer(user, item), int(name[1:])
    if name == "torch-nn":
        return EmbeddingScorer(user, item, backend="torch", layout="nn"), auto
    if name == "numpy-nn":
        return EmbeddingScorer(user, item, backend="numpy", layout="nn"), auto
    if name == "alloc":
        item_t = item.t()
        return FunctionScorer(lambda users: user[users] @ item_t), auto
    return EmbeddingScorer(user, item), auto


@contextmanager
def _plain_topk(enabled: bool) -> Iterator[None]:
    """Switch off the block-max prefilter of ``topk_rows`` (a block wider than any row)."""
    saved = topk.TOPK_BLOCK
    if enabled:
        topk.TOPK_BLOCK = 1 << 40
    try:
        yield
    finally:
        topk.TOPK_BLOCK = saved


def _time_variant(
    name: str, user: torch.Tensor, item: torch.Tensor, train: torch.Tensor, test: torch.Tensor, repeats: int
) -> dict[str, Any]:
    scorer, batch_size = _variant(name, user, item)
    kwargs: dict[str, Any] = {
        "num_users": NUM_USERS,
        "num_items": NUM_ITEMS,
        "exclude": train,
        "ks": [20],
        "batch_size": batch_size,
    }
    runs = []
    with _plain_topk(name == "plain-topk"):
        full_ranking(scorer, test, **kwargs)  # warm-up: page in the buffer, start the thread pools
        for _ in range(repeats):
            timings: dict[str, float] = {}
            with _CpuMeter() as meter:
                res = full_ranking(scorer, test, timings=timings, **kwargs)
            runs.append({"total": meter.wall, **timings, "others_cores": meter.others / meter.wall})
    median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    print(f"{name}: {median['total']:.2f} s (runs {[round(r['total'], 2) for r in runs]})", flush=True)
    return {
        "variant": name,
        "description": VARIANTS.get(name, f"default, batch {batch_size}"),
        "batch_size": batch_size,
        "median_s": {k: round(v, 3) for k, v in median.items()},
        "runs_total_s": [round(r["total"], 3) for r in runs],
        "recall@20": res.metrics["recall@20"],
    }


TARGET_RATIO = 4.0
"""The target: the whole ``recsys evaluate`` on gowalla test costs at most this many bare matmuls."""


def _bare_matmul(user: torch.Tensor, item: torch.Tensor, repeats: int) -> float:
    """Median seconds of ``user @ item.T`` in 4,096-user chunks into one preallocated fp32 buffer (numpy)."""
    u, i_t = user.numpy(), item.numpy().T
    buffer = np.empty((4096, i_t.shape[1]), dtype=np.float32)
    np.matmul(u[:4096], i_t, out=buffer)  # warm-up: page in the buffer, start the BLAS threads
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for first in range(0, u.shape[0], 4096):
            rows = u[first : first + 4096]
            np.matmul(rows, i_t, out=buffer[: rows.shape[0]])
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def _run_cli(args: list[str], threads: int) -> dict[str, float]:
    """Run ``recsys ...`` in a child process: wall seconds, CPU seconds and the others' cores meanwhile.

    The child gets the parent's thread count (``OMP_NUM_THREADS``; OpenBLAS's comes from the environment).
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with _CpuMeter() as meter:
        run = subprocess.run(
            [sys.executable, "-m", "recsys.cli", *args], capture_output=True, text=True, check=False, env=env
        )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode != 0:
        msg = f"recsys {' '.join(args)} failed:\n{run.stderr[-3000:]}"
        raise SystemExit(msg)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"wall_s": meter.wall, "cpu_s": cpu, "others_cores": meter.others / meter.wall}


def _command_against_floor(
    artifact: Path, data: str, user: torch.Tensor, item: torch.Tensor, opts: argparse.Namespace
) -> dict[str, Any]:
    """``recsys evaluate`` runs interleaved with floor runs (floor, command, ..., command, floor): medians.

    Interleaving keeps the two under the same load when the machine gets busier or quieter during the runs.
    """
    report = opts.workdir / "eval_command.json"
    args = ["evaluate", "-q", "--artifact", str(artifact), "--dataset", data, "--split", "test"]
    floors: list[float] = []
    runs: list[dict[str, Any]] = []
    for _ in range(opts.repeats):
        floors.append(_bare_matmul(user, item, 1))
        run: dict[str, Any] = {**_run_cli([*args, "--out", str(report)], opts.threads)}
        rows = json.loads(report.read_text())
        # "model", not the artifact's name: this random-init artifact is named "random", as a baseline is.
        run["rows_s"] = {"model": rows["model"]["seconds"]} | {
            name: row["seconds"] for name, row in rows["baselines"].items()
        }
        runs.append(run)
    floors.append(_bare_matmul(user, item, 1))
    floor = statistics.median(floors)
    wall = statistics.median(run["wall_s"] for run in runs)
    rows_s = {name: statistics.median(run["rows_s"][name] for run in runs) for name in runs[0]["rows_s"]}
    rest = statistics.median(run["wall_s"] - sum(run["rows_s"].values()) for run in runs)
    ratio = wall / floor
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    floor_runs = ", ".join(f"{f:.2f}" for f in floors)
    command_runs = ", ".join(f"{run['wall_s']:.2f}" for run in runs)
    inside = ", ".join(f"{name} {sec:.2f} s" for name, sec in rows_s.items())
    print(
        f"\nthe whole command against its floor, median of {opts.repeats} runs each, interleaved:\n"
        f"  floor: bare fp32 matmul (numpy, 4,096-user chunks into one buffer): {floor:.2f} s "
        f"(runs {floor_runs})\n"
        f"  recsys evaluate (model + popular + random, k 10,20,50): {wall:.2f} s (runs {command_runs})\n"
        f"  ratio: {ratio:.2f}x the floor (target <= {TARGET_RATIO:g}x: {verdict})\n"
        f"  inside it: {inside}; the rest (start-up, imports, loading, geometry, JSON, exit) {rest:.2f} s; "
        f"CPU {statistics.median(run['cpu_s'] for run in runs):.2f} s; others used "
        f"{max(run['others_cores'] for run in runs):.2f} cores at most",
        flush=True,
    )
    return {
        "wall_s": wall,
        "bare_matmul_s": floor,
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "met": ratio <= TARGET_RATIO,
        "rows_s": rows_s,
        "rest_s": rest,
        "floor_runs_s": floors,
        "runs": runs,
    }


GRAPH_FILTER_TARGET = 60.0
"""The target: the whole ``recsys evaluate --baselines graph-filter`` costs at most this many bare matmuls."""


def _graph_filter_against_floor(
    data: str, user: torch.Tensor, item: torch.Tensor, opts: argparse.Namespace
) -> dict[str, Any]:
    """``recsys evaluate --dataset D --baselines graph-filter --k 20`` end to end against the bare matmul.

    The floor is timed before and after the command (median of the two), at the same thread settings; the
    child's peak RSS is read from ``getrusage(RUSAGE_CHILDREN)`` (the largest child so far: run it first or
    alone for a clean figure). ``--filter-on`` is passed on when given.
    """
    report = opts.workdir / "eval_graph_filter.json"
    args = [
        "evaluate",
        "-q",
        "--dataset",
        data,
        "--split",
        "test",
        "--k",
        "20",
        "--baselines",
        "graph-filter",
    ]
    if opts.filter_on:
        args += ["--filter-on", opts.filter_on]
    before = _bare_matmul(user, item, 1)
    timing = _run_cli([*args, "--out", str(report)], opts.threads)
    after = _bare_matmul(user, item, 1)
    floor = statistics.median([before, after])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    row = json.loads(report.read_text())["baselines"]["graph-filter"]
    details = {key: value for key, value in row["details"].items() if key not in ("description", "grid")}
    ratio = timing["wall_s"] / floor
    print(
        f"graph-filter (honest, test, applied to {details['applied_to']}): recall@20 "
        f"{row['metrics']['recall@20']:.4f}, ndcg@20 {row['metrics']['ndcg@20']:.4f}\n"
        f"  {details['summary']}\n"
        f"  end to end {timing['wall_s']:.1f} s wall, {timing['cpu_s']:.1f} s CPU; floor {floor:.2f} s "
        f"(runs {before:.2f}, {after:.2f}); ratio {ratio:.1f}x (target <= {GRAPH_FILTER_TARGET:g}x: "
        f"{'met' if ratio <= GRAPH_FILTER_TARGET else 'NOT met'}); peak RSS of the children {peak:.0f} MiB; "
        f"others used {timing['others_cores']:.2f} cores",
        flush=True,
    )
    return {
        **timing,
        "bare_matmul_s": floor,
        "floor_runs_s": [before, after],
        "ratio": ratio,
        "target_ratio": GRAPH_FILTER_TARGET,
        "children_peak_rss_mib": peak,
        "recall@20": row["metrics"]["recall@20"],
        "ndcg@20": row["metrics"]["ndcg@20"],
        **details,
    }


def _part2(
    dataset: Dataset, user: torch.Tensor, item: torch.Tensor, opts: argparse.Namespace
) -> dict[str, Any]:
    """The whole command against the bare matmul, and the graph-filter row; see the module docstring."""
    out: dict[str, Any] = {}
    artifact = opts.workdir / "random-artifact"
    config = {"model": "random", "protocol": "honest"}
    write_embeddings_artifact(artifact, dataset, user, item, config=config, force=True)
    data = str(opts.workdir / "gowalla")
    if opts.command:
        out["command"] = _command_against_floor(artifact, data, user, item, opts)
    if opts.graph_filter:
        out["graph_filter"] = _graph_filter_against_floor(data, user, item, opts)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, of {', '.join(VARIANTS)} or bNNN (batch NNN)",
    )
    parser.add_argument("--dim", type=int, default=64, help="embedding dimension")
    parser.add_argument(
        "--no-command", dest="command", action="store_false", help="skip timing the whole recsys evaluate"
    )
    parser.add_argument(
        "--no-graph-filter", dest="graph_filter", action="store_false", help="skip the graph-filter row"
    )
    parser.add_argument(
        "--filter-on", choices=["train", "train+valid"], help="the graph-filter row's --filter-on"
    )
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "recsys-bench-evaluate")
    opts = parser.parse_args()
    names = opts.variants.split(",")
    unknown = sorted(n for n in names if n not in VARIANTS and not (n[:1] == "b" and n[1:].isdigit()))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    torch.set_num_threads(opts.threads)

    opts.workdir.mkdir(parents=True, exist_ok=True)
    dataset = _gowalla(opts.workdir)
    g = torch.Generator().manual_seed(0)
    if dataset is not None:
        if (dataset.num_users, dataset.num_items) != (NUM_USERS, NUM_ITEMS):
            parser.error(f"unexpected gowalla shape {dataset.num_users} x {dataset.num_items}")
        train, test, source = dataset.train, dataset.test, "gowalla train (masked) / test (ground truth)"
    else:
        train, test, source = _random_pairs(NUM_TRAIN, g), _random_pairs(NUM_TEST, g), "random pairs"
    user = torch.randn(NUM_USERS, opts.dim, generator=g)
    item = torch.randn(NUM_ITEMS, opts.dim, generator=g)
    gflop = 2 * NUM_USERS * NUM_ITEMS * opts.dim / 1e9

    results = [_time_variant(name, user, item, train, test, opts.repeats) for name in names]

    print(
        f"\nfull-ranking evaluation, {NUM_USERS:,} users x {NUM_ITEMS:,} items, d={opts.dim}, K=20,\n"
        f"{source}; torch {torch.__version__}, {opts.threads} threads, {os.cpu_count()} cores;\n"
        f"median of {opts.repeats}, seconds; 'others' = cores used by other processes meanwhile"
    )
    print(
        f"{'variant':<11}{'batch':>6}{'total':>8}"
        + "".join(f"{p:>8}" for p in PHASES)
        + f"{'GFLOP/s':>9}{'others':>8}"
    )
    for r in results:
        m = r["median_s"]
        print(
            f"{r['variant']:<11}{r['batch_size']:>6}{m['total']:>8.2f}"
            + "".join(f"{m[p]:>8.3f}" for p in PHASES)
            + f"{gflop / m['score']:>9.1f}{m['others_cores']:>8.2f}"
        )
    part2 = _part2(dataset, user, item, opts) if dataset is not None else {}

    RESULTS.mkdir(exist_ok=True)
    payload = {
        "shape": {"num_users": NUM_USERS, "num_items": NUM_ITEMS, "dim": opts.dim, "k": 20},
        "pairs": source,
        "threads": opts.threads,
        "openblas_thread_timeout": os.environ.get("OPENBLAS_THREAD_TIMEOUT"),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_after": os.getloadavg(),
        "repeats": opts.repeats,
        "gflop": gflop,
        "results": results,
        "gowalla_command": part2,
    }
    (RESULTS / "evaluate.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {RESULTS / 'evaluate.json'}")


if __name__ == "__main__":
    main()
