"""Fast against reference preset: the accuracy each converges to, over seeds, on several graphs.

Whether ``--preset fast`` can be the default turns on a gap of about 1 % at convergence, which is the size
of what a seed changes. So each graph trains XSimGCL with each preset and several seeds: one run each,
honest protocol (train on train, select on valid, test once), ended by the default stopping rule, every
other setting the default. A seed fixes the initialisation, the batches and the noise, so the two presets'
runs of one seed differ only in the preset, and their difference is read pairwise.

Each run's row (selected epoch, valid and test Recall@20 / NDCG@20, training seconds to the best and in all)
is added to ``benchmarks/results/presets<tag>.json`` as soon as it ends; re-running the same command skips
finished runs and resumes an interrupted one from its checkpoint (same ``--threads``). Then, per graph, it
prints each preset's mean and range over seeds and the paired differences fast − reference.

    python benchmarks/presets.py --graphs gowalla-u20,generated,sample --seeds 0,1,2 --threads 1
"""

from __future__ import annotations

from recsys.runtime import configure_cpu_runtime

configure_cpu_runtime()  # before numpy and torch load

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from graphs import GRAPHS, missing_source
from train import RESULTS, train_or_resume

from recsys.artifact import read_history, read_json_object
from recsys.atomic import atomic_write_text
from recsys.config import PRESETS, TrainConfig, config_from_dict

METRIC = "recall@20"


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run: a graph, a preset and a seed."""

    graph: str
    preset: str
    seed: int

    def out(self, workdir: Path) -> Path:
        """Its artifact directory (checkpoints in ``<dir>.ckpt`` until it ends)."""
        return workdir / "preset-runs" / self.graph / f"xsimgcl-{self.preset}-seed{self.seed}"


def run_config(run: Run, threads: int) -> TrainConfig:
    values = {"model": "xsimgcl", "preset": run.preset, "seed": run.seed, "threads": threads}
    return config_from_dict({**values, "protocol": "honest"}).resolved()


def train_run(run: Run, dataset: Path, cfg: TrainConfig, workdir: Path) -> dict[str, Any]:
    """Train (or resume, or read back) one run and return its row."""
    out = run.out(workdir)
    train_or_resume(dataset, cfg, out, run)
    metrics = read_json_object(out / "metrics.json")
    records = read_history(out)
    best = next(i for i, r in enumerate(records) if r["epoch"] == metrics["best_epoch"])
    return {
        **dataclasses.asdict(run),
        "threads": cfg.threads,
        "best_epoch": metrics["best_epoch"],
        "best_step": records[best]["step"],
        "epochs": len(records),
        "valid_recall@20": metrics["valid"][METRIC],
        "test_recall@20": metrics["test"][METRIC],
        "test_ndcg@20": metrics["test"]["ndcg@20"],
        "train_s_to_best": round(sum(r["train_seconds"] for r in records[: best + 1]), 1),
        "train_s": round(sum(r["train_seconds"] for r in records), 1),
    }


def report(rows: list[dict[str, Any]], graphs: list[str], presets: list[str]) -> None:
    """Per graph: each preset's mean (min–max) over seeds, then the paired differences to the first preset."""
    for graph in graphs:
        print(f"\n{graph}: XSimGCL, honest protocol, default stopping rule (mean, min–max over seeds)")
        print("| preset | seeds | valid R@20 | test R@20 | test NDCG@20 | best epoch | train s to best |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        by_preset = {
            p: {r["seed"]: r for r in rows if r["graph"] == graph and r["preset"] == p} for p in presets
        }
        for preset, runs in by_preset.items():
            if not runs:
                continue
            cells = [
                _spread([r[key] for r in runs.values()], digits)
                for key, digits in (
                    ("valid_recall@20", 4),
                    ("test_recall@20", 4),
                    ("test_ndcg@20", 4),
                    ("best_epoch", 0),
                    ("train_s_to_best", 0),
                )
            ]
            print(f"| {preset} | {len(runs)} | " + " | ".join(cells) + " |")
        base = presets[0]
        for preset in presets[1:]:
            seeds = sorted(set(by_preset[base]) & set(by_preset[preset]))
            for key in ("valid_recall@20", "test_recall@20"):
                diffs = [by_preset[preset][s][key] / by_preset[base][s][key] - 1 for s in seeds]
                if diffs:
                    listed = ", ".join(f"{d:+.1%}" for d in diffs)
                    mean = statistics.mean(diffs)
                    print(f"{preset} against {base}, {key}, seed by seed: {listed} (mean {mean:+.1%})")


def _spread(values: list[float], digits: int) -> str:
    mean = statistics.mean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--graphs", default="gowalla-u20,generated,sample", help="comma-separated graphs")
    parser.add_argument(
        "--presets", default="reference,fast", help="comma-separated; differences to the first"
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--tag", default="", help="suffix of the result file name")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "recsys-bench",
        help="datasets, and the runs (<workdir>/preset-runs: artifacts and checkpoints)",
    )
    opts = parser.parse_args()
    graphs, presets = opts.graphs.split(","), opts.presets.split(",")
    seeds = [int(s) for s in opts.seeds.split(",")]
    problems = [p for p in map(missing_source, graphs) if p] + [
        f"unknown preset {p!r}; expected one of {', '.join(PRESETS)}" for p in presets if p not in PRESETS
    ]
    if problems:
        sys.exit("\n".join(problems))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    path = RESULTS / f"presets{opts.tag}.json"
    rows: list[dict[str, Any]] = json.loads(path.read_text())["rows"] if path.is_file() else []
    RESULTS.mkdir(exist_ok=True)
    for graph in graphs:
        dataset = GRAPHS[graph](opts.workdir)
        for seed in seeds:
            for preset in presets:
                run = Run(graph, preset, seed)
                row = train_run(run, dataset, run_config(run, opts.threads), opts.workdir)
                rows = [r for r in rows if (r["graph"], r["preset"], r["seed"]) != (graph, preset, seed)]
                rows.append(row)
                atomic_write_text(path, json.dumps({"rows": rows}, indent=2) + "\n")
    report(rows, graphs, presets)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
