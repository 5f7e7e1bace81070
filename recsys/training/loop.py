"""The one training loop: sample, objective, Adam step, validate, early-stop.

Readable top to bottom (nanoGPT style). The model-specific part is the objective from
:data:`recsys.training.objectives.OBJECTIVES`; everything else is shared by all four models. The same epoch
loop (:func:`train_epochs`) runs in this process (:func:`fit`) or as one of several data-parallel replicas on
Ray Train (:mod:`recsys.training.distributed`); the two differ only in the :class:`Replica` hooks. What a run
is built from, and its checkpoints, are :mod:`recsys.training.run`; loading a dataset directory and writing
the artifact around a run is :mod:`recsys.training.jobs`.

Which splits the model trains on, is selected on and is tested on is the protocol's
(:mod:`recsys.data.protocol`): under ``honest`` test is evaluated once with the selected weights; under
``paper`` the selection split is test itself, and the best test epoch is reported.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from recsys.config import TrainConfig
from recsys.data.dataset import Dataset
from recsys.data.protocol import TEST_SPLIT, excluded_splits, held_out_splits
from recsys.data.sampling import NegativeSampler
from recsys.errors import InputError
from recsys.evaluation.ranking import evaluate_embeddings
from recsys.models.base import EmbeddingModel, Embeddings
from recsys.progress import Progress
from recsys.runtime import resolve_device
from recsys.training.objectives import Batch
from recsys.training.run import (
    CHECKPOINT_FILE,
    TrainRun,
    TrainState,
    load_checkpoint,
    prepare_run,
    save_checkpoint,
)

if TYPE_CHECKING:
    from recsys.training.warmstart import WarmStart

logger = logging.getLogger(__name__)

LOSS_TERMS = ("loss", "bpr", "cl", "reg")


@dataclass
class TrainResult:
    """The outcome of :func:`fit`.

    Args:
        config: The resolved configuration.
        model: The model with the selected (best) weights, on CPU.
        embeddings: Its clean embeddings, on CPU.
        best_epoch: The selected epoch (1-based).
        selection: Metrics of the selected epoch on the selection split (valid, or test under ``paper``).
        test: Test metrics of the selected weights.
        history: One record per epoch, as written to ``log.jsonl``.
        seconds: Training wall time (this process; a resumed run counts its own part).
        train_pairs: The interactions the model was trained on, ``(2, E)``.
    """

    config: TrainConfig
    model: EmbeddingModel
    embeddings: Embeddings
    best_epoch: int
    selection: dict[str, float]
    test: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    train_pairs: Tensor | None = None


def epoch_batches(
    pairs: Tensor, sampler: NegativeSampler, batch_size: int, generator: torch.Generator
) -> list[Batch]:
    """Shuffle the training pairs and cut them into batches, each with one negative per pair."""
    perm = torch.randperm(pairs.size(1), generator=generator, device=pairs.device)
    users, pos = pairs[0, perm], pairs[1, perm]
    neg = sampler.sample(users, generator)
    return [
        Batch(users[i : i + batch_size], pos[i : i + batch_size], neg[i : i + batch_size])
        for i in range(0, users.numel(), batch_size)
    ]


def fit(
    dataset: Dataset,
    cfg: TrainConfig,
    *,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    callback: Callable[[dict[str, Any]], None] | None = None,
    init: WarmStart | None = None,
    refit_steps: int | None = None,
) -> TrainResult:
    """Train ``cfg.model`` on ``dataset`` and return the selected model.

    Args:
        dataset: The dataset (contract 1).
        cfg: The configuration (model defaults are filled in here).
        checkpoint_dir: Where ``checkpoint.pt`` and ``log.jsonl`` are written after every epoch.
        resume: Continue from ``checkpoint_dir/checkpoint.pt``; ends exactly as an uninterrupted run.
        progress: Report progress within each epoch (:mod:`recsys.progress`: a bar on a terminal, else a
            line every 30 s).
        callback: Called with each epoch's record (the one extension point).
        init: Start from a trained artifact's layer 0 (:mod:`recsys.training.warmstart`) instead of the random
            init; only on a fresh start (a resumed run continues its checkpoint's weights).
        refit_steps: Run ``cfg.refit``'s refit instead (:func:`recsys.training.jobs.train_artifact` runs it
            after selection): train on the splits it learns for exactly this many steps, without selection.

    Returns:
        The selected model (a refit: the last weights, with empty ``selection``), its embeddings and metrics.
    """
    cfg = cfg.resolved()
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = prepare_run(dataset, cfg, device, init=None if resume else init, refit_steps=refit_steps)
    state = TrainState()
    if resume:
        if checkpoint_dir is None or not (checkpoint_dir / CHECKPOINT_FILE).is_file():
            msg = f"--resume: no checkpoint at {checkpoint_dir}/{CHECKPOINT_FILE}"
            raise InputError(msg)
        state = load_checkpoint(checkpoint_dir, run)
        if refit_steps is not None:
            logger.info(
                "resumed the refit from epoch %d (step %d of %d)", state.epoch, state.step, refit_steps
            )
        else:
            logger.info(
                "resumed from epoch %d (best %s %.4f at epoch %d)",
                state.epoch,
                cfg.metric,
                state.best_value,
                state.best_epoch,
            )

    def after_epoch(record: dict[str, Any]) -> None:
        if checkpoint_dir is not None:
            save_checkpoint(checkpoint_dir, run, state)
        if callback is not None:
            callback(record)

    train_epochs(run, state, Replica(), progress=progress, after_epoch=after_epoch)
    return finish_run(run, state, start=start)


@dataclass(frozen=True)
class Replica:
    """This process's place among data-parallel training processes; the default is the only process.

    The epoch loop calls the hooks below where replicas must agree. Here they are no-ops, so :func:`fit`
    runs exactly as a plain loop; :class:`recsys.training.distributed.TorchReplica` implements them with
    collectives.

    Args:
        rank: This replica's index, ``0 <= rank < world_size``; rank 0 validates and checkpoints.
        world_size: Number of replicas.
    """

    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            msg = f"rank must be in [0, world_size={self.world_size}), got {self.rank}"
            raise ValueError(msg)

    def shard(self, batch: Batch) -> Batch:
        """This replica's rows of a global batch: part ``rank`` of ``world_size`` contiguous parts.

        Part sizes differ by at most one row, so each replica's mean loss weighs its rows as the global
        batch's mean would; a tail batch with fewer rows than replicas leaves some parts empty.
        """
        return Batch(*(t.tensor_split(self.world_size)[self.rank] for t in batch))

    def reduce_gradients(self, model: EmbeddingModel, share: float) -> None:
        """Turn this replica's gradient, from ``share`` of the global batch's rows, into the global one."""

    def sum(self, values: Tensor) -> Tensor:
        """Elementwise sum of ``values`` over the replicas."""
        return values

    def broadcast(self, value: int) -> int:
        """Rank 0's ``value``, on every replica."""
        return value


def train_epoch(
    run: TrainRun, batches: list[Batch], replica: Replica, *, desc: str, progress: bool
) -> Tensor:
    """One optimiser step per global batch, on this replica's shard of it.

    Returns:
        The loss terms (``LOSS_TERMS``) summed over the rows this replica trained on, shape ``(4,)``.
    """
    sums = torch.zeros(len(LOSS_TERMS), device=run.device)
    rows = 0
    bar = Progress(batches, desc=desc, unit="batch", enabled=progress)
    for step, batch in enumerate(bar, start=1):
        shard = replica.shard(batch)
        size = shard.users.numel()
        run.optimizer.zero_grad(set_to_none=True)
        if size:  # empty only on a tail batch smaller than the replica count; it still joins the reduce
            losses = run.objective(run.model, run.adj, shard, run.cfg, run.noise_rng, negatives=run.negatives)
            losses.total.backward()
            sums += torch.stack([t.detach() for t in losses]) * size
            rows += size
        replica.reduce_gradients(run.model, size / batch.users.numel())
        run.optimizer.step()
        if progress and step % 25 == 0:  # .tolist() is a host sync: only now and then
            bar.set_postfix(dict(zip(LOSS_TERMS, (sums / max(rows, 1)).tolist(), strict=True)))
    return sums


def train_epochs(
    run: TrainRun,
    state: TrainState,
    replica: Replica,
    *,
    progress: bool,
    after_epoch: Callable[[dict[str, Any]], None],
) -> None:
    """The epoch loop of :func:`fit` and of every Ray Train worker: train, validate, early-stop.

    Rank 0 alone validates and keeps the best weights in ``state``; it broadcasts whether to stop (see
    :func:`should_stop`), so every replica leaves the loop after the same epoch. ``after_epoch`` gets each
    epoch's record (losses averaged over all replicas; the selection metrics on rank 0 only). A refit
    (``run.refit_steps``) neither validates nor stops early: it ends at exactly that step, inside an epoch.
    """
    cfg, budget = run.cfg, run.refit_steps
    with deterministic_algorithms():
        while (
            (state.step < budget) if budget is not None else (state.epoch < cfg.epochs and not state.stopped)
        ):
            epoch = state.epoch + 1
            tic = time.perf_counter()
            run.model.train()
            run.negatives.refresh(run.model, run.adj, epoch)  # meta-node k-means; else a no-op
            batches = epoch_batches(run.pairs, run.sampler, cfg.batch_size, run.sample_rng)
            desc = f"epoch {epoch}/{cfg.epochs}"
            if budget is not None:  # steps, not epochs: an epoch over the refit's pairs holds more steps
                batches = batches[: budget - state.step]
                desc = f"refit epoch {epoch} (to step {budget:,})"
            sums = replica.sum(train_epoch(run, batches, replica, desc=desc, progress=progress))
            rows = sum(batch.users.numel() for batch in batches)  # all pairs but in a refit's last epoch
            record: dict[str, Any] = {"epoch": epoch}
            record.update({k: round(v, 6) for k, v in zip(LOSS_TERMS, (sums / rows).tolist(), strict=True)})
            record.update(run.negatives.epoch_stats())  # probe_gap, probe_grad_cos when probing
            state.step += len(batches)
            record["step"] = state.step
            record["train_seconds"] = round(time.perf_counter() - tic, 3)
            if budget is None and replica.rank == 0 and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs):
                metrics = _evaluate(run.model, run.adj, run.truth, run.exclude, run.ks)
                record[run.eval_split] = metrics
                value = metrics[cfg.metric]
                if value > state.best_value:
                    state.best_value, state.best_epoch, state.best_step = value, epoch, state.step
                    state.best_state = copy.deepcopy(run.model.state_dict())
                state.stopped = should_stop(cfg, state.step, state.best_step)
            state.stopped = bool(replica.broadcast(int(state.stopped)))
            record["seconds"] = round(time.perf_counter() - tic, 3)
            state.epoch = epoch
            state.history.append(record)
            if replica.rank == 0:
                text = _describe(record, run.eval_split, cfg.metric)
                logger.info(text if budget is None else f"refit {text}  step {state.step:,}/{budget:,}")
            after_epoch(record)
        if state.stopped and replica.rank == 0:
            logger.info(
                "early stop after epoch %d (step %d): no better %s since step %d (epoch %d)",
                state.epoch,
                state.step,
                cfg.metric,
                state.best_step,
                state.best_epoch,
            )


@contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """Deterministic kernels for the duration of training, then the caller's setting back.

    Why: with more than one thread, the scatter-adds of the embedding gathers' backward sum in a varying
    order, and two runs with the same seed drifted apart (3e-3 after a few gowalla epochs). With this on, a
    run is bit-identical to another with the same seed, ``threads`` and device, and a resumed run to an
    uninterrupted one. ``warn_only``: an operation without a deterministic kernel (some CUDA ones) warns
    instead of failing.
    """
    import torch.utils.deterministic as deterministic

    enabled, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    fill = deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]  # NaN-fills new tensors
    torch.use_deterministic_algorithms(True, warn_only=True)
    deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        deterministic.fill_uninitialized_memory = fill  # type: ignore[attr-defined]


def should_stop(cfg: TrainConfig, step: int, best_step: int) -> bool:
    """Stop after ``patience_steps`` steps without a better selection metric, and ``min_steps`` in all.

    Why steps: counted in evaluations, the same patience is 95 steps on a dataset of 19 batches per epoch
    and 1,980 on gowalla, so on small datasets it fired inside the transient dip that follows the
    contrastive term and kept an under-trained model.
    """
    return step >= cfg.min_steps and step - best_step >= cfg.patience_steps


def finish_run(run: TrainRun, state: TrainState, *, start: float) -> TrainResult:
    """Load the selected weights, test them once, and map everything back to the dataset's labels.

    A refit keeps its last weights and has no selection; it is tested only if it did not learn test.

    Args:
        run: The run, after its epochs.
        state: Rank 0's state (the best weights and the history).
        start: ``time.perf_counter()`` at the start of the run, for the wall time.
    """
    cfg, model, adj, order = run.cfg, run.model, run.adj, run.order
    refit = cfg.refit if run.refit_steps is not None else "none"
    selection: dict[str, float] = {}
    if run.refit_steps is None:
        model.load_state_dict(state.best_state)
        selection = next(r[run.eval_split] for r in state.history if r["epoch"] == state.best_epoch)
    if run.eval_split == TEST_SPLIT:  # the paper protocol selects on test: its best epoch is the report
        test = selection
    elif TEST_SPLIT not in held_out_splits(cfg.protocol, refit):  # refit "all": no held-out figures
        test = {}
    else:
        test_exclude = run.dataset.pairs(excluded_splits(TEST_SPLIT, cfg.protocol, refit))
        test_pairs, test_exclude = order.pairs(run.dataset.split(TEST_SPLIT)), order.pairs(test_exclude)
        test = _evaluate(model, adj, test_pairs.to(run.device), test_exclude.to(run.device), run.ks)
    embeddings = Embeddings(*order.restore(*model.get_embedding(adj)))
    with torch.no_grad():  # weights back in the dataset's labels, for the artifact
        model.embedding.copy_(torch.cat(order.restore(model.user_emb, model.item_emb)))
    model.cpu()
    return TrainResult(
        config=cfg,
        model=model,
        embeddings=Embeddings(embeddings.user.cpu(), embeddings.item.cpu()),
        best_epoch=state.best_epoch,
        selection=selection,
        test=test,
        history=state.history,
        seconds=round(time.perf_counter() - start, 3),
        train_pairs=run.train_pairs,
    )


@torch.no_grad()
def _evaluate(
    model: EmbeddingModel, adj: Tensor | None, truth: Tensor, exclude: Tensor, ks: tuple[int, ...]
) -> dict[str, float]:
    model.eval()
    emb = model.get_embedding(adj)
    result = evaluate_embeddings(emb.user, emb.item, truth, exclude=exclude, ks=ks)
    return {k: round(v, 6) for k, v in result.metrics.items()}


def _describe(record: dict[str, Any], split: str, metric: str) -> str:
    text = f"epoch {record['epoch']:>3}  loss {record['loss']:.4f}"
    text += f" (bpr {record['bpr']:.4f} cl {record['cl']:.4f})"
    if split in record:
        ndcg = metric.replace("recall", "ndcg")
        text += f"  {split} {metric} {record[split][metric]:.4f}"
        if ndcg in record[split] and ndcg != metric:
            text += f" {ndcg} {record[split][ndcg]:.4f}"
    return text + f"  {record['seconds']:.1f} s"
