"""A training run's parts and state: built before the first epoch, carried between epochs, checkpointed.

:func:`prepare_run` builds what every replica of a run needs (graph, model, optimiser, sampler, generators,
the selection split); :class:`TrainState` is what the epoch loop (:mod:`recsys.training.loop`) carries from
epoch to epoch; :func:`save_checkpoint` and :func:`load_checkpoint` write and restore both, so a resumed run
ends exactly as an uninterrupted one. The loop of this process and the Ray Train workers
(:mod:`recsys.training.distributed`) share all of it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from recsys.config import TrainConfig
from recsys.data.dataset import Dataset
from recsys.data.graph import NodeOrder, build_graph
from recsys.data.protocol import excluded_splits, selection_split, training_splits
from recsys.data.sampling import NegativeSampler
from recsys.errors import InputError
from recsys.evaluation.metrics import DEFAULT_KS
from recsys.models.base import EmbeddingModel
from recsys.models.build import build_model
from recsys.training.metanode import ContrastiveNegatives
from recsys.training.objectives import OBJECTIVES, Objective

if TYPE_CHECKING:
    from recsys.training.warmstart import WarmStart

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "log.jsonl"


@dataclass
class TrainRun:
    """What one training run builds before its first epoch; pairs and weights are in the training labels.

    Args:
        dataset: The dataset, in its own labels.
        cfg: The resolved configuration.
        device: Where the model and the training pairs live.
        order: The locality relabelling of users and items (see :class:`NodeOrder`).
        train_pairs: The interactions trained on, in the dataset's labels, ``(2, E)``, on CPU.
        pairs: The same in the training labels, on ``device``.
        adj: Normalised adjacency (``None`` for MF).
        model: The model.
        optimizer: Adam over the model's parameters.
        objective: The model family's loss.
        sampler: Negative sampler over ``pairs``.
        sample_rng: Shuffles and draws negatives; the same stream on every replica.
        noise_rng: Perturbation noise of SimGCL/XSimGCL; one stream per replica.
        negatives: State of the contrastive negatives.
        eval_split: The selection split (``valid``, or ``test`` under ``paper``).
        truth: The selection split's pairs, training labels, on ``device``.
        exclude: Pairs masked when evaluating it, training labels, on ``device``.
        ks: Cut-offs of the metrics.
        refit_steps: For a refit (``cfg.refit``, after selection): train on the refit's splits for exactly
            this many steps, without selection; ``None`` for a selection run.
    """

    dataset: Dataset
    cfg: TrainConfig
    device: torch.device
    order: NodeOrder
    train_pairs: Tensor
    pairs: Tensor
    adj: Tensor | None
    model: EmbeddingModel
    optimizer: torch.optim.Optimizer
    objective: Objective
    sampler: NegativeSampler
    sample_rng: torch.Generator
    noise_rng: torch.Generator
    negatives: ContrastiveNegatives
    eval_split: str
    truth: Tensor
    exclude: Tensor
    ks: tuple[int, ...]
    refit_steps: int | None = None


NOISE_SEED_STRIDE = 2**32  # replica r's noise seed is seed + 2 + r * stride: no other run's stream reuses it


def prepare_run(
    dataset: Dataset,
    cfg: TrainConfig,
    device: torch.device,
    *,
    rank: int = 0,
    init: WarmStart | None = None,
    refit_steps: int | None = None,
) -> TrainRun:
    """Build the graph, model, optimiser, sampler and generators of a run of resolved ``cfg``.

    Every replica builds the same run (same initial weights, same sampling stream, so the shards of each
    epoch partition one global permutation), except for the noise stream, which is seeded per ``rank``;
    rank 0's is the single-process one. With ``init`` the random layer 0 is then overwritten by a warm
    start (the random rows stay where nothing is known); the optimiser starts fresh either way. With
    ``refit_steps`` the run is ``cfg.refit``'s: on the splits the refit learns (:mod:`recsys.data.protocol`).
    """
    eval_split = selection_split(cfg.protocol)
    pairs = dataset.pairs(training_splits(cfg.protocol, cfg.refit if refit_steps is not None else "none"))
    exclude = dataset.pairs(excluded_splits(eval_split, cfg.protocol))
    if pairs.size(1) == 0:
        msg = f"{dataset.path}: no training interactions"
        raise InputError(msg)
    # Train in a cache-friendly labelling of users and items; results are mapped back at the end.
    order = NodeOrder.locality(pairs, dataset.num_users, dataset.num_items)
    original_pairs, pairs, exclude = pairs, order.pairs(pairs), order.pairs(exclude)
    graph = build_graph(pairs, dataset.num_users, dataset.num_items).to(device)
    model = build_model(cfg, dataset.num_users, dataset.num_items)
    model.reset_parameters(torch.Generator().manual_seed(cfg.seed))
    if init is not None:
        init.initialise(model, order)
    model.to(device)
    pairs = pairs.to(device)
    ks = tuple(sorted({*DEFAULT_KS, int(cfg.metric.split("@")[1])})) if "@" in cfg.metric else DEFAULT_KS
    return TrainRun(
        dataset=dataset,
        cfg=cfg,
        device=device,
        order=order,
        train_pairs=original_pairs.cpu(),
        pairs=pairs,
        adj=graph.adj if cfg.spec.uses_graph else None,
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True),  # one kernel per step
        objective=OBJECTIVES[cfg.model],
        sampler=NegativeSampler(pairs, dataset.num_items).to(device),
        sample_rng=torch.Generator(device=device).manual_seed(cfg.seed + 1),
        noise_rng=torch.Generator(device=device).manual_seed(cfg.seed + 2 + rank * NOISE_SEED_STRIDE),
        negatives=ContrastiveNegatives.from_config(cfg, pairs, dataset.num_users, dataset.num_items),
        eval_split=eval_split,
        truth=order.pairs(dataset.split(eval_split)).to(device),
        exclude=exclude.to(device),
        ks=ks,
        refit_steps=refit_steps,
    )


@dataclass
class TrainState:
    """What the loop carries from epoch to epoch (and what a checkpoint restores)."""

    epoch: int = 0
    step: int = 0
    best_epoch: int = 0
    best_step: int = 0
    best_value: float = float("-inf")
    stopped: bool = False
    best_state: dict[str, Tensor] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


def save_checkpoint(
    directory: Path, run: TrainRun, state: TrainState, *, noise_rngs: list[Tensor] | None = None
) -> None:
    """Everything needed to continue bit-for-bit, as tensors and plain values (``weights_only`` loadable).

    Args:
        directory: Where ``checkpoint.pt`` and ``log.jsonl`` go.
        run: The run.
        state: The loop's state.
        noise_rngs: Every replica's noise generator state, by rank, when there are several.
    """
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": run.cfg.to_dict(),
        "epoch": state.epoch,
        "best_epoch": state.best_epoch,
        "best_value": state.best_value,
        "step": state.step,
        "best_step": state.best_step,
        "stopped": state.stopped,
        "best_state": state.best_state,
        "history": state.history,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "sample_rng": run.sample_rng.get_state(),
        "noise_rng": run.noise_rng.get_state(),
        "negatives": run.negatives.state_dict(),
        "refit_steps": run.refit_steps,
    }
    if noise_rngs is not None:
        payload["noise_rngs"] = noise_rngs
    tmp = directory / f".{CHECKPOINT_FILE}.tmp"
    torch.save(payload, tmp)
    tmp.replace(directory / CHECKPOINT_FILE)  # atomic: a kill mid-write keeps the previous checkpoint
    (directory / LOG_FILE).write_text("".join(json.dumps(r) + "\n" for r in state.history))


def load_checkpoint(directory: Path, run: TrainRun, *, rank: int = 0) -> TrainState:
    """Restore ``run`` (replica ``rank``'s noise stream too) from ``directory/checkpoint.pt``.

    Raises:
        InputError: the checkpoint is unreadable or was made with a different config.
    """
    path = directory / CHECKPOINT_FILE
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        msg = f"--resume: cannot read {path}: {exc}"
        raise InputError(msg) from exc
    # A key the checkpoint lacks is a field added since it was written: it ran with that field's default.
    saved = {**{f.name: f.default for f in fields(TrainConfig)}, **payload["config"]}
    # The epoch cap may change: a run can be extended, or ended where it is (a cap at the epoch reached).
    # So may what happens after selection (a refit keeps its own checkpoint, one directory per refit).
    current = {**run.cfg.to_dict(), **{k: saved[k] for k in ("epochs", "refit", "baseline_check")}}
    if saved != current:
        changed = sorted(k for k, v in current.items() if saved.get(k) != v)
        msg = f"--resume: the checkpoint at {path} was made with a different config ({', '.join(changed)})"
        raise InputError(msg)
    if payload.get("refit_steps") != run.refit_steps:  # absent: written before refits, by a selection run
        msg = (
            f"--resume: the checkpoint at {path} is of a {_run_kind(payload.get('refit_steps'))}, "
            f"not of a {_run_kind(run.refit_steps)}"
        )
        raise InputError(msg)
    run.model.load_state_dict(payload["model"])
    run.optimizer.load_state_dict(payload["optimizer"])
    run.sample_rng.set_state(payload["sample_rng"])
    run.noise_rng.set_state(payload["noise_rngs"][rank] if "noise_rngs" in payload else payload["noise_rng"])
    run.negatives.load_state_dict(payload.get("negatives", {}))  # k-means clusters and their generator
    return TrainState(
        epoch=payload["epoch"],
        best_epoch=payload["best_epoch"],
        best_value=payload["best_value"],
        step=payload["step"],
        best_step=payload["best_step"],
        stopped=payload["stopped"],
        best_state=payload["best_state"],
        history=payload["history"],
    )


def _run_kind(refit_steps: int | None) -> str:
    return "selection run" if refit_steps is None else f"refit of {refit_steps:,} steps"
