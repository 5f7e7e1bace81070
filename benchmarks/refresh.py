"""Evidence for warm start: a warm start on new data against a cold retrain.

Per graph, the training interactions of the full dataset are split into an older 80 % and a newer 20 %: by
time where the log has timestamps (one global cut at the 80 % time quantile, so new users and items
appear), per user at random where it has none (gowalla). An old model is trained (cold, the default
configuration and stopping rule) on a dataset of the older part, ingested like any other (``--split preset``:
the full test pairs, valid carved out of the old part). Then, on the full dataset, with the same config,
seed and threads, under the honest protocol and the default stopping rule:

* ``cold``: a retrain from a random initialisation;
* ``warm``: ``--init-from`` the old model (its layer 0 by raw id; Adam fresh).

Times are wall seconds from the start of ``train_artifact`` (dataset load, graph, initialisation included)
to the end of each epoch. Reported: the cold run's best valid Recall@20 and the time to reach it; the warm
run's time to reach 99 % and 100 % of that value; the test Recall@20 / NDCG@20 each run selects; and the
steps each run trained before its stopping rule ended it (``run_step_share``: the warm run's over the cold
one's, what a refresh costs against a retrain end to end). Goal: the
warm run's test Recall@20 is at least 99 % of the cold retrain's, and it reaches 99 % of the cold run's best
valid Recall@20 in at most 30 % of the cold run's time to that best.

    python benchmarks/refresh.py --graphs generated,gowalla --threads 2
    python benchmarks/refresh.py --graphs tiny --max-epochs 3 --no-write      # a smoke run
"""

from __future__ import annotations

from recsys.runtime import configure_cpu_runtime

configure_cpu_runtime()  # before numpy and torch load

import argparse
import itertools
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import polars as pl
from graphs import generated, gowalla_full
from train import GOWALLA, RESULTS, merged_with_earlier, trained_with, write_rows

from pipelines import IngestConfig, ingest
from pipelines.readers import LogSpec
from recsys.artifact import read_history, read_json_object
from recsys.config import DEFAULT_PRESET, PRESETS, TrainConfig, config_from_dict
from recsys.training.jobs import train_artifact
from recsys.training.run import CHECKPOINT_FILE
from recsys.training.warmstart import load_parent

METRIC = "recall@20"
OLD_SHARE = 0.8
GOAL_ACCURACY, GOAL_TIME = 0.99, 0.30


def generated_graph(workdir: Path, users: int = 6000, items: int = 4000, events: int = 200_000) -> Path:
    """A generated log with timestamps (for the cut by time), ingested without its ratings."""
    return generated(workdir, users, items, events, name=f"generated-{users}", ratings=False)


GRAPHS: dict[str, Callable[[Path], Path]] = {
    "gowalla": gowalla_full,
    "generated": generated_graph,
    "tiny": lambda workdir: generated_graph(workdir, 400, 200, 10_000),
}


def old_part(full: Path, out: Path, seed: int = 0) -> tuple[Path, str]:
    """A dataset of the older 80 % of ``full``'s training interactions (by time, else per user at random).

    Returns:
        The dataset directory and how the cut was made.
    """
    if (out / "meta.json").exists():
        return out, (out / "cut.txt").read_text().strip()
    users = pl.read_parquet(full / "users.parquet").rename({"raw_id": "user_id"})
    items = pl.read_parquet(full / "items.parquet").rename({"raw_id": "item_id"})
    train = pl.read_parquet(full / "train.parquet")
    if "timestamp" in train.columns:
        cut = train["timestamp"].quantile(OLD_SHARE, "nearest")
        old = train.filter(pl.col("timestamp") < cut)
        how = f"by time: events before the {OLD_SHARE:.0%} time quantile ({cut})"
    else:
        ranked = train.with_columns(pl.int_range(pl.len()).shuffle(seed).over("user_idx").alias("rank"))
        keep = pl.col("rank") < (pl.len().over("user_idx") * OLD_SHARE).round().clip(lower_bound=1)
        old = ranked.filter(keep)
        how = f"per user at random: {OLD_SHARE:.0%} of each user's training events (seed {seed})"

    def raw(df: pl.DataFrame) -> pl.DataFrame:
        return df.join(users, on="user_idx").join(items, on="item_idx").select("user_id", "item_id")

    out.parent.mkdir(parents=True, exist_ok=True)
    raw(old).write_csv(out.parent / f"{out.name}-train.csv")
    raw(pl.read_parquet(full / "test.parquet")).write_csv(out.parent / f"{out.name}-test.csv")
    spec = LogSpec("csv")
    ingest(
        IngestConfig(
            out=out,
            spec=spec,
            train=out.parent / f"{out.name}-train.csv",
            test=out.parent / f"{out.name}-test.csv",
            split="preset",
            seed=seed,
            force=True,
        )
    )
    (out / "cut.txt").write_text(how + "\n")
    return out, how


class Run(NamedTuple):
    """One training run as the comparison reads it: the selected epoch, its metrics, the valid curve."""

    best_epoch: int
    selection: dict[str, float]
    test: dict[str, float]
    marks: list[tuple[float, float]]  # (seconds since the start, valid Recall@20) per epoch
    steps: int  # optimiser steps until the stopping rule ended the run


def timed(
    dataset: Path,
    cfg: TrainConfig,
    out: Path,
    *,
    reuse_finished: bool = False,
    resume: bool = False,
    **options: Any,
) -> Run:
    """Train into ``out`` and time it.

    With ``reuse_finished``, a finished run of the same config in ``out`` is read instead; with ``resume``, an
    interrupted one continues from its checkpoint (``<out>.ckpt``). Such a run's seconds are its epochs'
    recorded seconds, summed (no dataset load in them).
    """
    if reuse_finished and (earlier := _finished(out, cfg)) is not None:
        logging.info("reusing %s (same config, finished)", out)
        return earlier
    resume = resume and (Path(f"{out}.ckpt") / CHECKPOINT_FILE).is_file()
    marks: list[tuple[float, float]] = []
    start = time.perf_counter()

    def mark(record: dict[str, Any]) -> None:
        if "valid" in record:
            marks.append((time.perf_counter() - start, record["valid"][METRIC]))

    result = train_artifact(
        dataset, cfg, out, force=True, progress=False, callback=mark, resume=resume, **options
    )
    if resume:  # the callback saw only the epochs after the checkpoint; the artifact's log has them all
        logging.info("resumed %s from its checkpoint", out)
        resumed = _finished(out, cfg)
        assert resumed is not None
        return resumed
    return Run(result.best_epoch, result.selection, result.test, marks, result.history[-1]["step"])


def _finished(out: Path, cfg: TrainConfig) -> Run | None:
    """The run in artifact ``out`` if it was trained with ``cfg`` (resolved), else ``None``."""
    if not trained_with(out, cfg):
        return None
    metrics = read_json_object(out / "metrics.json")
    records = read_history(out)
    seconds = list(itertools.accumulate(r["seconds"] for r in records))
    marks = [(t, r["valid"][METRIC]) for t, r in zip(seconds, records, strict=True) if "valid" in r]
    return Run(metrics["best_epoch"], metrics["valid"], metrics["test"], marks, records[-1]["step"])


def first_reach(marks: list[tuple[float, float]], target: float) -> float | None:
    """Seconds until valid Recall@20 first reached ``target`` (``None``: never)."""
    return next((seconds for seconds, value in marks if value >= target), None)


def first_epoch(marks: list[tuple[float, float]], target: float) -> int | None:
    """The first epoch whose valid Recall@20 reached ``target`` (``None``: never); contention-free."""
    return next((epoch for epoch, (_, value) in enumerate(marks, start=1) if value >= target), None)


def compare(
    name: str, workdir: Path, threads: int, max_epochs: int | None, preset: str, shrink: float, reuse: bool
) -> dict[str, Any]:
    """One graph: old model, then cold and warm runs (the parent shrunk by ``shrink``) on the full data."""
    full = GRAPHS[name](workdir)
    old, how = old_part(full, workdir / f"{name}-old")
    values: dict[str, Any] = {"model": "xsimgcl", "preset": preset, "threads": threads, "seed": 0}
    if max_epochs:
        values["epochs"] = max_epochs
    cfg = config_from_dict(values)
    runs = workdir / "runs" / preset
    logging.info("%s: old model on %s (%s)", name, old, how)
    timed(old, cfg, runs / f"{name}-old", reuse_finished=reuse, resume=reuse)
    logging.info("%s: cold retrain on %s", name, full)
    cold = timed(full, cfg, runs / f"{name}-cold", reuse_finished=reuse, resume=reuse)
    parent = load_parent(runs / f"{name}-old", shrink)
    logging.info("%s: warm start from %s (shrink %s)", name, parent.artifact.path, shrink)
    warm_dir = runs / f"{name}-warm-shrink{shrink:g}"
    warm = timed(full, parent.inherit_config({}), warm_dir, resume=reuse, init_from=parent)
    cold_marks, warm_marks = cold.marks, warm.marks

    best = cold.selection[METRIC]
    cold_to_best = cold_marks[cold.best_epoch - 1][0]
    warm_to_99 = first_reach(warm_marks, GOAL_ACCURACY * best)
    row = {
        "graph": name,
        "preset": preset,
        "init_shrink": shrink,
        "cut": how,
        "old_train_pairs": _pairs(old),
        "full_train_pairs": _pairs(full),
        "cold_best_valid": best,
        "cold_best_epoch": cold.best_epoch,
        "cold_seconds_to_best": round(cold_to_best, 1),
        "cold_seconds_total": round(cold_marks[-1][0], 1),
        "warm_seconds_to_99": None if warm_to_99 is None else round(warm_to_99, 1),
        "warm_seconds_to_100": _round(first_reach(warm_marks, best)),
        "warm_epochs_to_99": first_epoch(warm_marks, GOAL_ACCURACY * best),
        "warm_best_valid": warm.selection[METRIC],
        "warm_best_epoch": warm.best_epoch,
        "warm_seconds_total": round(warm_marks[-1][0], 1),
        "cold_steps_total": cold.steps,
        "warm_steps_total": warm.steps,
        "run_step_share": round(warm.steps / cold.steps, 3),
        "time_share_to_99": None if warm_to_99 is None else round(warm_to_99 / cold_to_best, 3),
        "cold_test": {k: cold.test[k] for k in (METRIC, "ndcg@20")},
        "warm_test": {k: warm.test[k] for k in (METRIC, "ndcg@20")},
        "test_share": round(warm.test[METRIC] / cold.test[METRIC], 4),
        "warm_init": load_parent(warm_dir).artifact.config["parent"]["init"],
        "cold_history": cold_marks,
        "warm_history": warm_marks,
    }
    share = row["time_share_to_99"]
    row["goal_met"] = bool(row["test_share"] >= GOAL_ACCURACY and share is not None and share <= GOAL_TIME)
    return row


def _pairs(dataset: Path) -> int:
    return pl.scan_parquet(dataset / "train.parquet").select(pl.len()).collect().item()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--graphs", default="generated,gowalla", help="comma-separated, from " + ", ".join(GRAPHS)
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--preset", choices=PRESETS, default=DEFAULT_PRESET, help="training preset of all runs"
    )
    parser.add_argument(
        "--init-shrink", type=float, default=1.0, help="the warm start's --init-shrink (1: off)"
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="reuse the finished old and cold runs of this config in --workdir (to try another shrink); "
        "resume any of the three runs from its checkpoint",
    )
    parser.add_argument(
        "--max-epochs", type=int, help="cap every run (a smoke run; default: the stopping rule)"
    )
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "recsys-bench-refresh")
    parser.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS / 'refresh.json'}")
    opts = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    opts.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in filter(None, opts.graphs.split(",")):
        if name == "gowalla" and not (GOWALLA / "train.txt").is_file():
            sys.exit(f"gowalla not found at {GOWALLA}")
        rows.append(
            compare(
                name, opts.workdir, opts.threads, opts.max_epochs, opts.preset, opts.init_shrink, opts.reuse
            )
        )
    cols = [
        "graph",
        "preset",
        "init_shrink",
        "cold_best_valid",
        "cold_best_epoch",
        "cold_seconds_to_best",
        "warm_epochs_to_99",
        "warm_seconds_to_99",
        "warm_seconds_to_100",
        "time_share_to_99",
        "test_share",
        "goal_met",
        "run_step_share",
    ]
    print(f"\nXSimGCL, honest protocol; warm start vs cold retrain on the full data (valid/test {METRIC})")
    print("".join(f"{c:>22}" for c in cols))
    for r in rows:
        print("".join(f"{r[c]!s:>22}" for c in cols))
        cold, warm = r["cold_test"], r["warm_test"]
        print(
            f"  test {METRIC} / ndcg@20: cold {cold[METRIC]:.4f} / {cold['ndcg@20']:.4f}, "
            f"warm {warm[METRIC]:.4f} / {warm['ndcg@20']:.4f}; {r['cut']}; init {r['warm_init']}"
        )
    if not opts.no_write:
        out = RESULTS / "refresh.json"
        write_rows(out, opts.threads, merged_with_earlier(out, rows, ("graph", "preset", "init_shrink")))


if __name__ == "__main__":
    main()
