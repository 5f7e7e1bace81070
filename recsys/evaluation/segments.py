r"""Where a recommender wins or loses: metrics by item popularity and user activity, and popularity bias.

Segments are defined from the training interactions of the protocol (the data the scorers learn from):

* **items** by popularity (training interactions per item), in interaction *mass*: items are sorted from the
  most to the least popular; ``head`` items hold the first ``head_share`` (20 %) of all training
  interactions, ``tail`` items the last ``tail_share`` (20 %), ``mid`` the rest. The cuts are stated as
  popularity counts (``head``: popularity >= ``head_min``, ``tail``: popularity <= ``tail_max``), so tied
  items always share a segment. On gowalla the head is a few hundred items and the tail about half the
  catalogue.
* **users** by activity (training interactions per user), in users: ``cold`` users are those at or below
  the ``cold_share`` (20 %) quantile of activity, ``heavy`` those at or above the ``1 - heavy_share``
  quantile, ``regular`` the rest (stated as counts ``cold_max`` and ``heavy_min``).

Per segment (``recall@K`` etc. over the users of a user segment; for an item segment, recall restricted to the
segment's items over users with at least one relevant item in it, as in Abdollahpouri et al.'s long-tail
evaluations), and three popularity-bias measures of the recommended lists at each K:

* ``popularity@K``: mean training popularity of the recommended items (see :mod:`recsys.evaluation.metrics`);
* ``gini@K``: Gini coefficient of item *exposure* (how many lists each catalogue item appears in, zeros
  included): 0 when every item is shown equally often, near 1 when a few items take every slot;
* ``tail_share@K``: share of the recommended slots that hold ``tail`` items.

Everything is computed from chunks of top-K lists (:class:`SegmentAccumulator`) or, for a closed-form
baseline, from per-user values and an expected exposure vector (:func:`summarise`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from recsys.evaluation.metrics import check_ks

ITEM_SEGMENTS = ("head", "mid", "tail")
USER_SEGMENTS = ("cold", "regular", "heavy")
_TAIL = ITEM_SEGMENTS.index("tail")


@dataclass(frozen=True)
class Segments:
    """Segment of every item and user, and the thresholds that define them.

    Args:
        item_segment: ``(num_items,)`` int64, index into :data:`ITEM_SEGMENTS`.
        user_segment: ``(num_users,)`` int64, index into :data:`USER_SEGMENTS`.
        item_popularity: ``(num_items,)`` training interactions per item.
        user_activity: ``(num_users,)`` training interactions per user.
        thresholds: The stated cuts and shares (see :meth:`describe`).
    """

    item_segment: Tensor
    user_segment: Tensor
    item_popularity: Tensor
    user_activity: Tensor
    thresholds: dict[str, float]

    @property
    def num_items(self) -> int:
        """Catalogue size."""
        return int(self.item_segment.numel())

    def describe(self) -> dict[str, Any]:
        """JSON-ready definition: thresholds, and the items/users and interaction shares in each segment."""
        pop = self.item_popularity.double()
        total = max(float(pop.sum()), 1.0)
        items = {
            name: {
                "items": int((self.item_segment == s).sum()),
                "interaction_share": float(pop[self.item_segment == s].sum()) / total,
            }
            for s, name in enumerate(ITEM_SEGMENTS)
        }
        users = {name: {"users": int((self.user_segment == s).sum())} for s, name in enumerate(USER_SEGMENTS)}
        return {"thresholds": dict(self.thresholds), "items": items, "users": users}


def threshold_label(thresholds: dict[str, float]) -> str:
    """One line stating the segment cuts (``Segments.thresholds``), for tables and pages."""
    t = thresholds
    return (
        f"segments: head items have >= {t['head_min']:.0f} training interactions (top {t['head_share']:.0%} "
        f"of interactions), tail items <= {t['tail_max']:.0f} (bottom {t['tail_share']:.0%}); cold users "
        f"have <= {t['cold_max']:.0f} (bottom {t['cold_share']:.0%} of users), heavy users >= "
        f"{t['heavy_min']:.0f} (top {t['heavy_share']:.0%})"
    )


def define_segments(
    train: Tensor,
    num_users: int,
    num_items: int,
    *,
    head_share: float = 0.2,
    tail_share: float = 0.2,
    cold_share: float = 0.2,
    heavy_share: float = 0.2,
) -> Segments:
    """Cut items by popularity mass and users by activity quantiles (see the module docstring).

    Args:
        train: Training pairs ``(2, E)``, ``[user_idx; item_idx]``.
        num_users: Number of users.
        num_items: Number of items.
        head_share: Share of training interactions held by the head items.
        tail_share: Share held by the tail items.
        cold_share: Share of users that are cold (at or below this activity quantile).
        heavy_share: Share of users that are heavy (at or above the ``1 - heavy_share`` quantile).

    Raises:
        ValueError: shares outside (0, 1) or summing to 1 or more on one side.
    """
    for name, share in (
        ("head", head_share),
        ("tail", tail_share),
        ("cold", cold_share),
        ("heavy", heavy_share),
    ):
        if not 0.0 < share < 1.0:
            msg = f"'{name}_share' needs to be in (0, 1) (got {share})"
            raise ValueError(msg)
    if head_share + tail_share >= 1.0 or cold_share + heavy_share >= 1.0:
        msg = "head + tail shares and cold + heavy shares need to leave room for a middle segment"
        raise ValueError(msg)
    train = train.cpu()
    popularity = torch.bincount(train[1], minlength=num_items)
    activity = torch.bincount(train[0], minlength=num_users)

    ranked = torch.sort(popularity, descending=True, stable=True).values.double()
    before = (ranked.cumsum(0) - ranked) / max(float(ranked.sum()), 1.0)  # mass of the more popular items
    head_min = float(ranked[int((before < head_share).sum()) - 1]) if num_items else 0.0
    tail_at = int((before < 1.0 - tail_share).sum())
    tail_max = float(ranked[min(tail_at, num_items - 1)]) if num_items else 0.0
    item_segment = torch.ones(num_items, dtype=torch.int64)
    item_segment[popularity <= tail_max] = _TAIL
    item_segment[popularity >= head_min] = 0  # the head wins a tie with the tail (tiny catalogues)

    known = activity.double()
    cold_max = float(torch.quantile(known, cold_share, interpolation="lower")) if num_users else 0.0
    heavy_min = float(torch.quantile(known, 1.0 - heavy_share, interpolation="higher")) if num_users else 0.0
    user_segment = torch.ones(num_users, dtype=torch.int64)
    user_segment[activity >= heavy_min] = 2
    user_segment[activity <= cold_max] = 0  # cold wins when every user has the same activity
    thresholds = {
        "head_share": head_share,
        "tail_share": tail_share,
        "head_min": head_min,
        "tail_max": tail_max,
        "cold_share": cold_share,
        "heavy_share": heavy_share,
        "cold_max": cold_max,
        "heavy_min": heavy_min,
    }
    return Segments(item_segment, user_segment, popularity, activity, thresholds)


def gini(values: Tensor) -> float:
    r"""Gini coefficient of non-negative values: :math:`\sum_i (2i - n - 1) x_{(i)} / (n \sum_i x_i)`.

    :math:`x_{(i)}` are the values in ascending order, :math:`i = 1..n`; 0 for equal values (or all zeros).
    """
    x = torch.sort(values.double().flatten()).values
    n = x.numel()
    total = float(x.sum())
    if n == 0 or total <= 0.0:
        return 0.0
    rank = torch.arange(1, n + 1, dtype=torch.float64, device=x.device)
    return float(((2 * rank - n - 1) * x).sum()) / (n * total)


class SegmentAccumulator:
    """Recall by item segment and item exposure of top-K lists, fed chunk by chunk beside the main metrics.

    The per-user metrics by user segment come from :class:`recsys.evaluation.metrics.RankingAccumulator` (its
    groups).

    Args:
        segments: The segment definition.
        ks: Cut-offs.
        device: Where the state lives.
    """

    def __init__(
        self, segments: Segments, ks: Sequence[int], *, device: torch.device | str | None = None
    ) -> None:
        self.ks = check_ks(ks)
        self.max_k = self.ks[-1]
        self.num_items = segments.num_items
        f64 = torch.float64
        # One extra entry for the padding slot (-1 -> num_items), never counted.
        self.item_segment = torch.cat([segments.item_segment, torch.full((1,), -1)]).to(device)
        n_k = len(self.ks)
        self.recall_sums = torch.zeros(len(ITEM_SEGMENTS), n_k, dtype=f64, device=device)
        self.users = torch.zeros(len(ITEM_SEGMENTS), dtype=f64, device=device)
        self._k_index = torch.tensor(self.ks, device=device) - 1
        # Slots per item and cut-off band (band j: positions ks[j-1] .. ks[j] - 1), counted with one bincount
        # of the (B, max_k) lists per chunk; the exposure at K sums the bands up to K (:attr:`exposure`).
        positions = torch.arange(self.max_k, device=device)
        self._band_offset = torch.searchsorted(self._k_index, positions) * (self.num_items + 1)
        self._band_slots = torch.zeros(n_k * (self.num_items + 1), dtype=torch.int64, device=device)

    def update(self, topk_index: Tensor, rel: Tensor, relevant: Tensor) -> None:
        """Add one chunk of users.

        Args:
            topk_index: Recommended items, ``(B, L)``, ``L >= max_k``, ``-1`` padding.
            rel: Relevance of each recommendation, ``(B, L)`` bool.
            relevant: The rows' relevant items as ``(2, E)`` ``[row; item]`` pairs (to count
                :math:`|R_u|` per item segment).
        """
        topk_index, rel = topk_index[:, : self.max_k], rel[:, : self.max_k]
        num_rows, num_seg = topk_index.size(0), len(ITEM_SEGMENTS)
        safe = torch.where(topk_index >= 0, topk_index, self.num_items)
        slot_segment = self.item_segment[safe]
        row_segment = relevant[0] * num_seg + self.item_segment[relevant[1]]
        per_segment = torch.bincount(row_segment, minlength=num_rows * num_seg).view(num_rows, num_seg)
        for s in range(num_seg):
            has = per_segment[:, s] > 0
            hits = (rel & (slot_segment == s))[has].cumsum(1, dtype=torch.float64)[:, self._k_index]
            self.recall_sums[s] += (hits / per_segment[has, s].unsqueeze(1)).sum(0)
            self.users[s] += has.sum()
        self._band_slots += torch.bincount(
            (safe + self._band_offset).view(-1), minlength=self._band_slots.numel()
        )

    @property
    def exposure(self) -> Tensor:
        """``(ks, num_items + 1)`` float64: lists each item appears in within the top K (last: padding)."""
        return self._band_slots.view(len(self.ks), -1).cumsum(0).to(torch.float64)

    def compute(self, user_groups: list[dict[str, float]]) -> dict[str, Any]:
        """The report's segment entry (see :func:`summarise`), with the user-segment rows given."""
        return summarise(
            self.ks,
            user_groups,
            self.recall_sums,
            self.users,
            self.exposure[:, : self.num_items],
            self.item_segment[: self.num_items],
        )


def summarise(
    ks: Sequence[int],
    user_groups: list[dict[str, float]],
    item_recall_sums: Tensor,
    item_users: Tensor,
    exposure: Tensor,
    item_segment: Tensor,
) -> dict[str, Any]:
    """Assemble the report's ``segments`` entry from per-segment sums and an exposure matrix.

    Args:
        ks: Cut-offs.
        user_groups: Per user segment, ``{"users": n, "recall@K": ...}`` (from
            :meth:`recsys.evaluation.metrics.RankingAccumulator.compute_groups`).
        item_recall_sums: ``(item segments, ks)`` sums of per-user recall restricted to the segment.
        item_users: ``(item segments,)`` users with a relevant item in each segment.
        exposure: ``(ks, num_items)`` lists each item appears in (expected values are fine).
        item_segment: ``(num_items,)`` item segments.

    Returns:
        ``{"users": {segment: {...}}, "items": {segment: {"users": n, "recall@K": ...,
        "exposure_share@K": ...}}, "bias": {"gini@K": ..., "tail_share@K": ...}}``.
    """
    exposure = exposure.double().cpu()
    slots = exposure.sum(1).clamp(min=1e-300)
    seg = item_segment.cpu()
    recall, n_users = item_recall_sums.cpu().tolist(), item_users.cpu().tolist()
    items: dict[str, Any] = {}
    for s, name in enumerate(ITEM_SEGMENTS):
        share = (exposure[:, seg == s].sum(1) / slots).tolist()
        row: dict[str, float] = {"users": int(n_users[s])}
        for j, k in enumerate(ks):
            row[f"recall@{k}"] = recall[s][j] / n_users[s] if n_users[s] else 0.0
            row[f"exposure_share@{k}"] = share[j]
        items[name] = row
    bias: dict[str, float] = {}
    for j, k in enumerate(ks):
        bias[f"gini@{k}"] = gini(exposure[j])
        bias[f"tail_share@{k}"] = items["tail"][f"exposure_share@{k}"]
    return {"users": dict(zip(USER_SEGMENTS, user_groups, strict=True)), "items": items, "bias": bias}
