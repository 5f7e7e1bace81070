"""Loss functions: small, pure, reduced by mean, with their formulas. No model or config in here."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


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
    loss: Tensor = _InBatchInfoNCE.apply(a, b, temperature)
    return loss


class _InBatchInfoNCE(torch.autograd.Function):
    r"""``mean_i [logsumexp_j(a_i · b_j / τ) - a_i · b_i / τ]`` with a hand-written backward.

    Why: the ``(n, n)`` logit matrix is the cost of the in-batch loss (n ≈ 2,000 per side on gowalla). The
    autograd form writes and reads it in six passes (product, scaling, ``log_softmax`` and their
    backwards). Here it is written once and exponentiated once, in place: with row maxima :math:`m_i`,
    :math:`E = \exp(L - m)` gives the log-sum-exp :math:`m_i + \log \sum_j E_{ij}` and, scaled by the row
    sums, the softmax P that both gradients need: :math:`\partial L / \partial a = (P - I) b / (n τ)`,
    :math:`\partial L / \partial b = (P - I)^T a / (n τ)`. The backward scales the saved matrix in place; a
    repeated backward (``retain_graph``) recomputes it. No double backward.
    """

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor, temperature: float) -> Tensor:
        scaled = a * (1.0 / temperature)
        exp = torch.mm(scaled, b.T)
        row_max = exp.amax(dim=1, keepdim=True)
        row_sum = exp.sub_(row_max).exp_().sum(dim=1)
        positive = (scaled * b).sum(dim=1)
        ctx.save_for_backward(a, b)
        ctx.exp, ctx.row_sum, ctx.temperature = exp, row_sum, temperature
        return (row_max.squeeze(1) + row_sum.log() - positive).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        a, b = ctx.saved_tensors
        scale = grad / (a.size(0) * ctx.temperature)
        exp, row_sum = ctx.exp, ctx.row_sum
        if exp is None:  # a second backward (retain_graph): the first one used the matrix up
            exp = torch.mm(a * (1.0 / ctx.temperature), b.T)
            row_sum = exp.sub_(exp.amax(dim=1, keepdim=True)).exp_().sum(dim=1)
        ctx.exp = ctx.row_sum = None
        p = exp.mul_((scale / row_sum)[:, None])  # the softmax, times the output's gradient scale
        p.diagonal().sub_(scale)
        return torch.mm(p, b), torch.mm(p.T, a), None


def info_nce_full(
    anchors: Tensor,
    keys: Tensor,
    positive_index: Tensor,
    temperature: float,
    key_weight: Tensor | None = None,
) -> Tensor:
    r"""InfoNCE with every node of the side as a negative (exact), mean over the anchors.

    With :math:`a_u` and :math:`k_v` the L2-normalised anchor and key rows, :math:`p(u)` the index of
    anchor u's positive among the keys and :math:`\omega_v` the key weights (1 by default),

    .. math::
        \mathcal{L}_{full} = \frac{1}{B} \sum_u \Big[ \log \sum_{v=1}^{N} \omega_v
            \exp(a_u \cdot k_v / \tau) - a_u \cdot k_{p(u)} / \tau \Big]

    The positive stays in the denominator, as in SimGCL. Costs a ``(B, N)`` logit matrix (and as much
    again for its gradient); :func:`info_nce_metanode` estimates the same loss at ``(B, K)``.

    Args:
        anchors: Anchor rows (the batch's nodes in the first view), shape ``(B, d)``.
        keys: All N nodes of the side in the second view, shape ``(N, d)``.
        positive_index: Row of each anchor's positive in ``keys``, shape ``(B,)``, int64.
        temperature: τ.
        key_weight: Optional non-negative weights ω, shape ``(N,)``; no gradient flows into them. A key of
            weight 0 is no negative.

    Returns:
        The loss, a 0-dim tensor.
    """
    a, k = F.normalize(anchors, dim=1), F.normalize(keys, dim=1)
    if key_weight is None:
        logits = (a / temperature) @ k.T
    else:
        logits = torch.addmm(key_weight.detach().to(k.dtype).log(), a / temperature, k.T)
    positive = (a * k[positive_index]).sum(1) / temperature
    return (torch.logsumexp(logits, dim=1) - positive).mean()


def info_nce_metanode(
    anchors: Tensor,
    keys: Tensor,
    positive_index: Tensor,
    assignment: Tensor,
    temperature: float,
    *,
    num_clusters: int,
    second_order: bool = True,
    key_weight: Tensor | None = None,
    detach_keys: bool = False,
) -> Tensor:
    r"""Meta-node estimate of :func:`info_nce_full`: the N keys enter the denominator as K cluster means.

    Each key v belongs to the cluster :math:`c(v)` (hard, fixed: no gradient through the assignment).
    From the current unit keys, with gradient (only the mass :math:`n_k` has none):

    .. math::
        n_k = \sum_{c(v)=k} \omega_v, \qquad
        m_k = \frac{1}{n_k} \sum_{c(v)=k} \omega_v k_v, \qquad
        s^2_{kj} = \frac{1}{n_k} \sum_{c(v)=k} \omega_v (k_{vj} - m_{kj})^2

    (:math:`m_k` is the mean of unit vectors and is *not* renormalised; :math:`s^2` is computed centred, in
    two passes). The logits are

    .. math::
        \ell_{uk} = \log n_k + \frac{a_u \cdot m_k}{\tau}
            \Big[ + \frac{1}{2\tau^2} \sum_j a_{uj}^2 s^2_{kj} \Big]_{\text{second order}}

    with empty clusters (:math:`n_k = 0`) excluded (logit :math:`-\infty`), and

    .. math::
        \mathcal{L}_{meta} = \frac{1}{B} \sum_u \Big[ \operatorname{logsumexp}_k \ell_{uk}
            - a_u \cdot k_{p(u)} / \tau \Big]

    The positive term is exact. The first order uses :math:`E[e^x] \approx e^{E x}` within a cluster (a
    lower bound, by Jensen), the second order :math:`e^{E x + \operatorname{Var} x / 2}` with the diagonal of
    the cluster covariance. With K = N and :math:`c(v) = v` the estimate equals :math:`\mathcal{L}_{full}`,
    gradients included. Cost ``O(N d + B K d)`` time and ``O(B K + K d)`` memory.

    Args:
        anchors: Anchor rows, shape ``(B, d)``.
        keys: All N nodes of the side in the second view, shape ``(N, d)``.
        positive_index: Row of each anchor's positive in ``keys``, shape ``(B,)``, int64.
        assignment: Cluster of each key, shape ``(N,)``, int64 in ``[0, num_clusters)``; ids never used
            are empty clusters and are ignored.
        temperature: τ.
        num_clusters: K.
        second_order: Add the diagonal-variance term (default); ``False`` gives the first order.
        key_weight: Optional non-negative weights ω, shape ``(N,)``; no gradient flows into them.
        detach_keys: No gradient through :math:`m_k` and :math:`s^2` (the negatives then move only the
            anchors; the positive term keeps its gradient). Skips the ``(N, d)`` backward of the cluster
            statistics.

    Returns:
        The loss, a 0-dim tensor.
    """
    if assignment.shape != keys.shape[:1]:
        shape = tuple(assignment.shape)
        msg = f"assignment must have shape ({keys.size(0)},), one cluster per key, got {shape}"
        raise ValueError(msg)
    a, k = F.normalize(anchors, dim=1), F.normalize(keys, dim=1)
    weight = None if key_weight is None else key_weight.detach().to(k.dtype)
    if weight is None:  # uniform: skip the (N, d) products by ω = 1
        mass = torch.bincount(assignment, minlength=num_clusters).to(k.dtype)
    else:
        mass = torch.zeros(num_clusters, dtype=k.dtype, device=k.device).index_add_(0, assignment, weight)
    empty = mass <= 0
    safe_mass = torch.where(empty, torch.ones_like(mass), mass)  # empty clusters: m = s² = 0, then -inf

    def cluster_mean(values: Tensor) -> Tensor:  # (N, d) -> (K, d): (1/n_k) Σ_{c(v)=k} ω_v values_v
        weighted = values if weight is None else weight[:, None] * values
        total = torch.zeros(num_clusters, values.size(1), dtype=k.dtype, device=k.device)
        return total.index_add(0, assignment, weighted) / safe_mass[:, None]

    stats_keys = k.detach() if detach_keys else k
    means = cluster_mean(stats_keys)
    # One (B, K) product for all terms: the scales go on the (B, d) side and log n_k (with -inf for empty
    # clusters) is the bias, which saves (B, K)-sized element-wise passes, forward and backward.
    queries, centres = a / temperature, means
    if second_order:
        var = cluster_mean((stats_keys - means[assignment]).square())
        queries = torch.cat([queries, a.square() / (2 * temperature**2)], dim=1)
        centres = torch.cat([means, var], dim=1)
    bias = safe_mass.log().masked_fill(empty, float("-inf"))
    logits = torch.addmm(bias, queries, centres.T)
    positive = (a * k[positive_index]).sum(1) / temperature
    return (torch.logsumexp(logits, dim=1) - positive).mean()


def l2_reg(*embeddings: Tensor) -> Tensor:
    r"""L2 regulariser as in the SimGCL/XSimGCL authors' code: :math:`\sum_e \lVert e \rVert_F / B_e`.

    Each tensor's Frobenius norm (not squared) is divided by its number of rows, so the term does not grow
    with the batch size. Multiply by the regularisation weight at the call site.
    """
    return torch.stack([e.norm(p=2) / e.size(0) for e in embeddings]).sum()
