"""One training objective per model family, so the training loop never branches on the model.

Each objective runs the model's forward pass(es) for a batch and returns the loss terms separately, for
logging; the terms follow the authors' code (SELFRec) so published numbers are comparable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from recsys.config import TrainConfig
from recsys.losses import bpr_loss, info_nce, l2_reg
from recsys.models import EmbeddingModel, Embeddings


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


Objective = Callable[[EmbeddingModel, Tensor | None, Batch, TrainConfig, torch.Generator | None], Losses]


def _bpr(emb: Embeddings, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    u, p, n = emb.user[batch.users], emb.item[batch.pos], emb.item[batch.neg]
    return bpr_loss((u * p).sum(-1), (u * n).sum(-1)), u, p, n


def _cl(view_a: Embeddings, view_b: Embeddings, batch: Batch, temperature: float) -> Tensor:
    """InfoNCE over the batch's unique users plus over its unique positive items."""
    users, items = torch.unique(batch.users), torch.unique(batch.pos)
    return info_nce(view_a.user[users], view_b.user[users], temperature) + info_nce(
        view_a.item[items], view_b.item[items], temperature
    )


def bpr_objective(
    model: EmbeddingModel,
    adj: Tensor | None,
    batch: Batch,
    cfg: TrainConfig,
    generator: torch.Generator | None,
) -> Losses:
    """MF and LightGCN: BPR on the output, L2 on the layer-0 embeddings of the batch."""
    bpr, *_ = _bpr(model(adj).final, batch)
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
) -> Losses:
    """SimGCL: BPR on a clean pass, InfoNCE between two independently perturbed passes."""
    assert cfg.cl_weight is not None and cfg.temperature is not None, "resolve the config first"
    bpr, u, p, _ = _bpr(model(adj).final, batch)
    reg = cfg.reg_weight * l2_reg(u, p)
    view_a = model(adj, perturbed=True, generator=generator).final
    view_b = model(adj, perturbed=True, generator=generator).final
    cl = cfg.cl_weight * _cl(view_a, view_b, batch, cfg.temperature)
    return Losses(bpr + reg + cl, bpr, cl, reg)


def xsimgcl_objective(
    model: EmbeddingModel,
    adj: Tensor | None,
    batch: Batch,
    cfg: TrainConfig,
    generator: torch.Generator | None,
) -> Losses:
    """XSimGCL: one perturbed pass; BPR on its output, InfoNCE between its output and layer l*."""
    assert cfg.cl_weight is not None and cfg.temperature is not None, "resolve the config first"
    views = model(adj, perturbed=True, generator=generator)
    assert views.cl is not None
    bpr, u, p, _ = _bpr(views.final, batch)
    reg = cfg.reg_weight * l2_reg(u, p)
    cl = cfg.cl_weight * _cl(views.final, views.cl, batch, cfg.temperature)
    return Losses(bpr + reg + cl, bpr, cl, reg)


OBJECTIVES: dict[str, Objective] = {
    "mf": bpr_objective,
    "lightgcn": bpr_objective,
    "simgcl": simgcl_objective,
    "xsimgcl": xsimgcl_objective,
}
