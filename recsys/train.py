"""The one training loop: sample, objective, Adam step, validate, early-stop, checkpoint.

Readable top to bottom (nanoGPT style). The model-specific part is the objective from
:data:`recsys.objectives.OBJECTIVES`; everything else is shared by all four models.

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
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

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
from recsys.objectives import OBJECTIVES, Batch
from recsys.sampling import NegativeSampler

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
    pairs, eval_split, exclude = _protocol_data(dataset, cfg.protocol)
    if pairs.size(1) == 0:
        msg = f"{dataset.path}: no training interactions"
        raise InputError(msg)
    # Train in a cache-friendly labelling of users and items; results are mapped back at the end.
    order = NodeOrder.locality(pairs, dataset.num_users, dataset.num_items)
    original_pairs, pairs, exclude = pairs, order.pairs(pairs), order.pairs(exclude)
    graph = build_graph(pairs, dataset.num_users, dataset.num_items).to(device)
    adj = None if cfg.model == "mf" else graph.adj
    model = build_model(cfg, dataset.num_users, dataset.num_items)
    model.reset_parameters(torch.Generator().manual_seed(cfg.seed))
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)  # one kernel per step
    objective = OBJECTIVES[cfg.model]
    pairs = pairs.to(device)
    sampler = NegativeSampler(pairs, dataset.num_items).to(device)
    sample_rng = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    noise_rng = torch.Generator(device=device).manual_seed(cfg.seed + 2)
    negatives = ContrastiveNegatives.from_config(cfg, pairs, dataset.num_users, dataset.num_items)
    ks = tuple(sorted({*DEFAULT_KS, int(cfg.metric.split("@")[1])})) if "@" in cfg.metric else DEFAULT_KS
    truth = order.pairs(dataset.split(eval_split)).to(device)
    exclude = exclude.to(device)

    state = _State()
    if resume:
        state = _load_checkpoint(checkpoint_dir, cfg, model, optimizer, sample_rng, noise_rng, negatives)
        logger.info(
            "resumed from epoch %d (best %s %.4f at epoch %d)",
            state.epoch,
            cfg.metric,
            state.best_value,
            state.best_epoch,
        )

    while state.epoch < cfg.epochs and state.bad_evals < cfg.patience:
        epoch = state.epoch + 1
        tic = time.perf_counter()
        model.train()
        negatives.refresh(model, adj, epoch)  # k-means of the meta-node negatives; else a no-op
        batches = epoch_batches(pairs, sampler, cfg.batch_size, sample_rng)
        sums = torch.zeros(len(LOSS_TERMS), device=device)
        bar = tqdm(
            batches, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", disable=not progress, leave=False
        )
        for step, batch in enumerate(bar, start=1):
            losses = objective(model, adj, batch, cfg, noise_rng, negatives=negatives)
            optimizer.zero_grad(set_to_none=True)
            losses.total.backward()
            optimizer.step()
            sums += torch.stack([t.detach() for t in losses]) * batch.users.numel()
            if progress and step % 25 == 0:  # .tolist() is a host sync: only now and then
                bar.set_postfix(dict(zip(LOSS_TERMS, (sums / (step * cfg.batch_size)).tolist(), strict=True)))
        record: dict[str, Any] = {"epoch": epoch}
        record.update(
            {k: round(v, 6) for k, v in zip(LOSS_TERMS, (sums / pairs.size(1)).tolist(), strict=True)}
        )
        record.update(negatives.epoch_stats())  # probe_gap, probe_grad_cos when probing
        record["train_seconds"] = round(time.perf_counter() - tic, 3)
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            metrics = _evaluate(model, adj, truth, exclude, ks)
            record[eval_split] = metrics
            value = metrics[cfg.metric]
            if value > state.best_value:
                state.best_value, state.best_epoch, state.bad_evals = value, epoch, 0
                state.best_state = copy.deepcopy(model.state_dict())
            else:
                state.bad_evals += 1
        record["seconds"] = round(time.perf_counter() - tic, 3)
        state.epoch = epoch
        state.history.append(record)
        logger.info(_describe(record, eval_split, cfg.metric))
        if checkpoint_dir is not None:
            _save_checkpoint(checkpoint_dir, cfg, state, model, optimizer, sample_rng, noise_rng, negatives)
        if callback is not None:
            callback(record)
    if state.bad_evals >= cfg.patience:
        logger.info(
            "early stop after epoch %d: no %s improvement in %d evaluations",
            state.epoch,
            cfg.metric,
            cfg.patience,
        )

    model.load_state_dict(state.best_state)
    selection = next(r[eval_split] for r in state.history if r["epoch"] == state.best_epoch)
    if cfg.protocol == "honest":
        test_pairs, test_exclude = order.pairs(dataset.test), order.pairs(exclude_for_test(dataset))
        test = _evaluate(model, adj, test_pairs.to(device), test_exclude.to(device), ks)
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
        train_pairs=original_pairs.cpu(),
    )


def exclude_for_test(dataset: Dataset) -> Tensor:
    """Pairs masked when evaluating test: train and valid (under both protocols)."""
    return torch.cat([dataset.train, dataset.valid], dim=1)


def _protocol_data(dataset: Dataset, protocol: str) -> tuple[Tensor, str, Tensor]:
    """Training pairs, the split used for selection, and the pairs masked when evaluating it."""
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
class _State:
    """What the loop carries from epoch to epoch (and what a checkpoint restores)."""

    epoch: int = 0
    best_epoch: int = 0
    best_value: float = float("-inf")
    bad_evals: int = 0
    best_state: dict[str, Tensor] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


def _save_checkpoint(
    directory: Path,
    cfg: TrainConfig,
    state: _State,
    model: EmbeddingModel,
    optimizer: torch.optim.Optimizer,
    sample_rng: torch.Generator,
    noise_rng: torch.Generator,
    negatives: ContrastiveNegatives,
) -> None:
    """Everything needed to continue bit-for-bit, as tensors and plain values (``weights_only`` loadable)."""
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": cfg.to_dict(),
        "epoch": state.epoch,
        "best_epoch": state.best_epoch,
        "best_value": state.best_value,
        "bad_evals": state.bad_evals,
        "best_state": state.best_state,
        "history": state.history,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "sample_rng": sample_rng.get_state(),
        "noise_rng": noise_rng.get_state(),
        "negatives": negatives.state_dict(),
    }
    tmp = directory / f".{CHECKPOINT_FILE}.tmp"
    torch.save(payload, tmp)
    tmp.replace(directory / CHECKPOINT_FILE)  # atomic: a kill mid-write keeps the previous checkpoint
    (directory / LOG_FILE).write_text("".join(json.dumps(r) + "\n" for r in state.history))


def _load_checkpoint(
    directory: Path | None,
    cfg: TrainConfig,
    model: EmbeddingModel,
    optimizer: torch.optim.Optimizer,
    sample_rng: torch.Generator,
    noise_rng: torch.Generator,
    negatives: ContrastiveNegatives,
) -> _State:
    if directory is None or not (directory / CHECKPOINT_FILE).is_file():
        msg = f"--resume: no checkpoint at {directory}/{CHECKPOINT_FILE}"
        raise InputError(msg)
    path = directory / CHECKPOINT_FILE
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        msg = f"--resume: cannot read {path}: {exc}"
        raise InputError(msg) from exc
    # A key the checkpoint lacks is a field added since it was written: it ran with that field's default.
    saved = {**{f.name: f.default for f in fields(TrainConfig)}, **payload["config"]}
    if saved != cfg.to_dict():
        changed = sorted(k for k, v in cfg.to_dict().items() if saved.get(k) != v)
        msg = f"--resume: the checkpoint at {path} was made with a different config ({', '.join(changed)})"
        raise InputError(msg)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    sample_rng.set_state(payload["sample_rng"])
    noise_rng.set_state(payload["noise_rng"])
    negatives.load_state_dict(payload.get("negatives", {}))  # k-means clusters and their generator
    return _State(
        epoch=payload["epoch"],
        best_epoch=payload["best_epoch"],
        best_value=payload["best_value"],
        bad_evals=payload["bad_evals"],
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
) -> TrainResult:
    """Load a dataset, train, and write the artifact to ``out`` (what ``recsys train`` runs).

    Checkpoints go to ``<out>.ckpt/`` after every epoch and are removed once the artifact is written;
    ``resume`` continues from there after a crash or a kill.
    """
    from recsys.artifact import write_artifact
    from recsys.atomic import check_writable
    from recsys.dataset import load_dataset

    check_writable(out, force=force)
    dataset = load_dataset(dataset_dir)
    checkpoint_dir = Path(f"{out}.ckpt")
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
