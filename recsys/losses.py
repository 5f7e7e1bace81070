"""Loss functions: small, pure, reduced by mean, with their formulas. No model or config in here."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bpr_loss(pos_score: Tensor, neg_score: Tensor) -> Tensor:
    r"""Bayesian personalised ranking loss, mean over the batch.

    .. math::
        \mathcal{L}_{BPR} = -\frac{1}{B} \sum_{b} \log \sigma(s^+_b - s^-_b)

    computed with ``logsigmoid`` (stable; no ``log(sigmoid(x) + 1e-8)``).

    Args:
        pos_score: Scores of the positive items, shape ``(B,)``.
        neg_score: Scores of the sampled negatives, shape ``(B,)``.
    """
    return -F.logsigmoid(pos_score - neg_score).mean()


def info_nce(view_a: Tensor, view_b: Tensor, temperature: float) -> Tensor:
    r"""InfoNCE between two views of the same nodes, in-batch negatives, mean over rows.

    With :math:`z` the L2-normalised rows,

    .. math::
        \mathcal{L} = -\frac{1}{n} \sum_i \log
            \frac{\exp(z^a_i \cdot z^b_i / \tau)}{\sum_j \exp(z^a_i \cdot z^b_j / \tau)}

    computed as the diagonal of a row-wise ``log_softmax`` (the authors' stable form).

    Args:
        view_a: First view, shape ``(n, d)``.
        view_b: Second view of the same n nodes, shape ``(n, d)``.
        temperature: τ.
    """
    a, b = F.normalize(view_a, dim=1), F.normalize(view_b, dim=1)
    logits = a @ b.T / temperature
    return -torch.diagonal(F.log_softmax(logits, dim=1)).mean()


def l2_reg(*embeddings: Tensor) -> Tensor:
    r"""L2 regulariser as in the SimGCL/XSimGCL authors' code: :math:`\sum_e \lVert e \rVert_F / B_e`.

    Each tensor's Frobenius norm (not squared) is divided by its number of rows, so the term does not grow
    with the batch size. Multiply by the regularisation weight at the call site.
    """
    return torch.stack([e.norm(p=2) / e.size(0) for e in embeddings]).sum()
