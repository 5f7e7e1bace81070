"""The one training loop: sample, objective, Adam step, validate, early-stop, checkpoint.

Readable top to bottom (nanoGPT style). The model-specific part is the objective from
:data:`recsys.objectives.OBJECTIVES`; everything else is shared by all four models. The same epoch loop
(:func:`train_epochs`) runs in this process (:func:`fit`) or as one of several data-parallel replicas on
Ray Train (:mod:`recsys.distributed`); the two differ only in the :class:`Replica` hooks.

Protocols: under ``honest`` the model trains on train, is selected on valid (``cfg.metric``), and test is
evaluated once with the selected weights. Under ``paper`` (the authors' SELFRec protocol) it trains on
train ∪ valid and the best *test* epoch is reported: optimistic, only for comparing with published numbers.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from tqdm import tqdm

from recsys.config import TrainConfig
from recsys.dataset import Dataset
from recsys.errors import InputError
from recsys.evaluate import evaluate_embeddings
from recsys.graph import NodeOrder, build_graph
from recsys.metanode import ContrastiveNegatives
from recsys.metrics import DEFAULT_KS
from recsys.models import EmbeddingModel, Embeddings, build_model
from recsys.objectives import OBJECTIVES, Batch, Objective
from recsys.sampling import NegativeSampler

if TYPE_CHECKING:
    from recsys.distributed import ScaleConfig

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "log.jsonl"
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


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        msg = f"--device {name} was asked for but CUDA is not available on this machine"
        raise InputError(msg)
    return torch.device(name)


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
) -> TrainResult:
    """Train ``cfg.model`` on ``dataset`` and return the selected model.

    Args:
        dataset: The dataset (contract 1).
        cfg: The configuration (model defaults are filled in here).
        checkpoint_dir: Where ``checkpoint.pt`` and ``log.jsonl`` are written after every epoch.
        resume: Continue from ``checkpoint_dir/checkpoint.pt``; ends exactly as an uninterrupted run.
        progress: Show a progress bar per epoch.
        callback: Called with each epoch's record (the one extension point).

    Returns:
        The selected model, its embeddings and metrics.
    """
    cfg = cfg.resolved()
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = prepare_run(dataset, cfg, device)
    state = TrainState()
    if resume:
        if checkpoint_dir is None or not (checkpoint_dir / CHECKPOINT_FILE).is_file():
            msg = f"--resume: no checkpoint at {checkpoint_dir}/{CHECKPOINT_FILE}"
            raise InputError(msg)
        state = load_checkpoint(checkpoint_dir, run)
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
    runs exactly as a plain loop; :class:`recsys.distributed.TorchReplica` implements them with collectives.

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


NOISE_SEED_STRIDE = 2**32  # replica r's noise seed is seed + 2 + r * stride: no other run's stream reuses it


def prepare_run(dataset: Dataset, cfg: TrainConfig, device: torch.device, *, rank: int = 0) -> TrainRun:
    """Build the graph, model, optimiser, sampler and generators of a run of resolved ``cfg``.

    Every replica builds the same run (same initial weights, same sampling stream, so the shards of each
    epoch partition one global permutation), except for the noise stream, which is seeded per ``rank``;
    rank 0's is the single-process one.
    """
    pairs, eval_split, exclude = protocol_data(dataset, cfg.protocol)
    if pairs.size(1) == 0:
        msg = f"{dataset.path}: no training interactions"
        raise InputError(msg)
    # Train in a cache-friendly labelling of users and items; results are mapped back at the end.
    order = NodeOrder.locality(pairs, dataset.num_users, dataset.num_items)
    original_pairs, pairs, exclude = pairs, order.pairs(pairs), order.pairs(exclude)
    graph = build_graph(pairs, dataset.num_users, dataset.num_items).to(device)
    model = build_model(cfg, dataset.num_users, dataset.num_items)
    model.reset_parameters(torch.Generator().manual_seed(cfg.seed))
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
        adj=None if cfg.model == "mf" else graph.adj,
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
    )


def train_epoch(
    run: TrainRun, batches: list[Batch], replica: Replica, *, desc: str, progress: bool
) -> Tensor:
    """One optimiser step per global batch, on this replica's shard of it.

    Returns:
        The loss terms (``LOSS_TERMS``) summed over the rows this replica trained on, shape ``(4,)``.
    """
    sums = torch.zeros(len(LOSS_TERMS), device=run.device)
    rows = 0
    bar = tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False)
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
    epoch's record (losses averaged over all replicas; the selection metrics on rank 0 only).
    """
    cfg = run.cfg
    with deterministic_algorithms():
        while state.epoch < cfg.epochs and not state.stopped:
            epoch = state.epoch + 1
            tic = time.perf_counter()
            run.model.train()
            run.negatives.refresh(run.model, run.adj, epoch)  # meta-node k-means; else a no-op
            batches = epoch_batches(run.pairs, run.sampler, cfg.batch_size, run.sample_rng)
            sums = replica.sum(
                train_epoch(run, batches, replica, desc=f"epoch {epoch}/{cfg.epochs}", progress=progress)
            )
            record: dict[str, Any] = {"epoch": epoch}
            record.update(
                {k: round(v, 6) for k, v in zip(LOSS_TERMS, (sums / run.pairs.size(1)).tolist(), strict=True)}
            )
            record.update(run.negatives.epoch_stats())  # probe_gap, probe_grad_cos when probing
            state.step += len(batches)
            record["step"] = state.step
            record["train_seconds"] = round(time.perf_counter() - tic, 3)
            if replica.rank == 0 and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs):
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
                logger.info(_describe(record, run.eval_split, cfg.metric))
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

    Args:
        run: The run, after its epochs.
        state: Rank 0's state (the best weights and the history).
        start: ``time.perf_counter()`` at the start of the run, for the wall time.
    """
    cfg, model, adj, order = run.cfg, run.model, run.adj, run.order
    model.load_state_dict(state.best_state)
    selection = next(r[run.eval_split] for r in state.history if r["epoch"] == state.best_epoch)
    if cfg.protocol == "honest":
        test_pairs, test_exclude = order.pairs(run.dataset.test), order.pairs(exclude_for_test(run.dataset))
        test = _evaluate(model, adj, test_pairs.to(run.device), test_exclude.to(run.device), run.ks)
    else:
        test = selection
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


def exclude_for_test(dataset: Dataset) -> Tensor:
    """Pairs masked when evaluating test: train and valid (under both protocols)."""
    return torch.cat([dataset.train, dataset.valid], dim=1)


def protocol_data(dataset: Dataset, protocol: str) -> tuple[Tensor, str, Tensor]:
    """Training pairs, the split used for selection, and the pairs masked when evaluating it (dataset ids)."""
    if protocol == "paper":
        pairs = torch.cat([dataset.train, dataset.valid], dim=1)
        return pairs, "test", pairs
    return dataset.train, "valid", dataset.train


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
    current = {**run.cfg.to_dict(), "epochs": saved["epochs"]}
    if saved != current:
        changed = sorted(k for k, v in current.items() if saved.get(k) != v)
        msg = f"--resume: the checkpoint at {path} was made with a different config ({', '.join(changed)})"
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


def train_artifact(
    dataset_dir: Path,
    cfg: TrainConfig,
    out: Path,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    scale: ScaleConfig | None = None,
) -> TrainResult:
    """Load a dataset, train, and write the artifact to ``out`` (what ``recsys train`` runs).

    In this process, checkpoints go to ``<out>.ckpt/`` after every epoch and are removed once the artifact
    is written; ``resume`` continues from there after a crash or a kill. With ``scale.workers`` > 1 the run
    goes to Ray Train workers (:func:`recsys.distributed.fit_distributed`), whose checkpoints live in Ray
    Train's storage instead.
    """
    from recsys.artifact import write_artifact
    from recsys.atomic import check_writable
    from recsys.dataset import load_dataset

    distributed = scale is not None and scale.workers > 1
    if distributed and resume:
        msg = "--resume continues a single-process run; Ray Train workers restart with --max-failures"
        raise InputError(msg)
    check_writable(out, force=force)
    dataset = load_dataset(dataset_dir)
    checkpoint_dir = Path(f"{out}.ckpt")
    if distributed:
        from recsys.distributed import fit_distributed

        assert scale is not None
        result = fit_distributed(dataset, cfg, scale, progress=progress)
    else:
        result = fit(dataset, cfg, checkpoint_dir=checkpoint_dir, resume=resume, progress=progress)
    selection_split = "test" if result.config.protocol == "paper" else "valid"
    metrics = {
        "protocol": result.config.protocol,
        "metric": result.config.metric,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "selection_split": selection_split,
        selection_split: result.selection,
        "test": result.test,
        "train_seconds": result.seconds,
    }
    assert result.train_pairs is not None
    write_artifact(
        out,
        dataset=dataset,
        config=result.config.to_dict(),
        state_dict=result.model.state_dict(),
        user_emb=result.embeddings.user,
        item_emb=result.embeddings.item,
        train_pairs=result.train_pairs,
        metrics=metrics,
        history=result.history,
        force=force,
    )
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    logger.info("wrote %s (best epoch %d)", out, result.best_epoch)
    return result
