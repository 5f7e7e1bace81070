r"""Top-K ranking metrics on recommended item indices and ground-truth interactions.

Everything here is a pure function of tensors (no config, no dataset): the evaluator in
:mod:`recsys.evaluation.ranking` produces the top-K lists in user chunks and feeds them to a
:class:`RankingAccumulator`; :func:`ranking_metrics` is the one-shot form for a single batch.

Notation, for one evaluated user :math:`u` with relevant (ground-truth) items :math:`R_u`,
:math:`|R_u| \ge 1`, and a recommended list :math:`L_u = (i_1, \dots, i_K)` with relevance
:math:`r_j = [i_j \in R_u]`, :math:`hits_u@K = \sum_{j \le K} r_j`:

* ``recall@K``    :math:`= hits_u@K / |R_u|`
* ``precision@K`` :math:`= hits_u@K / K` (implicit divides by :math:`\min(K, |R_u|)`; we do not)
* ``hit@K``       :math:`= [hits_u@K \ge 1]`, i.e. the share of *users* with a hit (SELFRec's "hit ratio"
  counts hit *interactions* instead; that is our recall micro-averaged, not this)
* ``ndcg@K``      :math:`= DCG / IDCG` with binary gains, :math:`DCG = \sum_{j \le K} r_j / \log_2(j + 1)`
  and :math:`IDCG = \sum_{j \le \min(K, |R_u|)} 1 / \log_2(j + 1)`
* ``mrr@K``       :math:`= 1 / j^*` for the rank :math:`j^*` of the first hit within the top K (0 if none)

Each of these is averaged over the evaluated users (those with :math:`|R_u| \ge 1`). Two list-level metrics
are computed over the same users:

* ``coverage@K``   :math:`= |\bigcup_u \{i_1, \dots, i_K\}| / num\_items`
* ``popularity@K`` :math:`=` mean over all recommended (user, position) slots :math:`j \le K` of the item's
  popularity, which the evaluator sets to the item's number of training interactions (train under the
  honest protocol, train ∪ valid under paper).

A recommended index of ``-1`` is padding (no item: the user had fewer than K candidates). It is never a hit
and is left out of coverage and popularity; precision still divides by K.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

METRIC_NAMES = ("recall", "ndcg", "precision", "hit", "mrr")
"""The per-user metrics, averaged over users (see the module docstring)."""
DEFAULT_KS = (10, 20, 50)


def check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """Validate cut-offs and return them sorted and de-duplicated.

    Raises:
        ValueError: ``ks`` is empty or holds a value that is not a positive integer.
    """
    if len(ks) == 0:
        msg = "'ks' needs at least one cut-off (got an empty sequence)"
        raise ValueError(msg)
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            msg = f"'ks' needs positive integers (got {k!r})"
            raise ValueError(msg)
    return tuple(sorted(set(ks)))


def relevance(topk_index: Tensor, ground_truth: Tensor) -> Tensor:
    """Mark which recommended items are relevant.

    The ground truth may be unsorted and hold duplicates. Flattens ``(row, item)`` pairs into one key and
    looks the recommendations up in the sorted ground-truth keys with :func:`torch.searchsorted`, as PyG's
    ``LinkPredMetricData.pred_rel_mat`` does.

    Args:
        topk_index: Recommended item indices, shape ``(B, K)``, int64; ``-1`` is padding.
        ground_truth: Relevant pairs in COO, shape ``(2, E)``: row ``0..B-1`` of ``topk_index``, item index.

    Returns:
        Boolean tensor of shape ``(B, K)``: ``True`` where ``topk_index[b, j]`` is relevant for row ``b``.
    """
    num_rows, k = topk_index.shape
    if ground_truth.numel() == 0 or topk_index.numel() == 0:
        return torch.zeros((num_rows, k), dtype=torch.bool, device=topk_index.device)
    width = int(max(int(topk_index.max()), int(ground_truth[1].max()))) + 1
    keys = torch.sort(ground_truth[0] * width + ground_truth[1]).values
    return sorted_relevance(topk_index, keys, width)


def sorted_relevance(topk_index: Tensor, sorted_keys: Tensor, width: int) -> Tensor:
    """:func:`relevance` for ground truth already given as sorted flat keys ``row * width + item``.

    Args:
        topk_index: Recommended item indices, shape ``(B, K)``, int64, values in ``[-1, width)``.
        sorted_keys: Ascending keys ``row * width + item`` of the relevant pairs, shape ``(E,)``.
        width: Key stride; greater than every item index.

    Returns:
        Boolean tensor of shape ``(B, K)``.
    """
    num_rows = topk_index.size(0)
    if sorted_keys.numel() == 0:
        return torch.zeros(topk_index.shape, dtype=torch.bool, device=topk_index.device)
    offsets = torch.arange(num_rows, device=topk_index.device).mul_(width).unsqueeze(1)
    flat = topk_index + offsets
    pos = torch.searchsorted(sorted_keys, flat).clamp_(max=sorted_keys.numel() - 1)
    # Padding (-1) would alias the previous row's last item, hence the explicit check.
    return (sorted_keys[pos] == flat) & (topk_index >= 0)


class RankingAccumulator:
    """Accumulates the metrics of the module docstring over chunks of users (PyG ``update``/``compute``).

    Sums are kept in float64 on ``device``, so the result does not depend on the chunk size beyond float64
    rounding, and nothing is copied to the host before :meth:`compute`.

    Args:
        ks: Cut-offs, e.g. ``(10, 20, 50)``.
        num_items: Catalogue size, the denominator of coverage.
        item_popularity: Popularity of every item, shape ``(num_items,)``; without it, ``popularity@K`` is
            not reported.
        device: Where the state lives: the device of the tensors passed to :meth:`update`.
        num_groups: Groups of users (e.g. activity segments) to also average the per-user metrics over.
    """

    def __init__(
        self,
        ks: Sequence[int],
        num_items: int,
        item_popularity: Tensor | None = None,
        *,
        device: torch.device | str | None = None,
        num_groups: int = 0,
    ) -> None:
        self.ks = check_ks(ks)
        if num_items <= 0:
            msg = f"'num_items' needs to be positive (got {num_items})"
            raise ValueError(msg)
        if item_popularity is not None and tuple(item_popularity.shape) != (num_items,):
            msg = f"'item_popularity' needs shape ({num_items},) (got {tuple(item_popularity.shape)})"
            raise ValueError(msg)
        f64 = torch.float64
        self.num_items = num_items
        self.num_users = 0
        self.item_popularity = None
        if item_popularity is not None:  # with a 0 appended for the padding slot
            self.item_popularity = torch.cat(
                [item_popularity.to(device, f64), torch.zeros(1, dtype=f64, device=device)]
            )
        self._sums = torch.zeros(len(METRIC_NAMES), len(self.ks), dtype=f64, device=device)
        # Per-group sums and user counts (e.g. user-activity segments), when groups are passed to update().
        self._group_sums = torch.zeros(num_groups, len(METRIC_NAMES), len(self.ks), dtype=f64, device=device)
        self._group_users = torch.zeros(num_groups, dtype=f64, device=device)
        self._pop_sum = torch.zeros(len(self.ks), dtype=f64, device=device)
        self._slots = torch.zeros(len(self.ks), dtype=f64, device=device)  # non-padding slots up to each K
        # Smallest position at which each item was recommended to anyone (max_k: never); gives coverage@K.
        self._first_rank = torch.full((num_items + 1,), self.max_k, dtype=torch.int64, device=device)
        self._positions = torch.arange(self.max_k, device=device).unsqueeze(0)
        rank = torch.arange(1, self.max_k + 1, dtype=f64, device=device)
        self._discount = 1.0 / torch.log2(rank + 1.0)  # 1 / log2(j + 1) for rank j = 1..max_k
        # _idcg[n] = sum_{j <= n} 1 / log2(j + 1), the ideal DCG of n relevant items; _idcg[0] = 0.
        self._idcg = torch.cat([self._discount.new_zeros(1), self._discount.cumsum(0)])
        self._k_index = torch.tensor(self.ks, device=device) - 1
        self._ks = torch.tensor(self.ks, dtype=f64, device=device)

    @property
    def max_k(self) -> int:
        """The largest cut-off: the length of the lists to pass to :meth:`update`."""
        return self.ks[-1]

    def update(
        self, topk_index: Tensor, rel: Tensor, num_relevant: Tensor, groups: Tensor | None = None
    ) -> None:
        """Add one chunk of users.

        Args:
            topk_index: Recommended items in rank order, shape ``(B, L)`` with ``L >= max_k``; ``-1`` is
                padding. Only the first ``max_k`` columns are used.
            rel: Relevance of each recommendation, boolean, shape ``(B, L)`` (see :func:`relevance`).
            num_relevant: :math:`|R_u|` of each row, shape ``(B,)``. Rows with 0 are skipped entirely.
            groups: Group of each row, ``(B,)`` int64 in ``0..num_groups-1``, for :meth:`compute_groups`.
        """
        if topk_index.dim() != 2 or topk_index.size(1) < self.max_k:
            msg = f"'topk_index' needs shape (B, L) with L >= {self.max_k} (got {tuple(topk_index.shape)})"
            raise ValueError(msg)
        if rel.shape != topk_index.shape or num_relevant.shape != topk_index.shape[:1]:
            msg = (
                f"'rel' needs shape {tuple(topk_index.shape)} and 'num_relevant' shape "
                f"({topk_index.size(0)},) (got {tuple(rel.shape)} and {tuple(num_relevant.shape)})"
            )
            raise ValueError(msg)
        keep = num_relevant > 0
        if not bool(keep.all()):
            topk_index, rel, num_relevant = topk_index[keep], rel[keep], num_relevant[keep]
            groups = groups[keep] if groups is not None else None
        topk_index = topk_index[:, : self.max_k]
        rel = rel[:, : self.max_k]
        if topk_index.size(0) == 0:
            return

        ki = self._k_index
        hits = rel.cumsum(1, dtype=torch.float64)[:, ki]  # (B, len(ks)) hits@K
        dcg = (rel * self._discount).cumsum(1)[:, ki]
        n_rel = num_relevant.to(torch.float64).unsqueeze(1)
        idcg = self._idcg[torch.minimum(num_relevant.unsqueeze(1), ki + 1)]
        # Rank (0-based) of the first hit, max_k when there is none; argmax returns the first maximum.
        first = torch.where(rel.any(1), rel.to(torch.uint8).argmax(1), self.max_k).unsqueeze(1)
        mrr = torch.where(first <= ki, 1.0 / (first.to(torch.float64) + 1.0), 0.0)
        per_user = torch.stack([hits / n_rel, dcg / idcg, hits / self._ks, (hits > 0).double(), mrr])
        self.add_users(per_user, groups)

        # Padding (-1) is sent to an extra slot at index num_items, which compute() ignores; this avoids a
        # boolean-mask gather (a nonzero() per chunk).
        valid = topk_index >= 0
        safe = torch.where(valid, topk_index, self.num_items)
        self._slots += valid.cumsum(1, dtype=torch.float64)[:, ki].sum(0)
        positions = self._positions.expand_as(safe)
        self._first_rank.scatter_reduce_(0, safe.flatten(), positions.flatten(), reduce="amin")
        if self.item_popularity is not None:
            self._pop_sum += self.item_popularity[safe].cumsum(1)[:, ki].sum(0)

    def add_users(self, per_user: Tensor, groups: Tensor | None = None) -> None:
        """Add per-user metric values, shape ``(len(METRIC_NAMES), B, len(ks))``, and their groups ``(B,)``.

        :meth:`update` calls this with the values of its lists; a baseline whose metrics have a closed form
        (the expected values of a random ranking) passes them directly. Lists, and so coverage and
        popularity, are only counted by :meth:`update`.
        """
        self.num_users += per_user.size(1)
        self._sums += per_user.sum(1)
        if groups is not None:
            self._group_sums.index_add_(0, groups, per_user.transpose(0, 1))
            self._group_users.index_add_(0, groups, torch.ones_like(groups, dtype=torch.float64))

    def compute(self) -> dict[str, float]:
        """The metrics as ``{"recall@20": ..., "coverage@20": ...}``; all 0 when no user was added.

        Returns:
            One float per metric name and cut-off, ordered by metric then cut-off.
        """
        # One transfer per state tensor (each .item() would be a device sync).
        sums = self._sums.cpu().tolist()
        first_rank = self._first_rank[: self.num_items]
        covered = (first_rank.unsqueeze(0) <= self._k_index.unsqueeze(1)).sum(1).cpu().tolist()
        slots, pop = self._slots.cpu().tolist(), self._pop_sum.cpu().tolist()
        n = max(self.num_users, 1)
        out: dict[str, float] = {}
        for m, name in enumerate(METRIC_NAMES):
            for j, k in enumerate(self.ks):
                out[f"{name}@{k}"] = sums[m][j] / n
        for j, k in enumerate(self.ks):
            out[f"coverage@{k}"] = covered[j] / self.num_items
        if self.item_popularity is not None:
            for j, k in enumerate(self.ks):
                out[f"popularity@{k}"] = pop[j] / slots[j] if slots[j] > 0 else 0.0
        return out

    def compute_groups(self) -> list[dict[str, float]]:
        """Per group (see :meth:`update`): ``{"users": n, "recall@20": ..., ...}``, per-user metrics only."""
        sums, users = self._group_sums.cpu().tolist(), self._group_users.cpu().tolist()
        out = []
        for g, n in enumerate(users):
            row: dict[str, float] = {"users": int(n)}
            for m, name in enumerate(METRIC_NAMES):
                for j, k in enumerate(self.ks):
                    row[f"{name}@{k}"] = sums[g][m][j] / n if n else 0.0
            out.append(row)
        return out


def ranking_metrics(
    topk_index: Tensor,
    ground_truth: Tensor,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    num_items: int | None = None,
    item_popularity: Tensor | None = None,
) -> dict[str, float]:
    """All metrics of the module docstring for one batch of ranked lists.

    Rows without ground truth are skipped (not counted in any average, coverage included).

    Args:
        topk_index: Recommended item indices in rank order, shape ``(B, L)`` with ``L >= max(ks)``, int64;
            ``-1`` is padding.
        ground_truth: Relevant pairs in COO, shape ``(2, E)``: row of ``topk_index``, item index.
        ks: Cut-offs.
        num_items: Catalogue size for coverage; default: largest item index seen + 1.
        item_popularity: Popularity per item, shape ``(num_items,)``, for ``popularity@K``.

    Returns:
        ``{"recall@10": ..., "ndcg@10": ..., ...}``, see :meth:`RankingAccumulator.compute`.
    """
    if ground_truth.dim() != 2 or ground_truth.size(0) != 2:
        msg = f"'ground_truth' needs shape (2, E) (got {tuple(ground_truth.shape)})"
        raise ValueError(msg)
    if num_items is None:
        top = int(topk_index.max()) if topk_index.numel() else -1
        num_items = max(top, int(ground_truth[1].max()) if ground_truth.numel() else -1, 0) + 1
    if ground_truth.numel() and (
        int(ground_truth[0].min()) < 0 or int(ground_truth[0].max()) >= len(topk_index)
    ):
        msg = f"'ground_truth' rows need to index rows of 'topk_index' (0..{len(topk_index) - 1})"
        raise ValueError(msg)
    gt = torch.unique(ground_truth, dim=1)  # duplicates would inflate |R_u|
    num_relevant = torch.bincount(gt[0], minlength=topk_index.size(0))
    acc = RankingAccumulator(ks, num_items, item_popularity, device=topk_index.device)
    acc.update(topk_index, relevance(topk_index, gt), num_relevant)
    return acc.compute()
