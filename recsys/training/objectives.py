"""One training objective per model family, so the training loop never branches on the model.

Each objective runs the model's forward pass(es) for a batch and returns the loss terms separately, for
logging; the terms follow the authors' code (SELFRec) so published numbers are comparable.

Every objective is called as ``OBJECTIVES[name](model, adj, batch, cfg, generator, negatives=None)``. The
optional keyword ``negatives`` carries the per-run state of the contrastive negatives
(:class:`recsys.training.metanode.ContrastiveNegatives`: k-means assignments, key weights, probe). It is a
keyword with a default, rather than a sixth positional argument or state bound into the functions, so that
``OBJECTIVES`` stays a dict of plain functions, every existing caller (mf/lightgcn, benchmarks, tests) keeps
working unchanged, and the one stateful object is created and refreshed by the training loop alone.
``None`` means the stateless in-batch negatives of the published SimGCL/XSimGCL.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from recsys.config import TrainConfig
from recsys.models.base import EmbeddingModel, Embeddings, Rows
from recsys.models.lightgcn import SimGCL
from recsys.models.registry import MODELS
from recsys.training.losses import bpr_loss, l2_reg
from recsys.training.metanode import ContrastiveNegatives


class Batch(NamedTuple):
    """Indices of one batch, each of shape ``(B,)``: users, their positive items, sampled negatives."""

    users: Tensor
    pos: Tensor
    neg: Tensor


class Losses(NamedTuple):
    """Loss terms of one batch (0-dim tensors); ``total`` is what is minimised."""

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
    ids = torch.cat([batch.users, batch.pos + num_users, batch.neg + num_users])
    nodes, inverse = torch.unique(ids, return_inverse=True)
    users = int((nodes < num_users).sum())
    user_pos, pos_pos, neg_pos = inverse.split(size)
    return Rows(nodes, users), Batch(user_pos, pos_pos - users, neg_pos - users)


def _bpr(emb: Embeddings, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    u, p, n = emb.user[batch.users], emb.item[batch.pos], emb.item[batch.neg]
    return bpr_loss((u * p).sum(-1), (u * n).sum(-1)), u, p, n


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


def bpr_objective(
    model: EmbeddingModel,
    adj: Tensor | None,
    batch: Batch,
    cfg: TrainConfig,
    generator: torch.Generator | None,
    *,
    negatives: ContrastiveNegatives | None = None,
) -> Losses:
    """MF and LightGCN: BPR on the output, L2 on the layer-0 embeddings of the batch (no ``negatives``)."""
    rows, local = batch_rows(batch, model.num_users)
    bpr, *_ = _bpr(model(adj, rows=rows).final, local)
    reg = cfg.reg_weight * l2_reg(
        model.user_emb[batch.users], model.item_emb[batch.pos], model.item_emb[batch.neg]
    )
    return Losses(bpr + reg, bpr, torch.zeros_like(bpr), reg)


def simgcl_objective(
    model: EmbeddingModel,
    adj: Tensor | None,
    batch: Batch,
    cfg: TrainConfig,
    generator: torch.Generator | None,
    *,
    negatives: ContrastiveNegatives | None = None,
) -> Losses:
    """SimGCL: BPR on a clean pass, InfoNCE between two independently perturbed passes.

    The three passes share one differentiable propagation (:meth:`SimGCL.clean_and_perturbed`), computed
    at the batch's nodes alone unless the negatives read every node.
    """
    assert cfg.cl_weight is not None and cfg.temperature is not None, "resolve the config first"
    assert isinstance(model, SimGCL) and adj is not None, "the SimGCL objective needs a SimGCL and a graph"
    rows, local = _rows_unless_all_nodes(batch, model.num_users, negatives)
    clean, (view_a, view_b) = model.clean_and_perturbed(adj, 2, generator, rows)
    bpr, u, p, _ = _bpr(clean, local)
    reg = cfg.reg_weight * l2_reg(u, p)
    cl = cfg.cl_weight * _cl(view_a, view_b, local, cfg, negatives)
    return Losses(bpr + reg + cl, bpr, cl, reg)


def xsimgcl_objective(
    model: EmbeddingModel,
    adj: Tensor | None,
    batch: Batch,
    cfg: TrainConfig,
    generator: torch.Generator | None,
    *,
    negatives: ContrastiveNegatives | None = None,
) -> Losses:
    """XSimGCL: one perturbed pass; BPR on its output, InfoNCE between its output and layer l*.

    The pass is computed at the batch's nodes alone unless the negatives read every node.
    """
    assert cfg.cl_weight is not None and cfg.temperature is not None, "resolve the config first"
    rows, local = _rows_unless_all_nodes(batch, model.num_users, negatives)
    views = model(adj, perturbed=True, generator=generator, rows=rows)
    assert views.cl is not None
    bpr, u, p, _ = _bpr(views.final, local)
    reg = cfg.reg_weight * l2_reg(u, p)
    cl = cfg.cl_weight * _cl(views.final, views.cl, local, cfg, negatives)
    return Losses(bpr + reg + cl, bpr, cl, reg)


def _rows_unless_all_nodes(
    batch: Batch, num_users: int, negatives: ContrastiveNegatives | None
) -> tuple[Rows | None, Batch]:
    """:func:`batch_rows`, or all nodes (``None``) when the negatives read them all (full, metanode)."""
    if negatives is not None and negatives.mode != "in_batch":
        return None, batch
    return batch_rows(batch, num_users)


_BY_NAME: dict[str, Objective] = {f.__name__: f for f in (bpr_objective, simgcl_objective, xsimgcl_objective)}
# Each model's objective, as the registry names it (recsys.models.registry.MODELS).
OBJECTIVES: dict[str, Objective] = {name: _BY_NAME[spec.objective] for name, spec in MODELS.items()}
