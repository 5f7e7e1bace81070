"""Reference rows of every evaluation: the registry of baselines, most popular and random.

Each is computed at its natural cost, from the training interactions of the protocol only:

* ``popular``: every user gets the items ranked by training popularity (ties: smaller index first), minus
  the user's masked items. All lists are cut from one global order (:func:`popular_lists`), no scoring.
* ``random``: a uniformly random ranking of each user's candidate (unmasked) items. Its metrics are the
  closed-form expectations (:func:`expected_random`), exact and free of sampling noise; full ranking of
  uniform scores (:class:`RandomScorer`) is kept as the reference they are tested against.
* ``gf-cf``, ``chebycf``, ``bspm``: training-free graph filters over the item-item graph (GF-CF, CIKM 2021;
  ChebyCF, SIGIR 2025; BSPM, SIGIR 2023), each tuned on the selection split, in
  :mod:`recsys.evaluation.filters`; ``graph-filter`` is the best of them there. Unlike the rows above they
  cost a fit and a search, so they are asked for by name.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from recsys.evaluation.metrics import RankingAccumulator, check_ks
from recsys.evaluation.ranking import GroundTruth, RankingResult
from recsys.evaluation.segments import ITEM_SEGMENTS, USER_SEGMENTS, Segments, summarise
from recsys.inference.topk import ChunkedPairs, excluded_pairs

BASELINES = {
    "popular": "the most popular training items the user has not seen",
    "random": "a uniformly random ranking (closed-form expected metrics)",
    "graph-filter": "the best on the selection split of the training-free graph filters gf-cf, chebycf, bspm",
    "gf-cf": "training-free graph filter, linear plus ideal low-pass (GF-CF), tuned on the selection split",
    "chebycf": "training-free graph filter, Chebyshev low-pass (ChebyCF), tuned on the selection split",
    "bspm": "training-free graph filter, blurring-sharpening ODEs (BSPM-EM), tuned on the selection split",
}
DEFAULT_BASELINES = ("popular", "random")
"""The rows ``recsys evaluate`` adds by default: nearly free next to the model's own ranking. The graph
filters cost a fit and a search (about a minute on gowalla), so they are asked for by name; ``recsys report``
has ``graph-filter``."""
FILTERS = ("gf-cf", "chebycf", "bspm", "graph-filter")
"""The graph-filter rows (:mod:`recsys.evaluation.filters`), named here so the registry loads no scipy."""


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
    r"""The first ``k`` items of ``order`` each user may get, chunked like ``topk.topk_chunks``.

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
            (:func:`recsys.inference.topk.excluded_pairs`).
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
            (:func:`recsys.inference.topk.excluded_pairs`).
        ks: Cut-offs.
        item_popularity: Popularity per item, for ``popularity@K``.
        segments: If given, the segment metrics too (``gini@K`` is then that of the expected exposure).

    Returns:
        The expected metrics, as a :class:`recsys.evaluation.ranking.RankingResult`.
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
    rel_free = ~masked.contains(truth.keys.keys)  # relevant and not masked: can be recommended
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
