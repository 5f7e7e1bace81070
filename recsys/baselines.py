r"""Reference rows of every evaluation: most popular, random, and a training-free graph filter.

Each is computed at its natural cost, from the training interactions of the protocol only:

* ``popular``: every user gets the items ranked by training popularity (ties: smaller index first), minus
  the user's masked items. All lists are cut from one global order (:func:`popular_lists`), no scoring.
* ``random``: a uniformly random ranking of each user's candidate (unmasked) items. Its metrics are the
  closed-form expectations (:func:`expected_random`), exact and free of sampling noise; full ranking of
  uniform scores (:class:`RandomScorer`) is kept as the reference they are tested against.
* ``graph-filter``: a closed-form low-pass filter over the normalised item-item graph, the GF-CF family
  (Shen et al., CIKM 2021). With :math:`\tilde R = D_U^{-1/2} R D_I^{-1/2}` (training interactions, user and
  item degrees) and its top-``k`` right singular vectors :math:`V_k`, a user :math:`r_u` scores items by

  .. math::

      s_u = \left( r_u \tilde R^\top \tilde R
            + \alpha\, r_u D_I^{-1/2} V_k V_k^\top D_I^{1/2} \right) D_I^{\gamma}

  a linear filter (normalised co-occurrence) plus an ideal low-pass filter (the smooth, low-frequency part of
  the item graph), tilted towards popular items by :math:`\gamma`. The first term is one sparse product per
  chunk of users; the second a dense ``(B, k) x (k, num_items)`` product into the score buffer. :math:`V_k`
  comes from a randomized SVD (subspace iteration on the sparse :math:`\tilde R`, Halko et al. 2011).
  :math:`\alpha` and :math:`\gamma` are selected on the selection split (valid under the honest protocol),
  from a 3 x 3 grid, on a fixed sample of its users (:meth:`GraphFilter.select`).
"""

from __future__ import annotations

import itertools
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from recsys.metrics import RankingAccumulator, check_ks
from recsys.ranking import (
    ChunkedPairs,
    GroundTruth,
    ListMeasure,
    RankingResult,
    auto_batch_size,
    excluded_pairs,
    topk_chunks,
)
from recsys.segments import ITEM_SEGMENTS, USER_SEGMENTS, Segments, summarise

if TYPE_CHECKING:  # scipy is imported where the graph filter is built: `recsys evaluate` starts faster
    import scipy.sparse as sp

logger = logging.getLogger(__name__)

BASELINES = {
    "popular": "the most popular training items the user has not seen",
    "random": "a uniformly random ranking (closed-form expected metrics)",
    "graph-filter": "training-free low-pass graph filter (GF-CF family), tuned on the selection split",
}
DEFAULT_BASELINES = ("popular", "random")
"""The rows ``recsys evaluate`` adds by default: nearly free next to the model's own ranking. The graph
filter costs a fit (under a minute on gowalla), so it is asked for by name; ``recsys report`` has it."""


# ------------------------------------------------------------------------------------------ popular


def popularity_order(train: Tensor, num_items: int) -> Tensor:
    """Items by training popularity, most popular first; ties by smaller index (deterministic)."""
    popularity = torch.bincount(train[1].cpu(), minlength=num_items)
    return torch.argsort(popularity, descending=True, stable=True)


class PopularityScorer:
    """Most popular as full-ranking scores (the item's place in :func:`popularity_order`).

    The reference :func:`popular_lists` is tested against. The score of an item is ``num_items - rank``
    (exact in float32 up to 2**24 items).

    Args:
        train: Training interactions, shape ``(2, E)``, ``[user_idx; item_idx]``.
        num_items: Catalogue size.
        dtype: Dtype of the scores.
    """

    def __init__(self, train: Tensor, num_items: int, *, dtype: torch.dtype = torch.float32) -> None:
        self.device = train.device
        self.dtype = dtype
        order = popularity_order(train, num_items).to(self.device)
        scores = torch.empty(num_items, dtype=dtype, device=self.device)
        scores[order] = torch.arange(num_items, 0, -1, device=self.device).to(dtype)
        self.scores = scores

    def __call__(self, users: Tensor, out: Tensor) -> None:
        """Broadcast the item scores to every row of ``out`` (shape ``(B, num_items)``)."""
        out.copy_(self.scores.expand_as(out))


def popular_lists(
    order: Tensor,
    users: Tensor,
    k: int,
    *,
    num_users: int,
    exclude: Tensor | ChunkedPairs,
    batch_size: int = 4096,
) -> Iterator[tuple[int, int, Tensor]]:
    r"""The first ``k`` items of ``order`` each user may get, chunked like :func:`recsys.ranking.topk_chunks`.

    No scores and no per-user window: if a user's masked items sit at places :math:`m_0 < m_1 < \dots` of
    the order, its :math:`j`-th free place (from 0) is :math:`j + |\{t : m_t - t \le j\}|` (each masked place
    before it pushes it one further), one ``searchsorted`` for all users and places. A user with fewer than
    ``k`` candidates gets ``-1`` padding.

    Args:
        order: All items, best first, ``(num_items,)``.
        users: Users to rank for, ``(U,)``, distinct.
        k: List length.
        num_users: Number of users.
        exclude: Pairs never to recommend, ``(2, E)``, or the same prepared for ``users``
            (:func:`recsys.ranking.excluded_pairs`).
        batch_size: Users per chunk.

    Yields:
        ``(start, end, index)`` with ``index`` of shape ``(end - start, k)``.
    """
    num_items = order.numel()
    order, users = order.cpu(), users.cpu()
    rank = torch.empty_like(order)
    rank[order] = torch.arange(num_items)
    masked = excluded_pairs(exclude, users, num_users, num_items)
    stride = num_items + 1
    places = torch.arange(k)
    for start in range(0, users.numel(), batch_size):
        end = min(start + batch_size, users.numel())
        keys = masked.chunk(start, end)
        rows = keys // num_items
        ranked = torch.sort(rows * stride + rank[keys % num_items]).values  # masked places, per row ascending
        first = torch.searchsorted(ranked, torch.arange(end - start + 1) * stride)
        within = torch.arange(ranked.numel()) - first[ranked // stride]
        shifted = ranked - within  # m_t - t, non-decreasing within a row
        queries = torch.arange(end - start).unsqueeze(1) * stride + places
        before = torch.searchsorted(shifted, queries, right=True) - first[:-1].unsqueeze(1)
        free = places + before
        index = torch.where(free < num_items, order[free.clamp(max=num_items - 1)], -1)
        yield start, end, index


# ------------------------------------------------------------------------------------------- random


class RandomScorer:
    """Random baseline as full ranking: i.i.d. uniform scores, a uniformly random ranking per user.

    The reference :func:`expected_random` is tested against. Reproducible for a given seed, batch size and
    device; each scorer object draws from its own generator.

    Args:
        seed: Seed of the generator.
        device: Where to draw the scores.
        dtype: Dtype of the scores.
    """

    def __init__(
        self, seed: int = 0, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def __call__(self, users: Tensor, out: Tensor) -> None:
        """Fill ``out`` (shape ``(B, num_items)``) with U(0, 1) draws."""
        out.uniform_(generator=self.generator)


def expected_random(
    truth: GroundTruth,
    exclude: Tensor | ChunkedPairs,
    ks: Sequence[int],
    *,
    item_popularity: Tensor | None = None,
    segments: Segments | None = None,
) -> RankingResult:
    r"""The expected metrics of a uniformly random ranking of each user's candidate items, in closed form.

    A user with :math:`n` candidates (items not masked), :math:`g` of them relevant, gets a uniformly random
    list of :math:`m = \min(K, n)` of them. Position :math:`j` holds a relevant item with probability
    :math:`g / n`, so :math:`E[hits] = m g / n` (recall, precision) and
    :math:`E[DCG] = (g / n) \sum_{j \le m} 1 / \log_2(j + 1)`; no hit in the first :math:`j` places has
    probability :math:`Q_j = \prod_{t < j} (n - g - t) / (n - t)` (hit rate :math:`1 - Q_m`, and the first hit
    at :math:`j` has probability :math:`Q_{j-1}\, g / (n - j + 1)` for MRR). Item :math:`i` is in the list
    with probability :math:`m / n` when it is a candidate: summed over users that is its expected exposure
    (popularity, Gini and tail share are taken of it), and one minus the product of the complements over
    users is the chance it is covered.

    Args:
        truth: The evaluated users and their relevant items.
        exclude: Masked pairs, ``(2, E)``, or the same prepared for ``truth.users``
            (:func:`recsys.ranking.excluded_pairs`).
        ks: Cut-offs.
        item_popularity: Popularity per item, for ``popularity@K``.
        segments: If given, the segment metrics too (``gini@K`` is then that of the expected exposure).

    Returns:
        The expected metrics, as a :class:`recsys.ranking.RankingResult`.
    """
    start = time.perf_counter()
    ks = check_ks(ks)
    f64 = torch.float64
    num_items, num_rows = truth.num_items, len(truth)
    device = truth.users.device
    masked = excluded_pairs(exclude, truth.users, truth.num_users, num_items)
    masked_rows, masked_items = masked.keys // num_items, masked.keys % num_items
    n = (num_items - masked.indptr.diff()).to(f64)  # candidates per user
    rel_rows, rel_items = truth.keys.keys // num_items, truth.keys.keys % num_items
    rel_free = ~torch.isin(truth.keys.keys, masked.keys)  # relevant and not masked: can be recommended
    num_relevant = truth.num_relevant.to(f64)
    g = torch.bincount(rel_rows[rel_free], minlength=num_rows).to(f64)
    k_t = torch.tensor(ks, dtype=f64, device=device)
    m = torch.minimum(k_t.unsqueeze(0), n.unsqueeze(1))  # (U, ks): list lengths
    p = torch.where(n.unsqueeze(1) > 0, m / n.clamp(min=1).unsqueeze(1), 0.0)  # P(a candidate is listed)

    groups = segments.user_segment.to(device)[truth.users] if segments is not None else None
    acc = RankingAccumulator(
        ks, num_items, device=device, num_groups=0 if groups is None else len(USER_SEGMENTS)
    )
    acc.add_users(_expected_user_metrics(n, g, num_relevant, m, k_t), groups)
    metrics = acc.compute()
    # Per item, summed over the users it is a candidate for: expected exposure, and P(listed by none).
    exposure = (p.sum(0) - _scatter_rows(p, masked_rows, masked_items, num_items)).t().clamp(min=0)
    full = (p >= 1.0).to(f64)  # a user whose list holds all its candidates covers each of them
    log_keep = torch.log1p(-p.clamp(max=1.0 - 1e-12)) * (1.0 - full)
    full_i = full.sum(0) - _scatter_rows(full, masked_rows, masked_items, num_items)
    log_i = log_keep.sum(0) - _scatter_rows(log_keep, masked_rows, masked_items, num_items)
    covered = torch.where(full_i > 0.5, 1.0, -torch.expm1(log_i))  # (num_items, ks)
    for j, k in enumerate(ks):
        metrics[f"coverage@{k}"] = float(covered[:, j].mean())
        if item_popularity is not None:
            pop = item_popularity.to(device, f64)
            metrics[f"popularity@{k}"] = float(
                (exposure[j] * pop).sum() / exposure[j].sum().clamp(min=1e-300)
            )

    result_segments = None
    if segments is not None:
        seg = segments.item_segment.to(device)
        recall_sums = torch.zeros(len(ITEM_SEGMENTS), len(ks), dtype=f64, device=device)
        users_in = torch.zeros(len(ITEM_SEGMENTS), dtype=f64, device=device)
        for s in range(len(ITEM_SEGMENTS)):  # E[hits on the segment] = p * (its free relevant items)
            in_s = (seg[rel_items] == s).to(f64)
            total = torch.zeros(num_rows, dtype=f64, device=device).index_add_(0, rel_rows, in_s)
            free = torch.zeros(num_rows, dtype=f64, device=device).index_add_(0, rel_rows, in_s * rel_free)
            has = total > 0
            recall_sums[s] = (p[has] * (free[has] / total[has]).unsqueeze(1)).sum(0)
            users_in[s] = has.sum()
        result_segments = summarise(ks, acc.compute_groups(), recall_sums, users_in, exposure, seg)
        metrics.update(result_segments.pop("bias"))
    return RankingResult(
        metrics=metrics,
        num_users=num_rows,
        num_skipped=truth.num_users - num_rows,
        seconds=time.perf_counter() - start,
        segments=result_segments,
        exposure=exposure.cpu() if segments is not None else None,
    )


def _expected_user_metrics(n: Tensor, g: Tensor, num_relevant: Tensor, m: Tensor, k_t: Tensor) -> Tensor:
    """Per user and K, the expected recall, NDCG, precision, hit and MRR: ``(metrics, U, ks)``.

    Args:
        n: Candidates per user, ``(U,)``.
        g: Relevant candidates per user, ``(U,)``.
        num_relevant: :math:`|R_u|`, masked relevant items included, ``(U,)``.
        m: List lengths ``min(K, n)``, ``(U, ks)``.
        k_t: The cut-offs, ``(ks,)``.
    """
    f64, device = torch.float64, n.device
    max_k = int(k_t.max())
    share = torch.where(n > 0, g / n.clamp(min=1), 0.0).unsqueeze(1)  # P(a place holds a relevant item)
    hits = m * share
    place = torch.arange(max_k + 1, dtype=f64, device=device)  # 0..max_k
    discount = torch.cat([place.new_zeros(1), 1.0 / torch.log2(place[1:] + 1.0)])
    cum_discount = discount.cumsum(0)  # [j] = sum of the first j discounts
    m_idx = m.long()
    idcg = cum_discount[torch.minimum(num_relevant.long().unsqueeze(1), k_t.long().unsqueeze(0))]
    # q_t = P(place t+1 misses | places 1..t missed); 1 past the candidates (those places never count).
    inside = place[:-1] < n.unsqueeze(1)
    left = (n.unsqueeze(1) - place[:-1]).clamp(min=1)
    q = torch.where(inside, ((left - g.unsqueeze(1)) / left).clamp(min=0), 1.0)
    ones = torch.ones(n.numel(), 1, dtype=f64, device=device)
    miss = torch.cat([ones, q.cumprod(1)], dim=1)  # Q_0..Q_max_k
    first = torch.where(inside, miss[:, :-1] * g.unsqueeze(1) / left, 0.0)  # P(first hit at place t+1)
    mrr = torch.cat([ones * 0.0, (first / place[1:]).cumsum(1)], dim=1)
    return torch.stack(
        [
            hits / num_relevant.unsqueeze(1),
            share * cum_discount[m_idx] / idcg,
            hits / k_t,
            1.0 - miss.gather(1, m_idx),
            mrr.gather(1, m_idx),
        ]
    )


def _scatter_rows(values: Tensor, rows: Tensor, items: Tensor, num_items: int) -> Tensor:
    """``out[i] = sum of values[row]`` over the pairs ``(row, i)``: ``(U, C)`` -> ``(num_items, C)``."""
    out = torch.zeros(num_items, values.size(1), dtype=values.dtype, device=values.device)
    return out.index_add_(0, items, values[rows])


# ------------------------------------------------------------------------------------- graph filter


@dataclass(frozen=True)
class GraphFilterConfig:
    r"""Hyperparameters of the graph filter and the grid it is tuned on.

    Args:
        rank: ``k``, singular vectors of the ideal low-pass part; at most a quarter of the smaller side of
            the interaction matrix (a filter that keeps most of the spectrum filters nothing).
        ideal_weights: Grid of :math:`\alpha`, the weight of the ideal low-pass part.
        popularity_exponents: Grid of :math:`\gamma`, the tilt towards popular items.
        power_iterations: Subspace iterations of the randomized SVD.
        oversampling: Extra columns of the randomized SVD.
        selection_users: Users of the selection split the grid is evaluated on (a fixed random sample when
            the split has more).
        metric: Selection metric.
        seed: Seed of the randomized SVD and the user sample.
    """

    rank: int = 512
    ideal_weights: tuple[float, ...] = (0.1, 0.3, 1.0)
    popularity_exponents: tuple[float, ...] = (0.0, 0.1, 0.2)
    power_iterations: int = 3
    oversampling: int = 32
    selection_users: int = 8192
    metric: str = "recall@20"
    seed: int = 0


@dataclass(frozen=True)
class Selection:
    """The grid point chosen on the selection split, and the metric of every point."""

    ideal_weight: float
    popularity_exponent: float
    metric: str
    value: float
    num_users: int
    grid: dict[str, float] = field(default_factory=dict)


class GraphFilter:
    """The fitted filter: the sparse item-item operator and the low-pass singular vectors (module docstring).

    Args:
        train: Training interactions, ``(2, E)``.
        num_users: Number of users.
        num_items: Number of items.
        config: Hyperparameters.
    """

    def __init__(
        self, train: Tensor, num_users: int, num_items: int, config: GraphFilterConfig | None = None
    ) -> None:
        import scipy.sparse as sp

        start = time.perf_counter()
        self.config = config or GraphFilterConfig()
        self.num_users, self.num_items = num_users, num_items
        users, items = train.cpu().numpy()
        ones = np.ones(users.size, dtype=np.float32)
        r = sp.csr_matrix((ones, (users, items)), shape=(num_users, num_items), dtype=np.float32)
        r.sum_duplicates()
        r.data[:] = 1.0
        self.interactions = r
        self.item_degree = np.asarray(r.sum(axis=0), dtype=np.float64).ravel()
        user_degree = np.asarray(r.sum(axis=1), dtype=np.float64).ravel()
        norm = (sp.diags(_power(user_degree, -0.5)) @ r @ sp.diags(_power(self.item_degree, -0.5))).astype(
            np.float32
        )
        self.item_item = (norm.T @ norm).tocsr()  # the linear filter's operator
        self.rank = max(1, min(self.config.rank, min(num_users, num_items) // 4))
        vt = _top_right_singular_vectors(norm.tocsr(), self.rank, self.config)  # (k, num_items)
        self.user_side = np.ascontiguousarray((vt * _power(self.item_degree, -0.5)).T, dtype=np.float32)
        self.item_side = np.ascontiguousarray(vt * _power(self.item_degree, 0.5), dtype=np.float32)
        self.seconds = time.perf_counter() - start
        logger.info(
            "graph filter: %d x %d, %s item-item non-zeros, rank %d, built in %.1f s",
            num_users,
            num_items,
            f"{self.item_item.nnz:,}",
            self.rank,
            self.seconds,
        )

    def scorer(self, ideal_weight: float, popularity_exponent: float) -> GraphFilterScorer:
        """The scorer of one grid point (CPU, float32)."""
        import scipy.sparse as sp

        tilt = _power(self.item_degree, popularity_exponent)
        linear = (self.item_item @ sp.diags(tilt.astype(np.float32))).tocsr()
        ideal = np.ascontiguousarray(self.item_side * (ideal_weight * tilt), dtype=np.float32)
        return GraphFilterScorer(self.interactions, linear, self.user_side, ideal)

    def components(self, users: np.ndarray, linear: np.ndarray, ideal: np.ndarray) -> None:
        """The two filters' scores for ``users`` without weights or tilt, into ``linear`` and ``ideal``."""
        rows = self.interactions[users]
        np.matmul(rows @ self.user_side, self.item_side, out=ideal)
        (rows @ self.item_item).toarray(out=linear)

    def select(self, truth: Tensor, exclude: Tensor, *, batch_size: int | None = None) -> Selection:
        """Evaluate the grid on (a sample of) the users of ``truth`` and return the best point.

        Each chunk of users gets the two filters' scores once; every grid point then mixes them into the
        score buffer and is ranked and measured as a full ranking (:func:`recsys.ranking.topk_chunks`).

        Args:
            truth: Relevant pairs of the selection split, ``(2, E)``.
            exclude: Pairs never recommended there (e.g. train), ``(2, E')``.
            batch_size: Users per chunk; default: :func:`recsys.ranking.auto_batch_size`.
        """
        cfg = self.config
        k = int(cfg.metric.split("@")[1])
        users = torch.unique(truth[0].cpu())
        if users.numel() > cfg.selection_users:
            g = torch.Generator().manual_seed(cfg.seed)
            users = torch.sort(
                users[torch.randperm(users.numel(), generator=g)[: cfg.selection_users]]
            ).values
        keep = torch.zeros(self.num_users, dtype=torch.bool)
        keep[users] = True
        truth = truth.cpu()[:, keep[truth[0].cpu()]]
        exclude = exclude.cpu()[:, keep[exclude[0].cpu()]]
        gt = GroundTruth(truth, self.num_users, self.num_items, "cpu")
        grid = list(itertools.product(cfg.ideal_weights, cfg.popularity_exponents))
        measures = [ListMeasure(gt, (k,)) for _ in grid]
        size = min(batch_size or auto_batch_size(self.num_items), max(len(gt), 1))
        linear, ideal, out = (torch.empty(size, self.num_items) for _ in range(3))
        for start in range(0, len(gt), size):
            end = min(start + size, len(gt))
            chunk = gt.users[start:end]
            self.components(chunk.numpy(), linear[: end - start].numpy(), ideal[: end - start].numpy())
            for (alpha, gamma), measure in zip(grid, measures, strict=True):
                mix = _Mix(linear, ideal, alpha, torch.from_numpy(_power(self.item_degree, gamma)).float())
                lists = topk_chunks(
                    mix,
                    chunk,
                    k,
                    num_users=self.num_users,
                    num_items=self.num_items,
                    exclude=exclude,
                    batch_size=size,
                    buffer=out,
                )
                for s, e, index in lists:
                    measure.update(start + s, start + e, index)
        values = [measure.result().metrics[cfg.metric] for measure in measures]
        best = max(range(len(grid)), key=lambda i: (values[i], -i))  # first of equals
        alpha, gamma = grid[best]
        return Selection(
            ideal_weight=alpha,
            popularity_exponent=gamma,
            metric=cfg.metric,
            value=values[best],
            num_users=len(gt),
            grid={f"alpha={a:g},gamma={c:g}": v for (a, c), v in zip(grid, values, strict=True)},
        )


class GraphFilterScorer:
    r"""Scores of one graph-filter grid point: the dense low-pass product, then the sparse linear part added.

    Args:
        interactions: ``(num_users, num_items)`` CSR of the training interactions.
        linear: The linear filter's item-item operator with the tilt applied, CSR.
        user_side: :math:`D_I^{-1/2} V_k`, ``(num_items, k)``.
        item_side: :math:`\alpha V_k^\top D_I^{1/2 + \gamma}`, ``(k, num_items)``.
    """

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(
        self, interactions: sp.csr_matrix, linear: sp.csr_matrix, user_side: np.ndarray, item_side: np.ndarray
    ) -> None:
        self.interactions, self.linear = interactions, linear
        self.user_side, self.item_side = user_side, item_side

    def __call__(self, users: Tensor, out: Tensor) -> None:
        """Write the scores of ``users`` into ``out`` (``(B, num_items)``, contiguous float32 on CPU)."""
        from scipy.linalg.blas import sgemm

        target = out.numpy()
        if not target.flags.c_contiguous:
            msg = "the graph filter writes into a C-contiguous score buffer"
            raise ValueError(msg)
        rows = self.interactions[users.cpu().numpy()]
        (rows @ self.linear).toarray(out=target)
        # target += (rows @ user_side) @ item_side, by BLAS with beta = 1 on the transposed (Fortran) views.
        sgemm(1.0, self.item_side.T, (rows @ self.user_side).T, beta=1.0, c=target.T, overwrite_c=True)


class _Mix:
    """``out = (linear + alpha * ideal) * tilt`` for the chunk already in the component buffers."""

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, linear: Tensor, ideal: Tensor, alpha: float, tilt: Tensor) -> None:
        self.linear, self.ideal, self.alpha, self.tilt = linear, ideal, alpha, tilt

    def __call__(self, users: Tensor, out: Tensor) -> None:
        n = users.numel()
        torch.add(self.linear[:n], self.ideal[:n], alpha=self.alpha, out=out)
        out.mul_(self.tilt)


def _power(values: np.ndarray, exponent: float) -> np.ndarray:
    """``values ** exponent`` where positive, 0 elsewhere (items or users without training interactions)."""
    out = np.zeros_like(values, dtype=np.float64)
    positive = values > 0
    out[positive] = values[positive] ** exponent
    return out


def _top_right_singular_vectors(matrix: sp.csr_matrix, rank: int, cfg: GraphFilterConfig) -> np.ndarray:
    """The top ``rank`` right singular vectors of a sparse matrix, ``(rank, n)``, by randomized SVD.

    Subspace iteration (Halko, Martinsson and Tropp 2011, algorithm 4.4) on torch's sparse CSR products,
    re-orthonormalised after every product by a Cholesky QR (float64 Gram matrix; Householder QR if the
    Gram matrix is not positive definite), then the small SVD through the eigenvectors of ``B B^T``.
    """
    rows, cols = matrix.shape
    width = min(rank + cfg.oversampling, rows, cols)
    a = _torch_csr(matrix)
    a_t = _torch_csr(matrix.T.tocsr())
    g = torch.Generator().manual_seed(cfg.seed)
    z = torch.randn(cols, width, generator=g)
    for _ in range(cfg.power_iterations):
        # One orthonormalisation per A^T A step is enough here: the singular values of a degree-normalised
        # interaction matrix lie in [0, 1], so a step stretches the kept directions by at most (1/s_k)^2.
        z = _orthonormal(a_t @ (a @ z))
    q = _orthonormal(a @ z)  # (rows, width), spans the top left singular space
    b = (a_t @ q).t().double().numpy()  # (width, cols) = q^T A
    # numpy's LAPACK: torch.linalg.eigh took seconds on a 200 x 200 matrix on the AMD test machine.
    eigenvalues, vectors = np.linalg.eigh(b @ b.T)
    top = np.argsort(eigenvalues)[::-1][:rank]
    sigma = np.sqrt(np.maximum(eigenvalues[top], 1e-30))
    return ((vectors[:, top].T @ b) / sigma[:, None]).astype(np.float32)


def _orthonormal(y: Tensor) -> Tensor:
    """Orthonormal basis of the columns of ``y``: Cholesky QR (Householder QR if ``y`` is rank-deficient)."""
    chol, info = torch.linalg.cholesky_ex((y.t() @ y).double())
    if int(info) != 0:
        return torch.linalg.qr(y).Q
    return torch.linalg.solve_triangular(chol.float().t(), y, upper=True, left=False)  # y = q L^T


def _torch_csr(matrix: sp.csr_matrix) -> Tensor:
    with warnings.catch_warnings():  # sparse CSR is marked beta; the product used here is stable
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(matrix.indptr.astype(np.int64)),
            torch.from_numpy(matrix.indices.astype(np.int64)),
            torch.from_numpy(matrix.data.astype(np.float32)),
            size=matrix.shape,
        )
