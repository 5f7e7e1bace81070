r"""Warm-start variants on a refresh benchmark's data: which start reaches the cold retrain's best soonest.

``benchmarks/refresh.py`` compares the product's warm start (``--init-from``, optionally ``--init-shrink``)
with a cold retrain. This harness tries starts the product does not offer, on the same datasets and parent,
to find out whether any of them meets the issue's goal (99 % of the cold run's best valid Recall@20 in 30 %
of its time) where the plain warm start does not (gowalla):

* ``shrink``: the parent's rows multiplied by a factor first (as ``--init-shrink``);
* ``lr`` and other config overrides (JSON), e.g. a larger learning rate to regrow shrunk rows;
* ``replay R``: each epoch trains on the pairs the parent was not trained on (matched by raw id to its
  ``seen.npz``) plus ``R`` times as many of its old pairs, drawn afresh: a warm "epoch" then costs a
  fraction of a cold one, and the old pairs, already fitted, are revisited less;
* ``part F``: each epoch is a random ``F`` of all pairs, to read the valid curve at a finer step.

The two sampling variants replace ``recsys.training.loop.epoch_batches`` for the run (this process only): they
are experiments, not features. Cost is reported in optimiser steps, which a warm and a cold step share, so the
figures hold on a machine shared with other jobs; seconds are printed too.

    python benchmarks/warm_variants.py --workdir /tmp/exp2/refresh --preset fast --shrink 0.3 --replay 1
    python benchmarks/warm_variants.py --workdir /tmp/exp2/refresh --preset fast --shrink 0.3 \\
        --overrides '{"lr": 0.01}' --part 0.5 --epochs 3

``--workdir`` is a ``benchmarks/refresh.py`` work directory after a run on that graph (it holds the full
dataset, the old model ``runs/<preset>/<graph>-old`` and the cold retrain
``runs/<preset>/<graph>-cold``).
"""

from __future__ import annotations

from recsys.runtime import configure_cpu_runtime

configure_cpu_runtime()  # before numpy and torch load

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from refresh import GOAL_ACCURACY, GOAL_TIME, GRAPHS, METRIC
from torch import Tensor
from train import RESULTS, merged_with_earlier, write_rows

import recsys.training.loop as training
from recsys.artifact import read_history, read_json_object
from recsys.data.dataset import load_dataset
from recsys.data.sampling import NegativeSampler
from recsys.inference.topk import ChunkedPairs
from recsys.training.objectives import Batch
from recsys.training.warmstart import Parent, WarmStart, load_parent


def trained_by_parent(start: WarmStart) -> Tensor:
    """Boolean per training pair of the new dataset: did the parent train on it (same raw user and item)."""
    artifact = start.parent.artifact
    num_users, num_items = artifact.users.height, artifact.items.height
    indptr = torch.from_numpy(artifact.seen_indptr).long()
    rows = torch.repeat_interleave(torch.arange(num_users), indptr.diff())
    seen_pairs = torch.stack([rows, torch.from_numpy(artifact.seen_indices).long()])
    seen = ChunkedPairs(seen_pairs, torch.arange(num_users), num_users, num_items)
    user, item = start.user_match[start.pairs[0]], start.item_match[start.pairs[1]]
    known = (user >= 0) & (item >= 0)
    return known & seen.contains(user.clamp(min=0) * num_items + item.clamp(min=0))


def sample_epochs(old: Tensor, replay: float | None, part: float | None) -> None:
    """Make each epoch of this process's training loop a ``replay`` or ``part`` selection of the pairs.

    ``old`` marks the pairs the parent trained on, in the order of the run's pairs (the training labels
    keep the dataset's pair order).
    """
    plain = training.epoch_batches
    new_index, old_index = (~old).nonzero().squeeze(1), old.nonzero().squeeze(1)

    def epoch_batches(
        pairs: Tensor, sampler: NegativeSampler, batch_size: int, generator: torch.Generator
    ) -> list[Batch]:
        if replay is not None:
            draw = old_index[
                torch.randperm(old_index.numel(), generator=generator)[: round(replay * new_index.numel())]
            ]
            chosen = torch.cat([new_index, draw])
        else:
            assert part is not None
            chosen = torch.randperm(pairs.size(1), generator=generator)[: int(part * pairs.size(1))]
        return plain(pairs[:, chosen], sampler, batch_size, generator)

    training.epoch_batches = epoch_batches


def run(opts: argparse.Namespace) -> dict[str, Any]:
    """One variant: train from the parent, and read the cold retrain's curve beside it."""
    runs = opts.workdir / "runs" / opts.preset
    dataset = load_dataset(GRAPHS[opts.graph](opts.workdir))  # there already: the refresh run built it
    parent_runs = opts.workdir / "runs" / (opts.parent_preset or opts.preset)
    parent: Parent = load_parent(parent_runs / f"{opts.graph}-old", opts.shrink)
    overrides = {"threads": opts.threads, "epochs": opts.epochs, **json.loads(opts.overrides)}
    cfg = parent.inherit_config(overrides)
    start = WarmStart.match(parent, dataset, cfg.protocol)
    old = trained_by_parent(start)
    print(f"pairs: {int((~old).sum())} new to the parent, {int(old.sum())} trained on by it", flush=True)
    if opts.replay is not None or opts.part is not None:
        sample_epochs(old, opts.replay, opts.part)
    cold_dir = runs / f"{opts.graph}-cold"
    cold_best = read_json_object(cold_dir / "metrics.json")
    cold_log = read_history(cold_dir)
    best, cold_steps = cold_best["valid"][METRIC], cold_log[cold_best["best_epoch"] - 1]["step"]
    curve: list[dict[str, Any]] = []
    tic = time.perf_counter()

    def mark(record: dict[str, Any]) -> None:
        value = record.get("valid", {}).get(METRIC)
        curve.append({"epoch": record["epoch"], "step": record["step"], "valid": value})
        share = record["step"] / cold_steps
        seconds = time.perf_counter() - tic
        print(
            f"epoch {record['epoch']}: step {record['step']} ({share:.0%} of the cold run's steps to its "
            f"best), valid {METRIC} {value:.4f} ({value / best:.1%} of its best), {seconds:.0f} s",
            flush=True,
        )

    result = training.fit(dataset, cfg, progress=False, callback=mark, init=start)
    reach = next((c["step"] for c in curve if c["valid"] >= GOAL_ACCURACY * best), None)
    cold_test = cold_best["test"][METRIC]
    return {
        "graph": opts.graph,
        "preset": opts.preset,
        "variant": describe(opts),
        "parent_preset": opts.parent_preset or opts.preset,
        "shrink": opts.shrink,
        "overrides": json.loads(opts.overrides),
        "replay": opts.replay,
        "part": opts.part,
        "pairs": {"new_to_parent": int((~old).sum()), "trained_by_parent": int(old.sum())},
        "cold_best_valid": best,
        "cold_steps_to_best": cold_steps,
        "curve": curve,
        "steps_to_99": reach,
        "step_share_to_99": None if reach is None else round(reach / cold_steps, 3),
        "best_valid": result.selection[METRIC],
        "test": result.test[METRIC],
        "test_share": round(result.test[METRIC] / cold_test, 4),
        "goal_met": reach is not None
        and reach <= GOAL_TIME * cold_steps
        and result.test[METRIC] >= GOAL_ACCURACY * cold_test,
    }


def describe(opts: argparse.Namespace) -> str:
    """The variant in a few words, the key of its row in the results."""
    words = [f"shrink {opts.shrink:g}"]
    if opts.parent_preset and opts.parent_preset != opts.preset:
        words.append(f"parent {opts.parent_preset}")
    if opts.overrides.strip() not in ("", "{}"):
        words.append(json.dumps(json.loads(opts.overrides), sort_keys=True))
    if opts.replay is not None:
        words.append(f"replay {opts.replay:g}")
    if opts.part is not None:
        words.append(f"part {opts.part:g}")
    return ", ".join(words)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, required=True, help="a benchmarks/refresh.py work directory")
    parser.add_argument("--graph", choices=GRAPHS, default="gowalla", help="the graph refresh.py ran on")
    parser.add_argument("--preset", default="fast", help="whose old model and cold retrain (runs/<preset>)")
    parser.add_argument("--parent-preset", help="whose old model to start from (default: --preset)")
    parser.add_argument("--shrink", type=float, default=1.0, help="multiply the parent's rows first")
    parser.add_argument("--overrides", default="{}", help="config overrides as JSON, e.g. '{\"lr\": 0.01}'")
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--replay", type=float, help="epochs of the new pairs + this many times as many old ones"
    )
    group.add_argument("--part", type=float, help="epochs of this random share of all pairs")
    parser.add_argument("--epochs", type=int, default=4, help="how many (short) epochs to train")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--no-write", action="store_true", help=f"do not write {RESULTS / 'warm_variants.json'}"
    )
    opts = parser.parse_args()
    row = run(opts)
    reach = row["steps_to_99"]
    reached = f"after {reach} steps ({reach / row['cold_steps_to_best']:.0%})" if reach else "never"
    print(
        f"{row['variant']}: cold best {row['cold_best_valid']:.4f} after {row['cold_steps_to_best']} steps; "
        f"99 % of it reached {reached}; best valid {row['best_valid']:.4f}, test {row['test']:.4f} "
        f"({row['test_share']:.1%} of the cold retrain's); goal met: {row['goal_met']}"
    )
    if not opts.no_write:
        out = RESULTS / "warm_variants.json"
        key = ("graph", "preset", "variant")
        write_rows(out, opts.threads, merged_with_earlier(out, [row], key))


if __name__ == "__main__":
    main()
