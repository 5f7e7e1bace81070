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


# Bytes of a logit matrix computed at a time, per thread (:func:`_blocked_softmax`): a block this size stays
# in the cores' caches while it is exponentiated and multiplied into both gradient products (in-batch,
# n = 1,900, 2 threads: 137 rows). Smaller blocks pay the per-operation and thread start-up overheads too
# often.
_BLOCK_BYTES_PER_THREAD = 512 * 1024


class _InBatchInfoNCE(torch.autograd.Function):
    r"""``mean_i [logsumexp_j(a_i · b_j / τ) - a_i · b_i / τ]``, its gradients computed with it, by blocks.

    Why: the ``(n, n)`` logit matrix is the cost of the in-batch loss (n ≈ 2,000 per side on gowalla). The
    autograd form writes and reads it whole in six passes (product, scaling, ``log_softmax`` and their
    backwards), each from memory. Here it is never whole (:func:`_blocked_softmax`): a block of rows small
    enough to stay in cache is computed, exponentiated and multiplied into both products the gradients need,
    :math:`\partial L / \partial a = (P b - b) / (n τ)` and :math:`\partial L / \partial b = (P^T a - a) /
    (n τ)` with P the row softmax, before the next block. The loss is a scalar, so the backward only scales
    the saved gradients. No double backward.
    """

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor, temperature: float) -> Tensor:
        n = a.size(0)
        scaled = a * (1.0 / temperature)
        log_sum, p_b, p_t_scaled = _blocked_softmax(scaled, b, None, *ctx.needs_input_grad[:2])
        grad_a = None if p_b is None else p_b.sub_(b).mul_(1.0 / (n * temperature))
        grad_b = None if p_t_scaled is None else p_t_scaled.sub_(scaled).mul_(1.0 / n)
        ctx.save_for_backward(grad_a, grad_b)
        return (log_sum - (scaled * b).sum(dim=1)).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        grad_a, grad_b = ctx.saved_tensors
        return None if grad_a is None else grad_a * grad, None if grad_b is None else grad_b * grad, None


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
    order: Tensor | None = None,
) -> Tensor:
    r"""Meta-node estimate of :func:`info_nce_full`: the N keys enter the denominator as K cluster means.

    Each key v belongs to the cluster :math:`c(v)` (hard, fixed: no gradient through the assignment).
    From the current unit keys, with gradient (only the mass :math:`n_k` has none):

    .. math::
        n_k = \sum_{c(v)=k} \omega_v, \qquad
        m_k = \frac{1}{n_k} \sum_{c(v)=k} \omega_v k_v, \qquad
        s^2_{kj} = \frac{1}{n_k} \sum_{c(v)=k} \omega_v (k_{vj} - m_{kj})^2

    (:math:`m_k` is the mean of unit vectors and is *not* renormalised). The logits are

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
    gradients included. Cost ``O(N d + B K d)`` time and ``O(N d + B K + K d)`` memory.

    Computed by :class:`_MetanodeInfoNCE`. The variance is taken in one pass, :math:`s^2 = E[k^2] - m^2`,
    so its rounding error is relative to :math:`E[k_j^2]` rather than to :math:`s^2_{kj}`: a logit moves by
    at most about :math:`(n_k + 3)\,\varepsilon \max_j E_k[k_j^2] / (2\tau^2)` (ε = 2⁻²⁴ in float32; the
    sum's worst case, ~√n_k times less in practice). On clustered float32 data the loss and the gradients
    are as close to a float64 computation as the centred two-pass form's, about 1e-7 and 1e-6 relative
    (``tests/test_metanode.py``).

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
        order: Optional ``torch.argsort(assignment)``, the keys grouped by cluster (any order within a
            cluster); computed here when absent. Pass it when the assignment is reused across steps.

    Returns:
        The loss, a 0-dim tensor.
    """
    if assignment.shape != keys.shape[:1]:
        shape = tuple(assignment.shape)
        msg = f"assignment must have shape ({keys.size(0)},), one cluster per key, got {shape}"
        raise ValueError(msg)
    if order is None:
        order = torch.argsort(assignment, stable=True)
    elif order.shape != assignment.shape:
        msg = f"order must have the assignment's shape {tuple(assignment.shape)}, got {tuple(order.shape)}"
        raise ValueError(msg)
    weight = None if key_weight is None else key_weight.detach()
    loss: Tensor = _MetanodeInfoNCE.apply(
        anchors,
        keys,
        positive_index,
        assignment,
        order,
        weight,
        temperature,
        num_clusters,
        second_order,
        detach_keys,
    )
    return loss


# F.normalize's eps: a row of norm below it is divided by it instead.
_NORM_EPS = 1e-12


class _MetanodeInfoNCE(torch.autograd.Function):
    r""":func:`info_nce_metanode` with its gradients computed together with the loss.

    Why: the autograd form spent its time in (N, d) passes (normalisation, centring, gathers and scatters
    and their backwards: a dozen each way, at N = 41k each one a trip to memory) and in ``(B, K)`` passes
    (``logsumexp`` and its backward). Here,
    with x the raw keys, :math:`r_v = 1/|x_v|` and :math:`k_v = r_v x_v`:

    * the cluster sums :math:`\sum \omega_v k_v` and :math:`\sum \omega_v k_v^2` are two
      ``embedding_bag`` reductions of x and :math:`x^2` over the keys grouped by cluster (``order``), with
      per-key weights :math:`\omega_v r_v` and :math:`\omega_v r_v^2`: the unit keys are never formed, and
      the variance is :math:`E[k^2] - m^2` (see :func:`info_nce_metanode` for its rounding);
    * the ``(B, K)`` logits :math:`L = Q C^T + \log n` (:math:`Q = [a/τ, a^2/(2τ^2)]`, :math:`C = [m, s^2]`)
      are computed a block of rows at a time, exponentiated about the row maxima and multiplied into both
      products the gradients need, :math:`\partial / \partial Q = P C` and :math:`\partial / \partial C =
      P^T Q`, before the next block (:func:`_blocked_softmax`); the softmax P is never formed;
    * the gradient of a key through its cluster's statistics is, with :math:`T_1 = \partial L / \partial m
      / n` and :math:`T_2 = 2\, \partial L / \partial s^2 / n` per cluster,
      :math:`g_v = \omega_v (T_1 + T_2 \circ (k_v - m))_{c(v)} = \omega_v (A + T_2 \circ k_v)_{c(v)}`
      with :math:`A = T_1 - T_2 \circ m`: two gathers of ``(K, d)`` tables, then the normalisation's
      backward :math:`r_v (g_v - k_v (k_v \cdot g_v))`, a block of rows at a time
      (:func:`_key_gradient`); the positive term touches only its B rows.

    The forward computes the loss and the gradients' ``(B, d)`` and ``(K, d)`` parts; the backward only the
    ``(N, d)`` one, with the incoming gradient folded into the per-key weights. No double backward.
    """

    @staticmethod
    def forward(
        ctx: Any,
        anchors: Tensor,
        keys: Tensor,
        positive_index: Tensor,
        assignment: Tensor,
        order: Tensor,
        weight: Tensor | None,
        temperature: float,
        num_clusters: int,
        second_order: bool,
        detach_keys: bool,
    ) -> Tensor:
        need_anchors, need_keys = ctx.needs_input_grad[:2]
        stats_grad = need_keys and not detach_keys
        b, d = anchors.shape
        a_norm = torch.linalg.vector_norm(anchors, dim=1)
        a_inv = a_norm.clamp_min(_NORM_EPS).reciprocal_()
        a = anchors * a_inv[:, None]
        k_norm = torch.linalg.vector_norm(keys, dim=1)
        k_inv = k_norm.clamp_min(_NORM_EPS).reciprocal_()
        counts = torch.bincount(assignment, minlength=num_clusters)
        offsets = counts.cumsum(0).sub_(counts)
        if weight is None:
            mass, row_weight = counts.to(keys.dtype), k_inv  # row_weight: ω_v r_v
        else:
            weight = weight.to(keys.dtype)
            mass = torch.zeros(num_clusters, dtype=keys.dtype, device=keys.device)
            mass.index_add_(0, assignment, weight)
            row_weight = k_inv * weight
        empty = mass <= 0
        safe_mass = torch.where(empty, torch.ones_like(mass), mass)

        def cluster_mean(rows: Tensor, row_weights: Tensor) -> Tensor:  # (1/n_k) Σ_{c(v)=k} w_v rows_v
            sums = F.embedding_bag(order, rows, offsets, mode="sum", per_sample_weights=row_weights[order])
            return sums.div_(safe_mass[:, None])

        means = cluster_mean(keys, row_weight)
        queries, centres = a * (1.0 / temperature), means
        if second_order:
            var = cluster_mean(keys.square(), row_weight * k_inv).sub_(means.square())
            queries = torch.cat([queries, a.square() * (0.5 / temperature**2)], dim=1)
            centres = torch.cat([means, var], dim=1)
        bias = safe_mass.log().masked_fill_(empty, float("-inf"))
        log_sum, grad_q, grad_c = _blocked_softmax(queries, centres, bias, need_anchors, stats_grad)
        positive_keys = keys.index_select(0, positive_index) * k_inv[positive_index, None]
        loss = (log_sum - (queries[:, :d] * positive_keys).sum(dim=1)).mean()
        if not (need_anchors or need_keys):
            return loss
        # The gradients' (B, d) and (K, d) parts now; the (N, d) one in the backward, scaled there for free.
        scale = 1.0 / (b * temperature)
        grad_a = table = table_2 = grad_positive = None
        if need_anchors:
            assert grad_q is not None
            grad_a = grad_q[:, :d].sub_(positive_keys).mul_(scale)  # ∂/∂a of a·m/τ and of -a·k_p/τ
            if second_order:
                grad_a.addcmul_(grad_q[:, d:], a, value=scale / temperature)  # of a²·s²/(2τ²)
            grad_a = _unit_rows_backward(grad_a, a, a_norm, a_inv)
        if need_keys:
            grad_positive = _unit_rows_backward(
                a * -scale, positive_keys, k_norm[positive_index], k_inv[positive_index]
            )
        if stats_grad:
            assert grad_c is not None
            per_mass = (1.0 / (b * safe_mass))[:, None]
            table = grad_c[:, :d].mul(per_mass)  # T_1
            if second_order:
                table_2 = grad_c[:, d:].mul(2 * per_mass)  # T_2
                table.sub_(table_2 * means)  # A
        ctx.save_for_backward(
            grad_a, grad_positive, positive_index, keys, k_norm, k_inv, row_weight, assignment, table, table_2
        )
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        grad_a, grad_positive, positive_index, keys, norm, inv_norm, row_weight, assignment, *tables = (
            ctx.saved_tensors
        )
        table, table_2 = tables
        grad_k = None
        if grad_positive is not None:
            if table is None:  # detached statistics: only the positives' rows
                grad_k = torch.zeros_like(keys)
            else:
                grad_k = _key_gradient(keys, norm, inv_norm, row_weight * grad, assignment, table, table_2)
            grad_k.index_add_(0, positive_index, grad_positive * grad)
        return None if grad_a is None else grad_a * grad, grad_k, *(None,) * 8


# Rows of the keys' (N, d) gradient computed at a time, so that its temporaries stay in cache.
_KEY_BLOCK_ROWS = 4096


def _key_gradient(
    keys: Tensor,
    norm: Tensor,
    inv_norm: Tensor,
    row_weight: Tensor,
    assignment: Tensor,
    table: Tensor,
    table_2: Tensor | None,
) -> Tensor:
    r"""Gradient of the raw keys x through their clusters' statistics (see :class:`_MetanodeInfoNCE`).

    :math:`\omega_v r_v (g_v - k_v (k_v \cdot g_v))` with :math:`k = r x`,
    :math:`g_v = (A + T_2 \circ k_v)_{c(v)}` (``table`` A; ``table_2`` T_2, absent in the first order) and
    ``row_weight`` :math:`\omega_v r_v`, a block of rows at a time.
    """
    out = torch.empty_like(keys)
    for start in range(0, keys.size(0), _KEY_BLOCK_ROWS):
        rows = slice(start, start + _KEY_BLOCK_ROWS)
        x, inv, clusters = keys[rows], inv_norm[rows], assignment[rows]
        grad = table.index_select(0, clusters)
        if table_2 is not None:
            grad.addcmul_(table_2.index_select(0, clusters).mul_(x), inv[:, None])
        radial = (x * grad).sum(dim=1).mul_(inv).masked_fill_(norm[rows] < _NORM_EPS, 0.0)
        weight = row_weight[rows]
        torch.mul(grad, weight[:, None], out=out[rows]).addcmul_(x, (weight * inv * radial).neg_()[:, None])
    return out


def _unit_rows_backward(grad: Tensor, unit: Tensor, norm: Tensor, inv_norm: Tensor) -> Tensor:
    r"""Gradient with respect to x of ``F.normalize(x, dim=1)`` (= unit), given ``grad`` with respect to unit.

    :math:`(g - u (u \cdot g)) / \max(|x|, \epsilon)` row by row; a row below ε has no radial term (the
    clamp passes no gradient). Overwrites ``grad``.
    """
    radial = (unit * grad).sum(dim=1).masked_fill_(norm < _NORM_EPS, 0.0)
    return grad.sub_(unit * radial[:, None]).mul_(inv_norm[:, None])


def _blocked_softmax(
    queries: Tensor, centres: Tensor, bias: Tensor | None, need_queries: bool, need_centres: bool
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    r"""Row log-sum-exp of :math:`L = Q C^T + b`, with :math:`P C` and :math:`P^T Q`, P = row softmax of L.

    A block of rows at a time, small enough to stay in cache: :math:`E = \exp(L - \max)` and its row sums
    Σ, then :math:`(E C) / Σ` and :math:`E^T (Q / Σ)`, so the division by Σ is paid on the narrow
    ``(rows, d)`` side. The bias b (none: 0) may hold -inf (a column no row picks); each row needs one finite
    logit. The one home of the blocked softmax of both the in-batch and the meta-node loss.
    """
    n, kk = queries.size(0), centres.size(0)
    log_sum = torch.empty(n, dtype=queries.dtype, device=queries.device)
    grad_q = torch.empty_like(queries) if need_queries else None
    grad_c = torch.zeros_like(centres) if need_centres else None
    block_bytes = _BLOCK_BYTES_PER_THREAD * torch.get_num_threads()
    step = max(1, block_bytes // max(1, kk * queries.element_size()))
    centres_t = centres.T
    for start in range(0, n, step):
        stop = min(start + step, n)
        rows = queries[start:stop]
        block = torch.mm(rows, centres_t) if bias is None else torch.addmm(bias, rows, centres_t)
        row_max = block.amax(dim=1, keepdim=True)
        row_sum = block.sub_(row_max).exp_().sum(dim=1, keepdim=True)
        log_sum[start:stop] = (row_max + row_sum.log()).squeeze(1)
        if grad_q is not None or grad_c is not None:
            inv_sum = row_sum.reciprocal_()
            if grad_q is not None:
                torch.mm(block, centres, out=grad_q[start:stop]).mul_(inv_sum)
            if grad_c is not None:
                grad_c.addmm_(block.T, rows * inv_sum)
    return log_sum, grad_q, grad_c


def softmax_loss(
    anchors: Tensor,
    keys: Tensor,
    positive_index: Tensor,
    temperature: float,
    log_q: Tensor | None = None,
    *,
    cosine: bool = True,
) -> Tensor:
    r"""Softmax (cross-entropy) loss of each anchor's positive key among all the keys, mean over the anchors.

    The recommendation loss of the sampled softmax (SSM, Wu et al., arXiv 2201.02327) and of its full form.
    With :math:`s_{bc} = z_b \cdot k_c` (the rows L2-normalised when ``cosine``: cosine similarities), τ
    the temperature and :math:`\delta_c` the log-Q correction of key c (0 when ``log_q`` is ``None``),

    .. math::
        \mathcal{L}_{SM} = \frac{1}{B} \sum_b \Big[ \log \sum_{c=1}^{C} \exp(s_{bc}/\tau - \delta_c)
            - s_{b\,p(b)} / \tau \Big]

    The positive's own term stays in the denominator (as in SSM and InfoNCE); the numerator is not
    corrected, so that with :math:`\delta_c = \log E[n_c]`, the expected number of times key c is in a
    sample, the denominator estimates :math:`\sum_{j \in \mathcal{I}} \exp(s_{bj}/\tau)` and the loss the
    full softmax's (Bengio & Senécal; Yi et al., RecSys 2019). Correcting the numerator too would only add
    a constant: the gradient is the same. With the keys being every item and no correction it *is* the
    full softmax.

    Computed by blocks of rows with its gradients (:class:`_SoftmaxCrossEntropy`): the ``(B, C)`` logit
    matrix is never whole.

    Args:
        anchors: The users' rows, shape ``(B, d)``.
        keys: The candidate items' rows, shape ``(C, d)``; may repeat an item (each copy is a term).
        positive_index: Row of each anchor's positive in ``keys``, shape ``(B,)``, int64.
        temperature: τ.
        log_q: Optional :math:`\delta`, shape ``(C,)``; no gradient flows into it.
        cosine: Normalise the rows first (cosine similarity); ``False`` scores by the raw dot product.

    Returns:
        The loss, a 0-dim tensor.
    """
    a, k = (F.normalize(anchors, dim=1), F.normalize(keys, dim=1)) if cosine else (anchors, keys)
    bias = None if log_q is None else log_q.detach().to(k.dtype).neg()
    loss: Tensor = _SoftmaxCrossEntropy.apply(a * (1.0 / temperature), k, positive_index, bias)
    return loss


class _SoftmaxCrossEntropy(torch.autograd.Function):
    r"""``mean_b [logsumexp_c(q_b · k_c + β_c) - q_b · k_{p(b)}]``, its gradients computed with it, by blocks.

    Why: as for :class:`_InBatchInfoNCE`, the ``(B, C)`` logits are the cost (B = 2,048 rows against 2,048
    in-batch and M shared keys); :func:`_blocked_softmax` computes a block of rows at a time, exponentiates
    it and multiplies it into :math:`P k` and :math:`P^T q`, so the gradients
    :math:`\partial L / \partial q = (P k - k_{p}) / B` and :math:`\partial L / \partial k = (P^T q - \sum
    q \text{ at each positive}) / B` come out of the forward without the matrix being kept. No double
    backward.
    """

    @staticmethod
    def forward(
        ctx: Any, queries: Tensor, keys: Tensor, positive_index: Tensor, bias: Tensor | None
    ) -> Tensor:
        b = queries.size(0)
        need_q, need_k = ctx.needs_input_grad[:2]
        log_sum, p_k, p_t_q = _blocked_softmax(queries, keys, bias, need_q, need_k)
        positive_keys = keys.index_select(0, positive_index)
        loss = (log_sum - (queries * positive_keys).sum(dim=1)).mean()
        grad_q = None if p_k is None else p_k.sub_(positive_keys).div_(b)
        grad_k = None
        if p_t_q is not None:
            grad_k = p_t_q.index_add_(0, positive_index, queries, alpha=-1.0).div_(b)
        ctx.save_for_backward(grad_q, grad_k)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        grad_q, grad_k = ctx.saved_tensors
        return (
            None if grad_q is None else grad_q * grad,
            None if grad_k is None else grad_k * grad,
            None,
            None,
        )


def bilateral_positive(
    scores: Tensor, groups: Tensor, temperature: float, positive_temperature: float
) -> Tensor:
    r"""BSL's positive side: a log-mean-exp over each user's positives, at the temperature τ₂.

    With :math:`s_b` the score of row b's (user, positive) pair and :math:`G(b)` the rows of the same user,

    .. math::
        \pi_b = \frac{\tau_2}{\tau} \log \frac{1}{|G(b)|} \sum_{b' \in G(b)} \exp(s_{b'} / \tau_2)

    (Wu et al., ICDE 2024, arXiv 2312.12882: the Log-Expectation-Exp of the softmax's negative side applied
    to the positives, scaled by 1/τ as the negative side is). It weighs a user's positives by
    :math:`\operatorname{softmax}(s/\tau_2)`: a low-scored (likely noisy) positive pulls less. As
    :math:`\tau_2 \to \infty` it is the mean of :math:`s/\tau` over the group (the softmax loss's positive
    term); a user with one row has :math:`\pi_b = s_b/\tau` for any τ₂.

    Args:
        scores: :math:`s_b`, shape ``(B,)``.
        groups: The user of each row as a group id, shape ``(B,)``, int64 in ``[0, G)``.
        temperature: τ, the softmax's.
        positive_temperature: τ₂.

    Returns:
        :math:`\pi`, shape ``(B,)``.
    """
    x = scores / positive_temperature
    size = int(groups.max()) + 1 if groups.numel() else 0
    # The group maximum only keeps exp() in range; the value does not depend on it, so no gradient.
    peak = torch.full((size,), float("-inf"), dtype=x.dtype, device=x.device)
    peak = peak.scatter_reduce(0, groups, x.detach(), reduce="amax").index_select(0, groups)
    sums = torch.zeros(size, dtype=x.dtype, device=x.device).index_add(0, groups, (x - peak).exp())
    counts = torch.bincount(groups, minlength=size).to(x.dtype)
    log_mean = (sums / counts).log().index_select(0, groups) + peak
    return log_mean * (positive_temperature / temperature)


def bsl_loss(
    anchors: Tensor,
    keys: Tensor,
    positive_index: Tensor,
    groups: Tensor,
    temperature: float,
    positive_temperature: float,
    log_q: Tensor | None = None,
    *,
    cosine: bool = True,
) -> Tensor:
    r"""Bilateral softmax loss (BSL): :func:`softmax_loss` with a log-mean-exp over each user's positives.

    With the notation of :func:`softmax_loss` and :math:`\pi_b` of :func:`bilateral_positive` (the
    positive scores :math:`s_b = s_{b\,p(b)}`, grouped by user),

    .. math::
        \mathcal{L}_{BSL} = \frac{1}{B} \sum_b \Big[ \log \sum_{c} \exp(s_{bc}/\tau - \delta_c) - \pi_b \Big]
            = \mathcal{L}_{SM} + \frac{1}{B} \sum_b \big( s_b / \tau - \pi_b \big)

    Within a mini-batch a user's positives are its rows in the batch, as in the authors' code (its
    ``multi`` mode); with each user once in the batch BSL equals the softmax loss.

    Args:
        anchors: The users' rows, shape ``(B, d)``.
        keys: The candidate items' rows, shape ``(C, d)``.
        positive_index: Row of each anchor's positive in ``keys``, shape ``(B,)``, int64.
        groups: The user of each row as a group id, shape ``(B,)``, int64 in ``[0, G)``.
        temperature: τ (the negative side's).
        positive_temperature: τ₂ (the positive side's).
        log_q: Optional log-Q correction δ of the keys, shape ``(C,)``.
        cosine: Score by cosine similarity (else the raw dot product).

    Returns:
        The loss, a 0-dim tensor.
    """
    softmax = softmax_loss(anchors, keys, positive_index, temperature, log_q, cosine=cosine)
    return softmax + bilateral_gap(
        anchors, keys[positive_index], groups, temperature, positive_temperature, cosine
    )


def bilateral_gap(
    anchors: Tensor,
    positives: Tensor,
    groups: Tensor,
    temperature: float,
    positive_temperature: float,
    cosine: bool = True,
) -> Tensor:
    r"""What BSL adds to a softmax loss with the same denominator.

    .. math::
        \Delta_{BSL} = \frac{1}{B} \sum_b \big( s_b / \tau - \pi_b \big)

    with :math:`s_b` the (cosine) score of row b's pair and :math:`\pi_b` of :func:`bilateral_positive`. Its
    own function so that any denominator (sampled, full, meta-node) becomes BSL by adding it.

    Args:
        anchors: The users' rows, shape ``(B, d)``.
        positives: Their positive items' rows, shape ``(B, d)``.
        groups: The user of each row as a group id, shape ``(B,)``, int64.
        temperature: τ.
        positive_temperature: τ₂.
        cosine: Score by cosine similarity (else the raw dot product).

    Returns:
        A 0-dim tensor, :math:`\le 0` (a mean of exponentials is at least the exponential of the mean).
    """
    a, p = (F.normalize(anchors, dim=1), F.normalize(positives, dim=1)) if cosine else (anchors, positives)
    scores = (a * p).sum(dim=1)
    return (
        scores / temperature - bilateral_positive(scores, groups, temperature, positive_temperature)
    ).mean()


def l2_reg(*embeddings: Tensor) -> Tensor:
    r"""L2 regulariser as in the SimGCL/XSimGCL authors' code: :math:`\sum_e \lVert e \rVert_F / B_e`.

    Each tensor's Frobenius norm (not squared) is divided by its number of rows, so the term does not grow
    with the batch size. Multiply by the regularisation weight at the call site.
    """
    return torch.stack([e.norm(p=2) / e.size(0) for e in embeddings]).sum()
