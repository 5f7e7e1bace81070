"""One training objective per model family, so the training loop never branches on the model.

Each objective runs the model's forward pass(es) for a batch and returns the loss terms separately, for
logging; the terms follow the authors' code (SELFRec) so published numbers are comparable.

Every objective is called as ``OBJECTIVES[name](model, adj, batch, cfg, generator, negatives=None)``. The
optional keyword ``negatives`` carries the per-run state of the negatives
(:class:`recsys.training.metanode.ContrastiveNegatives`: k-means assignments, key weights, probe, and in
``negatives.rec`` the recommendation softmax's item popularity and meta-nodes). It is a keyword with a
default, rather than a sixth positional argument or state bound into the functions, so that ``OBJECTIVES``
stays a dict of plain functions, every existing caller (mf/lightgcn, benchmarks, tests) keeps working
unchanged, and the one stateful object is created and refreshed by the training loop alone. ``None`` means
the stateless in-batch negatives of the published SimGCL/XSimGCL, and BPR.

The recommendation term of every family is ``cfg.rec_loss`` (:func:`_rec`): BPR on one sampled negative
per pair (as published; the default), or a softmax over many negatives (``softmax``, ``bsl``), whose
denominator is the batch's positive items plus M items drawn once per batch from ``generator`` (the run's
noise stream, so a resumed run draws the same), or every item (``full``, ``metanode``). It is returned as
``Losses.bpr`` whichever loss computes it: the name is the key of the loss in ``log.jsonl``, which the loop,
the plots and the benchmarks read.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from recsys.config import TrainConfig
from recsys.models.base import EmbeddingModel, Embeddings, Rows
from recsys.models.lightgcn import SimGCL
from recsys.models.registry import MODELS
from recsys.training.losses import bilateral_gap, bpr_loss, l2_reg, softmax_loss
from recsys.training.metanode import ContrastiveNegatives, RecNegatives


class Batch(NamedTuple):
    """Indices of one batch, each of shape ``(B,)``: users, their positive items, sampled negatives."""

    users: Tensor
    pos: Tensor
    neg: Tensor


class Losses(NamedTuple):
    """Loss terms of one batch (0-dim tensors); ``total`` is what is minimised.

    ``bpr`` is the recommendation term, whichever ``cfg.rec_loss`` computes it.
    """

    total: Tensor
    bpr: Tensor
    cl: Tensor
    reg: Tensor


class Objective(Protocol):
    """``(model, adj, batch, cfg, generator, *, negatives=None) -> Losses``: one training step's loss."""

    def __call__(
        self,
        model: EmbeddingModel,
        adj: Tensor | None,
        batch: Batch,
        cfg: TrainConfig,
        generator: torch.Generator | None,
        *,
        negatives: ContrastiveNegatives | None = None,
    ) -> Losses:
        """Loss terms of ``batch``."""
        ...


def batch_rows(batch: Batch, num_users: int) -> tuple[Rows, Batch]:
    """The nodes a batch's loss reads, and the batch renumbered to positions among them.

    Why: with in-batch negatives the loss reads the output only at the batch's users and items, so the
    forward pass computes its last layer there alone (:class:`recsys.models.base.Rows`). The renumbered batch
    indexes the user and item parts of that row-restricted output as the original indexes the full one;
    positions keep the order of node ids, so ``torch.unique`` of them lists the same nodes in the same order.

    Returns:
        The rows (sorted node ids, users first) and the batch in positions among the users and the items.
    """
    size = batch.users.numel()
    rows, users, items = _rows(num_users, batch.users, torch.cat([batch.pos, batch.neg]))
    pos, neg = items.split(size)
    return rows, Batch(users, pos, neg)


def _rows(num_users: int, users: Tensor, items: Tensor) -> tuple[Rows, Tensor, Tensor]:
    """The rows of ``users`` and ``items`` (node ids, users first), and both in positions among them."""
    nodes, inverse = torch.unique(torch.cat([users, items + num_users]), return_inverse=True)
    count = int((nodes < num_users).sum())
    user_pos, item_pos = inverse.split([users.numel(), items.numel()])
    return Rows(nodes, count), user_pos, item_pos - count


class _Step(NamedTuple):
    """What one batch's loss reads.

    ``rows`` are the nodes the forward pass computes (``None``: all); ``local`` is the batch in positions
    among them (its ``neg`` empty when the loss is a softmax); ``pool`` the shared negatives' item ids
    (``None`` unless the softmax samples them) and ``pool_local`` their positions.
    """

    rows: Rows | None
    local: Batch
    pool: Tensor | None
    pool_local: Tensor | None


def _rec_state(cfg: TrainConfig, negatives: ContrastiveNegatives | None) -> RecNegatives | None:
    """The recommendation softmax's state (``None`` for BPR, which has none)."""
    if cfg.rec_loss == "bpr":
        return None
    if negatives is None or negatives.rec is None:
        msg = (
            f"rec_loss={cfg.rec_loss!r} needs negatives=ContrastiveNegatives.from_config(...) (the items' "
            "popularity and the shared negatives)"
        )
        raise ValueError(msg)
    return negatives.rec


def _step(
    batch: Batch,
    num_users: int,
    rec: RecNegatives | None,
    generator: torch.Generator | None,
    *,
    all_nodes: bool,
) -> _Step:
    """Draw the shared negatives (when sampled) and pick the rows the forward pass computes.

    Every node when the contrastive negatives read them all (``all_nodes``) or the softmax's denominator is
    every item; otherwise the batch's users and items and the shared negatives (:func:`batch_rows`).
    """
    pool = rec.shared.sample(generator) if rec is not None and rec.denominator == "sampled" else None
    if all_nodes or (rec is not None and rec.denominator != "sampled"):
        return _Step(None, batch, pool, pool)
    if pool is None:
        rows, local = batch_rows(batch, num_users)
        return _Step(rows, local, None, None)
    size = batch.users.numel()
    rows, users, items = _rows(num_users, batch.users, torch.cat([batch.pos, pool]))
    pos, pool_local = items.split([size, pool.numel()])
    return _Step(rows, Batch(users, pos, pos[:0]), pool, pool_local)


def _rec(
    emb: Embeddings, step: _Step, batch: Batch, cfg: TrainConfig, rec: RecNegatives | None
) -> tuple[Tensor, Tensor, Tensor]:
    """The recommendation term on the output ``emb``: BPR, or the softmax/BSL over ``rec``'s denominator.

    * ``bpr``: :func:`recsys.training.losses.bpr_loss` of each pair against its sampled negative.
    * ``softmax``: :func:`recsys.training.losses.softmax_loss` of each user's positive among the keys: the
      batch's B positive items and its M shared items (``sampled``, log-Q corrected by
      :meth:`recsys.data.sampling.SharedNegatives.log_expected_count` when ``cfg.rec_logq``), or every
      item (``full``), or every item through the meta-nodes (``metanode``, always cosine).
    * ``bsl``: the same plus :func:`recsys.training.losses.bilateral_gap` over each user's rows of the batch,
      which makes it :func:`recsys.training.losses.bsl_loss` with that denominator.

    Args:
        emb: The output the loss scores (all rows, or ``step.rows``).
        step: The rows and the batch in their positions.
        batch: The batch in node ids (for the log-Q correction and BSL's groups).
        cfg: The resolved config.
        rec: The softmax's state, ``None`` for BPR.

    Returns:
        The term, and the batch's user and positive item rows (for the L2 term).
    """
    local = step.local
    u, p = emb.user[local.users], emb.item[local.pos]
    if rec is None:
        n = emb.item[local.neg]
        return bpr_loss((u * p).sum(-1), (u * n).sum(-1)), u, p
    tau, size = cfg.rec_temperature, batch.users.numel()
    if rec.denominator == "sampled":
        assert step.pool is not None and step.pool_local is not None
        keys = torch.cat([p, emb.item[step.pool_local]])
        log_q = None
        if cfg.rec_logq:
            log_q = rec.shared.log_expected_count(torch.cat([batch.pos, step.pool]), size)
        positive = torch.arange(size, device=keys.device)
        loss = softmax_loss(u, keys, positive, tau, log_q, cosine=cfg.rec_cosine)
    elif rec.denominator == "full":
        loss = softmax_loss(u, emb.item, local.pos, tau, cosine=cfg.rec_cosine)
    else:
        loss = rec.metanode_loss(u, emb.item, local.pos, tau)
    if cfg.rec_loss == "bsl":
        groups = torch.unique(batch.users, return_inverse=True)[1]
        loss = loss + bilateral_gap(u, p, groups, tau, cfg.bsl_temperature, cfg.rec_cosine)
    return loss, u, p


def _cl(
    view_a: Embeddings,
    view_b: Embeddings,
    batch: Batch,
    cfg: TrainConfig,
    negatives: ContrastiveNegatives | None,
) -> Tensor:
    """InfoNCE over the batch's unique users plus over its unique positive items.

    Anchors are the batch's nodes in ``view_a``; the negatives are the batch's nodes in ``view_b``
    (in-batch), or all nodes of the side (``full``/``metanode``), as ``cfg.cl_negatives`` says.
    """
    assert cfg.temperature is not None, "resolve the config first"
    if negatives is None:
        negatives = ContrastiveNegatives()
    if negatives.mode != cfg.cl_negatives:
        msg = (
            f"cl_negatives={cfg.cl_negatives!r} needs negatives=ContrastiveNegatives.from_config(...), "
            f"got mode {negatives.mode!r}"
        )
        raise ValueError(msg)
    users, items = torch.unique(batch.users), torch.unique(batch.pos)
    return negatives.loss(view_a.user, view_b.user, users, 0, cfg.temperature) + negatives.loss(
        view_a.item, view_b.item, items, 1, cfg.temperature
    )


def rec_objective(
    model: EmbeddingModel,
    adj: Tensor | None,
    batch: Batch,
    cfg: TrainConfig,
    generator: torch.Generator | None,
    *,
    negatives: ContrastiveNegatives | None = None,
) -> Losses:
    """MF and LightGCN: the recommendation term on the output, L2 on the layer-0 embeddings of the batch.

    The L2 term takes the batch's users and positive items, and under BPR its negatives too (the shared
    negatives of a softmax are not the batch's rows).
    """
    rec = _rec_state(cfg, negatives)
    step = _step(batch, model.num_users, rec, generator, all_nodes=False)
    loss, *_ = _rec(model(adj, rows=step.rows).final, step, batch, cfg, rec)
    items = (batch.pos, batch.neg) if rec is None else (batch.pos,)
    reg = cfg.reg_weight * l2_reg(model.user_emb[batch.users], *(model.item_emb[i] for i in items))
    return Losses(loss + reg, loss, torch.zeros_like(loss), reg)


def simgcl_objective(
    model: EmbeddingModel,
    adj: Tensor | None,
    batch: Batch,
    cfg: TrainConfig,
    generator: torch.Generator | None,
    *,
    negatives: ContrastiveNegatives | None = None,
) -> Losses:
    """SimGCL: the recommendation term on a clean pass, InfoNCE between two independently perturbed passes.

    The three passes share one differentiable propagation (:meth:`SimGCL.clean_and_perturbed`), computed
    at the batch's nodes alone unless the negatives read every node.
    """
    assert cfg.cl_weight is not None and cfg.temperature is not None, "resolve the config first"
    assert isinstance(model, SimGCL) and adj is not None, "the SimGCL objective needs a SimGCL and a graph"
    rec = _rec_state(cfg, negatives)
    step = _step(batch, model.num_users, rec, generator, all_nodes=_cl_reads_all_nodes(negatives))
    clean, (view_a, view_b) = model.clean_and_perturbed(adj, 2, generator, step.rows)
    loss, u, p = _rec(clean, step, batch, cfg, rec)
    reg = cfg.reg_weight * l2_reg(u, p)
    cl = cfg.cl_weight * _cl(view_a, view_b, step.local, cfg, negatives)
    return Losses(loss + reg + cl, loss, cl, reg)


def xsimgcl_objective(
    model: EmbeddingModel,
    adj: Tensor | None,
    batch: Batch,
    cfg: TrainConfig,
    generator: torch.Generator | None,
    *,
    negatives: ContrastiveNegatives | None = None,
) -> Losses:
    """XSimGCL: one perturbed pass; the recommendation term on its output, InfoNCE between it and layer l*.

    The pass is computed at the batch's nodes alone unless the negatives read every node.
    """
    assert cfg.cl_weight is not None and cfg.temperature is not None, "resolve the config first"
    rec = _rec_state(cfg, negatives)
    step = _step(batch, model.num_users, rec, generator, all_nodes=_cl_reads_all_nodes(negatives))
    views = model(adj, perturbed=True, generator=generator, rows=step.rows)
    assert views.cl is not None
    loss, u, p = _rec(views.final, step, batch, cfg, rec)
    reg = cfg.reg_weight * l2_reg(u, p)
    cl = cfg.cl_weight * _cl(views.final, views.cl, step.local, cfg, negatives)
    return Losses(loss + reg + cl, loss, cl, reg)


def _cl_reads_all_nodes(negatives: ContrastiveNegatives | None) -> bool:
    """Whether the contrastive negatives read every node (full, metanode), not only the batch's."""
    return negatives is not None and negatives.mode != "in_batch"


_BY_NAME: dict[str, Objective] = {f.__name__: f for f in (rec_objective, simgcl_objective, xsimgcl_objective)}
# Each model's objective, as the registry names it (recsys.models.registry.MODELS).
OBJECTIVES: dict[str, Objective] = {name: _BY_NAME[spec.objective] for name, spec in MODELS.items()}
