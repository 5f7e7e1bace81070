"""Evidence for the stopping rule: where it stops, against a run that never stops, on several graph shapes.

For each shape, one XSimGCL run (honest protocol, the default configuration) trains for ``--max-steps``
optimiser steps without stopping and records valid Recall@20 after every epoch. A run's trajectory does
not depend on when it would stop, so every stopping rule can then be replayed on that one curve exactly:
the rule's selected value is the best valid Recall@20 up to the epoch where it fires. Reported per shape:
the never-stopping run's best, the default rule's stop and selected value (and its share of the best),
and the old rule (5 evaluations of patience) for comparison.

Shapes: ``sample`` (the bundled demo log: ~1k users, 8 batches per epoch), ``gowalla-u20`` (20 % of
gowalla's users with their items, 5-core), ``generated`` (a ``recsys generate`` log with topic structure),
and ``gowalla`` itself when given the artifacts of long honest runs (``--gowalla-runs``), e.g. from
``recsys train --dataset D --model xsimgcl --min-steps 1000000000 --epochs 40 --out A``.

    python benchmarks/stopping.py --threads 2
    python benchmarks/stopping.py --shapes sample --presets fast --max-steps 6000 --gowalla-runs A,B
    python benchmarks/stopping.py --replay A,B --patience 250,500,1000,2500 --min-steps 0   # finished runs
"""

from __future__ import annotations

from recsys.runtime import configure_cpu_runtime

configure_cpu_runtime()  # before numpy and torch load

import argparse
import json
import logging
import math
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from graphs import GRAPHS
from train import GOWALLA, RESULTS, merged_with_earlier, write_rows

from recsys.artifact import read_history
from recsys.config import PRESETS, TrainConfig, config_from_dict
from recsys.data.dataset import Dataset, load_dataset
from recsys.training.loop import fit, should_stop

METRIC = "recall@20"
OLD_PATIENCE_EVALS = 5  # the rule this one replaced: 5 evaluations without improvement


SHAPES = {name: GRAPHS[name] for name in ("sample", "gowalla-u20", "generated")}  # gowalla: --gowalla-runs


def never_stopping_run(data: Dataset, preset: str, max_steps: int, threads: int) -> list[dict[str, Any]]:
    """Epoch records of an XSimGCL run of ``preset`` that trains ``max_steps`` steps and never stops."""
    cfg = config_from_dict({"model": "xsimgcl", "preset": preset, "threads": threads})
    steps_per_epoch = math.ceil(data.train.size(1) / cfg.batch_size)
    cfg = replace(cfg, epochs=math.ceil(max_steps / steps_per_epoch), min_steps=10**12)
    return fit(data, cfg, progress=False).history


def replay(history: list[dict[str, Any]], split: str = "valid") -> dict[str, Any]:
    """Where the default rule and the old evaluation-count rule stop on one recorded curve."""
    rules = {"default": _default_rule(TrainConfig()), "old": _old_rule()}
    return replay_rules(history, rules, split)


def replay_rules(
    history: list[dict[str, Any]], rules: dict[str, Rule], split: str = "valid"
) -> dict[str, Any]:
    """Where each of ``rules`` stops on one recorded curve, and the value it selects there."""
    curve = [(r["epoch"], r["step"], r[split][METRIC]) for r in history if split in r]
    best = max(curve, key=lambda c: c[2])
    row: dict[str, Any] = {
        "epochs": len(history),
        "steps_per_epoch": curve[0][1] // curve[0][0],
        "unlimited_best": best[2],
        "unlimited_best_epoch": best[0],
    }
    for name, fires in rules.items():
        best_value, best_epoch, best_step, stop_epoch, stop_step = float("-inf"), 0, 0, None, None
        for index, (epoch, step, value) in enumerate(curve):
            if value > best_value:
                best_value, best_epoch, best_step = value, epoch, step
            if fires(index, step, best_step, curve):
                stop_epoch, stop_step = epoch, step
                break
        row[f"{name}_stop_epoch"] = stop_epoch  # None: it would not have stopped within the recorded run
        row[f"{name}_stop_step"] = stop_step
        row[f"{name}_best"] = best_value
        row[f"{name}_best_epoch"] = best_epoch
        row[f"{name}_share"] = round(best_value / best[2], 4)
    return row


def replay_artifacts(artifacts: list[Path], patience: list[int], min_steps: int) -> None:
    """Replay the step rule at each ``patience`` on finished runs' curves (their ``log.jsonl``).

    Exact for runs that went on past where each rule fires, e.g. warm starts stopped by a longer patience.
    """
    print(
        f"\nvalid {METRIC} selected, and the step where the rule fires, by patience (min_steps {min_steps})"
    )
    print(f"{'run':>48}{'best (step)':>20}" + "".join(f"{'patience ' + str(p):>24}" for p in patience))
    for artifact in artifacts:
        history = read_history(artifact)
        rules: dict[str, Rule] = {
            str(p): _default_rule(replace(TrainConfig(), patience_steps=p, min_steps=min_steps))
            for p in patience
        }
        row = replay_rules(history, rules)
        best_step = history[row["unlimited_best_epoch"] - 1]["step"]
        cells = [f"{row[f'{p}_best']:.4f} (stop {row[f'{p}_stop_step'] or 'none'})" for p in patience]
        best = f"{row['unlimited_best']:.4f} ({best_step})"
        print(f"{str(artifact)[-48:]:>48}{best:>20}" + "".join(f"{c:>24}" for c in cells))


Rule = Callable[[int, int, int, list[tuple[int, int, float]]], bool]


def _default_rule(cfg: TrainConfig) -> Rule:
    return lambda index, step, best_step, curve: should_stop(cfg, step, best_step)


def _old_rule() -> Rule:
    def fires(index: int, step: int, best_step: int, curve: list[tuple[int, int, float]]) -> bool:
        best_index = next(i for i, c in enumerate(curve) if c[1] == best_step)
        return index - best_index >= OLD_PATIENCE_EVALS

    return fires


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--shapes", default=",".join(SHAPES), help="comma-separated, from " + ", ".join(SHAPES)
    )
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated presets to run")
    parser.add_argument("--max-steps", type=int, default=12_000, help="length of each never-stopping run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--gowalla-runs",
        help="comma-separated artifacts of long never-stopping honest gowalla runs to replay",
    )
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "recsys-bench")
    parser.add_argument(
        "--replay",
        help="instead: comma-separated finished artifacts whose curves to replay the rule on, at --patience",
    )
    parser.add_argument("--patience", default="250,500,1000,2500", help="patience_steps values to replay")
    parser.add_argument("--min-steps", type=int, default=0, help="min_steps of the replayed rules")
    opts = parser.parse_args()
    if opts.replay:
        patience = [int(p) for p in opts.patience.split(",")]
        replay_artifacts([Path(a) for a in opts.replay.split(",")], patience, opts.min_steps)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    opts.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for shape in filter(None, opts.shapes.split(",")):
        if shape == "gowalla-u20" and not (GOWALLA / "train.txt").is_file():
            sys.exit(f"gowalla not found at {GOWALLA}")
        data = load_dataset(SHAPES[shape](opts.workdir))
        for preset in opts.presets.split(","):
            history = never_stopping_run(data, preset, opts.max_steps, opts.threads)
            row = {"shape": shape, "preset": preset, "train_pairs": data.train.size(1), **replay(history)}
            logging.info("%s", row)
            rows.append({**row, "history": history})
    for artifact in opts.gowalla_runs.split(",") if opts.gowalla_runs else []:
        config = json.loads((Path(artifact) / "config.json").read_text())["config"]
        history = read_history(Path(artifact))
        rows.append(
            {
                "shape": "gowalla",
                "preset": config["preset"],
                "train_pairs": 727_874,
                **replay(history),
                "history": history,
            }
        )
    rows = merged_with_earlier(RESULTS / "stopping.json", rows, ("shape", "preset"))
    cols = [
        "shape",
        "preset",
        "steps_per_epoch",
        "epochs",
        "unlimited_best",
        "unlimited_best_epoch",
        "default_stop_epoch",
        "default_best",
        "default_share",
        "old_stop_epoch",
        "old_best",
        "old_share",
    ]
    print("\nXSimGCL, honest protocol, valid Recall@20; stop epochs are where each rule fires")
    print("".join(f"{c:>21}" for c in cols))
    for r in rows:
        print("".join(f"{r.get(c)!s:>21}" for c in cols))
    write_rows(RESULTS / "stopping.json", opts.threads, rows)


if __name__ == "__main__":
    main()
