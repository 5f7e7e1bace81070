"""Full-ranking offline evaluation: every item is scored for every evaluated user, seen items are masked.

The engine under training's model selection (on valid) and ``recsys evaluate``
(:mod:`recsys.evaluation.evaluate`). The metrics are defined in :mod:`recsys.evaluation.metrics`, the segment
and bias measures in :mod:`recsys.evaluation.segments`. The evaluator works on any
:class:`~recsys.inference.scoring.Scorer`; :class:`~recsys.inference.scoring.EmbeddingScorer` is the model
(dot products of user and item embeddings), and the baselines of :mod:`recsys.evaluation.baselines` and
:mod:`recsys.evaluation.filters` are scorers or list generators too.

How one chunk of ``B`` users is evaluated (no Python loop over users, the full score matrix never exists):

1. score: the scorer writes ``(B, num_items)`` scores into one preallocated buffer (for embeddings, one
   BLAS product ``user_chunk @ item_emb.T`` with ``out=buffer``; see :mod:`recsys.inference.scoring`);
2. mask: the excluded (user, item) pairs of the chunk are a contiguous slice of sorted flat keys
   ``row * num_items + item`` (a CSR over the evaluated users), set to ``-inf`` with one ``index_fill_``;
3. top-k: ``torch.topk`` after an exact block-max prefilter on CPU (:func:`~recsys.inference.topk.topk_rows`),
   best first; steps 1 to 3 are :func:`recsys.inference.topk.topk_chunks`, whose mask-and-top-k serving uses
   too;
4. metrics: hits by ``searchsorted`` of the top-k keys in the chunk's sorted ground-truth keys
   (:class:`ListMeasure`, which takes top-k lists from any source).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from recsys.evaluation.metrics import DEFAULT_KS, RankingAccumulator, check_ks, sorted_relevance
from recsys.evaluation.segments import USER_SEGMENTS, SegmentAccumulator, Segments
from recsys.inference.scoring import EmbeddingScorer, Scorer
from recsys.inference.topk import ChunkedPairs, PhaseClock, check_pairs, topk_chunks


@dataclass(frozen=True)
class RankingResult:
    """The metrics of one scorer on one set of users.

    Args:
        metrics: ``{"recall@20": ..., ...}``, see :mod:`recsys.evaluation.metrics`.
        num_users: Users evaluated (with at least one ground-truth item).
        num_skipped: Users without ground truth, not evaluated.
        seconds: Wall time of the evaluation.
        segments: Metrics by user and item segment and the bias measures (see
            :mod:`recsys.evaluation.segments`), when segments were given.
        exposure: ``(len(ks), num_items)`` lists each item appears in at each K (expected values for a
            closed-form baseline), when segments were given.
    """

    metrics: dict[str, float]
    num_users: int
    num_skipped: int
    seconds: float
    segments: dict[str, Any] | None = None
    exposure: Tensor | None = None


class GroundTruth:
    """Relevant pairs prepared once for chunked evaluation: the evaluated users and their sorted keys.

    Args:
        pairs: Relevant pairs, shape ``(2, E)``, ``[user_idx; item_idx]``, int64; duplicates count once.
        num_users: Number of users; users without ground truth are not evaluated (and counted as skipped).
        num_items: Number of items.
        device: Where the keys live.

    Raises:
        ValueError: malformed pairs or indices out of range.
    """

    def __init__(self, pairs: Tensor, num_users: int, num_items: int, device: torch.device | str) -> None:
        pairs = pairs.to(device)
        check_pairs("ground_truth", pairs, num_users, num_items)
        self.num_users, self.num_items = num_users, num_items
        self.users = torch.unique(pairs[0])  # sorted: the evaluated users
        self.keys = ChunkedPairs(pairs, self.users, num_users, num_items)
        self.num_relevant = self.keys.indptr.diff()

    def __len__(self) -> int:
        return int(self.users.numel())

    def chunk(self, start: int, end: int) -> Tensor:
        """Sorted keys ``row * num_items + item`` of users ``start..end-1`` (rows relative to ``start``)."""
        return self.keys.chunk(start, end)


class ListMeasure:
    """Metrics of top-K lists of :class:`GroundTruth`'s users, fed chunk by chunk (from any list source).

    Args:
        truth: The prepared ground truth.
        ks: Cut-offs.
        item_popularity: Popularity per item, ``(num_items,)``, for ``popularity@K``.
        segments: If given, per-segment metrics, bias measures and item exposure are kept too.
    """

    def __init__(
        self,
        truth: GroundTruth,
        ks: Sequence[int] = DEFAULT_KS,
        *,
        item_popularity: Tensor | None = None,
        segments: Segments | None = None,
    ) -> None:
        self.truth = truth
        device = truth.users.device
        groups = len(USER_SEGMENTS) if segments is not None else 0
        self.acc = RankingAccumulator(ks, truth.num_items, item_popularity, device=device, num_groups=groups)
        self.segments = None
        self.user_segment: Tensor | None = None
        if segments is not None:
            self.segments = SegmentAccumulator(segments, self.acc.ks, device=device)
            self.user_segment = segments.user_segment.to(device)
        self.start = time.perf_counter()

    @property
    def max_k(self) -> int:
        """Length of the lists :meth:`update` needs."""
        return self.acc.max_k

    def update(self, start: int, end: int, index: Tensor) -> None:
        """Add the lists of users ``start..end-1`` of the ground truth, shape ``(end - start, >= max_k)``."""
        keys = self.truth.chunk(start, end)
        rel = sorted_relevance(index, keys, self.truth.num_items)
        num_relevant = self.truth.num_relevant[start:end]
        groups = None
        if self.user_segment is not None:
            groups = self.user_segment[self.truth.users[start:end]]
        self.acc.update(index, rel, num_relevant, groups)
        if self.segments is not None:
            n = self.truth.num_items
            self.segments.update(index, rel, torch.stack([keys // n, keys % n]))

    def result(self) -> RankingResult:
        """The metrics so far, with the user counts and the seconds since construction."""
        metrics = self.acc.compute()
        segments = exposure = None
        if self.segments is not None:
            segments = self.segments.compute(self.acc.compute_groups())
            metrics.update(segments.pop("bias"))
            exposure = self.segments.exposure[:, :-1].cpu()
        evaluated = len(self.truth)
        return RankingResult(
            metrics=metrics,
            num_users=evaluated,
            num_skipped=self.truth.num_users - evaluated,
            seconds=time.perf_counter() - self.start,
            segments=segments,
            exposure=exposure,
        )


def full_ranking(
    scorer: Scorer,
    ground_truth: Tensor | GroundTruth,
    *,
    num_users: int,
    num_items: int,
    exclude: Tensor | ChunkedPairs | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    item_popularity: Tensor | None = None,
    segments: Segments | None = None,
    batch_size: int | None = None,
    timings: dict[str, float] | None = None,
) -> RankingResult:
    """Score all items for every user with ground truth, mask ``exclude``, take the top K and measure.

    Users are processed in chunks of ``batch_size`` (:func:`recsys.inference.topk.topk_chunks`); peak memory
    is one ``(batch_size, num_items)`` score buffer plus the index tensors. Ground-truth items that are also
    excluded still count in :math:`|R_u|` but can never be hit (the splits of a dataset directory are
    disjoint, so this does not happen there).

    Args:
        scorer: Writes ``(B, num_items)`` scores; the evaluation runs on ``scorer.device``.
        ground_truth: Relevant pairs, shape ``(2, E)``, ``[user_idx; item_idx]``, int64; duplicates are
            counted once. Or the pairs already prepared (:class:`GroundTruth` on the scorer's device), when
            several scorers are ranked for the same users.
        num_users: Number of users; users without ground truth are skipped and counted.
        num_items: Number of items (columns of the score matrix).
        exclude: Pairs never to recommend (e.g. train), shape ``(2, E')``, or the same prepared for the
            ground truth's users (:func:`recsys.inference.topk.excluded_pairs`).
        ks: Cut-offs of the metrics.
        item_popularity: Popularity per item, shape ``(num_items,)``, for ``popularity@K``.
        segments: If given, also the metrics by user and item segment and the bias measures.
        batch_size: Users per chunk; default: :func:`recsys.inference.topk.auto_batch_size`.
        timings: If given, seconds per phase are added to it under ``setup``, ``score``, ``mask``,
            ``topk`` and ``metrics`` (synchronising the device between phases, which costs a little).

    Returns:
        The metrics, with the numbers of evaluated and skipped users.

    Raises:
        ValueError: malformed pairs, indices out of range, or a bad ``ks``/``batch_size``.
    """
    t_start = time.perf_counter()
    device = torch.device(scorer.device)
    if isinstance(ground_truth, GroundTruth):
        truth = ground_truth
    else:
        truth = GroundTruth(ground_truth, num_users, num_items, device)
    measure = ListMeasure(truth, check_ks(ks), item_popularity=item_popularity, segments=segments)
    measure.start = t_start
    if timings is not None:
        timings["setup"] = timings.get("setup", 0.0) + time.perf_counter() - t_start

    chunks = topk_chunks(
        scorer,
        truth.users,
        measure.max_k,
        num_users=num_users,
        num_items=num_items,
        exclude=exclude,
        batch_size=batch_size,
        timings=timings,
    )
    clock = PhaseClock(timings, device)
    for start, end, index in chunks:
        clock.last = time.perf_counter()
        measure.update(start, end, index)
        clock.lap("metrics")
    result = measure.result()
    clock.lap("metrics")
    return result


def topk_items(
    scorer: Scorer,
    users: Tensor,
    k: int,
    *,
    num_users: int,
    num_items: int,
    exclude: Tensor | None = None,
    batch_size: int | None = None,
) -> Tensor:
    """The top-``k`` unmasked items of each user, best first, shape ``(U, k)`` (``-1``: padding).

    All chunks of :func:`recsys.inference.topk.topk_chunks` concatenated; see there for the arguments.
    """
    chunks = topk_chunks(
        scorer, users, k, num_users=num_users, num_items=num_items, exclude=exclude, batch_size=batch_size
    )
    parts = [index for _, _, index in chunks]
    if not parts:
        return torch.empty(0, k, dtype=torch.int64, device=torch.device(scorer.device))
    return torch.cat(parts)


def evaluate_embeddings(
    user_emb: Tensor,
    item_emb: Tensor,
    ground_truth: Tensor,
    *,
    exclude: Tensor | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    item_popularity: Tensor | None = None,
    batch_size: int | None = None,
    timings: dict[str, float] | None = None,
) -> RankingResult:
    """:func:`full_ranking` of the dot-product scores of embeddings, on the embeddings' device.

    Args:
        user_emb: User embeddings, shape ``(num_users, d)``.
        item_emb: Item embeddings, shape ``(num_items, d)``.
        ground_truth: Relevant pairs, shape ``(2, E)``.
        exclude: Pairs never to recommend, shape ``(2, E')``.
        ks: Cut-offs.
        item_popularity: Popularity per item, shape ``(num_items,)``.
        batch_size: Users per chunk.
        timings: Seconds per phase, see :func:`full_ranking`.

    Returns:
        The metrics and user counts.
    """
    return full_ranking(
        EmbeddingScorer(user_emb, item_emb),
        ground_truth,
        num_users=user_emb.size(0),
        num_items=item_emb.size(0),
        exclude=exclude,
        ks=ks,
        item_popularity=item_popularity,
        batch_size=batch_size,
        timings=timings,
    )
