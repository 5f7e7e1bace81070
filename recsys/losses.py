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


# Rows of the logit matrix computed at a time: a block this size stays in a core's cache while it is
# exponentiated and multiplied into both gradients (n = 1,900: 34 rows).
_BLOCK_BYTES = 256 * 1024


class _InBatchInfoNCE(torch.autograd.Function):
    r"""``mean_i [logsumexp_j(a_i · b_j / τ) - a_i · b_i / τ]``, its gradients computed with it, by blocks.

    Why: the ``(n, n)`` logit matrix is the cost of the in-batch loss (n ≈ 2,000 per side on gowalla). The
    autograd form writes and reads it whole in six passes (product, scaling, ``log_softmax`` and their
    backwards), each from memory. Here it is never whole: a block of rows small enough to stay in cache is
    computed, exponentiated about its row maxima :math:`m_i` (:math:`E = \exp(L - m)`, log-sum-exp
    :math:`m_i + \log \sum_j E_{ij}`), scaled by its row sums into the softmax P, and multiplied into both
    gradients, :math:`\partial L / \partial a = (P - I) b / (n τ)` and
    :math:`\partial L / \partial b = (P - I)^T a / (n τ)`, before the next block. The loss is a scalar,
    so the backward only scales the saved gradients. No double backward.
    """

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor, temperature: float) -> Tensor:
        n = a.size(0)
        need_grad = any(ctx.needs_input_grad[:2])
        scaled = a * (1.0 / temperature)
        log_sum = torch.empty(n, dtype=a.dtype, device=a.device)
        grad_a, grad_b = torch.empty_like(a), torch.zeros_like(b)
        step = max(1, _BLOCK_BYTES // max(1, n * a.element_size()))
        for start in range(0, n, step):
            stop = min(start + step, n)
            block = torch.mm(scaled[start:stop], b.T)
            row_max = block.amax(dim=1, keepdim=True)
            row_sum = block.sub_(row_max).exp_().sum(dim=1, keepdim=True)
            log_sum[start:stop] = (row_max + row_sum.log()).squeeze(1)
            if need_grad:
                p = block.div_(row_sum)
                p.diagonal(offset=start).sub_(1.0)
                torch.mm(p, b, out=grad_a[start:stop])
                grad_b.addmm_(p.T, a[start:stop])
        scale = 1.0 / (n * temperature)
        ctx.save_for_backward(grad_a.mul_(scale), grad_b.mul_(scale))
        return (log_sum - (scaled * b).sum(dim=1)).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        grad_a, grad_b = ctx.saved_tensors
        return grad_a * grad, grad_b * grad, None


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
