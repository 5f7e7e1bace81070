"""Full-ranking offline evaluation: every item is scored for every evaluated user, seen items are masked.

The engine under training's model selection (on valid) and ``recsys evaluate`` (:mod:`recsys.evaluate`). The
metrics are defined in :mod:`recsys.metrics`, the segment and bias measures in :mod:`recsys.segments`. The
evaluator works on any :class:`Scorer`; :class:`EmbeddingScorer` is the model (dot products of user and item
embeddings), and the baselines of :mod:`recsys.baselines` are scorers or list generators too.

How one chunk of ``B`` users is evaluated (no Python loop over users, the full score matrix never exists):

1. score: the scorer writes ``(B, num_items)`` scores into one preallocated buffer (for embeddings, one
   BLAS product ``user_chunk @ item_emb.T`` with ``out=buffer``; see :class:`EmbeddingScorer`);
2. mask: the excluded (user, item) pairs of the chunk are a contiguous slice of sorted flat keys
   ``row * num_items + item`` (a CSR over the evaluated users), set to ``-inf`` with one ``index_fill_``;
3. top-k: ``torch.topk`` after an exact block-max prefilter on CPU (:func:`topk_rows`), best first;
4. metrics: hits by ``searchsorted`` of the top-k keys in the chunk's sorted ground-truth keys
   (:class:`ListMeasure`, which takes top-k lists from any source).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from typing import Protocol as TypingProtocol

import numpy as np
import torch
from torch import Tensor

from recsys.metrics import DEFAULT_KS, RankingAccumulator, check_ks, sorted_relevance
from recsys.segments import USER_SEGMENTS, SegmentAccumulator, Segments

DEFAULT_MEMORY_BUDGET = 256 * 2**20
"""Bytes of the score buffer when no batch size is given."""
MAX_AUTO_BATCH_SIZE = 4096

# --------------------------------------------------------------------------------------------- scorers


class Scorer(TypingProtocol):
    """Anything that scores all items for a batch of users (higher is better).

    Attributes:
        device: Where the scores are computed; the evaluator allocates its buffers there.
        dtype: Floating dtype of the scores.
    """

    device: torch.device
    dtype: torch.dtype

    def __call__(self, users: Tensor, out: Tensor) -> None:
        """Write the scores of ``users`` (shape ``(B,)``, int64) into ``out`` (shape ``(B, num_items)``)."""


class EmbeddingScorer:
    r"""Dot-product scores :math:`s_{ui} = e_u^\top e_i` of a model's final embeddings.

    The product is written straight into the evaluator's buffer (``out=``), never allocated per chunk.
    On CPU the ``auto`` backend runs it through numpy's BLAS (OpenBLAS in the numpy wheels) on views of the
    same memory: for this thin ``(B, d) x (d, num_items)`` product it ran at about twice the speed of
    ``torch.mm`` (MKL) on the 2-core AMD EPYC machine of ``benchmarks/evaluate.py`` (68 against 37 GFLOP/s).
    OpenBLAS keeps its own thread pool (``OPENBLAS_NUM_THREADS``, not ``torch.set_num_threads``), whose idle
    threads spin for a while after each product and slow the top-k that follows; entry points set
    ``OPENBLAS_THREAD_TIMEOUT=4`` before numpy is imported to stop that (``recsys evaluate`` does). On other
    devices, and with ``backend="torch"``, it is ``torch.mm(user_chunk, item_emb_t, out=buffer)``.

    Args:
        user_emb: User embeddings, shape ``(num_users, d)``.
        item_emb: Item embeddings, shape ``(num_items, d)``, same device and dtype.
        backend: ``auto``, ``torch`` or ``numpy`` (CPU, float32/float64 only).
        layout: How the item matrix is kept: ``nt`` (``(num_items, d)`` row-major, used transposed) or
            ``nn`` (a contiguous ``(d, num_items)`` copy); ``auto``: ``nt`` for numpy, ``nn`` for torch.
    """

    def __init__(
        self,
        user_emb: Tensor,
        item_emb: Tensor,
        *,
        backend: Literal["auto", "torch", "numpy"] = "auto",
        layout: Literal["auto", "nn", "nt"] = "auto",
    ) -> None:
        if user_emb.dim() != 2 or item_emb.dim() != 2 or user_emb.size(1) != item_emb.size(1):
            msg = (
                "'user_emb' and 'item_emb' need shapes (num_users, d) and (num_items, d) "
                f"(got {tuple(user_emb.shape)} and {tuple(item_emb.shape)})"
            )
            raise ValueError(msg)
        if user_emb.device != item_emb.device or user_emb.dtype != item_emb.dtype:
            msg = (
                f"'user_emb' and 'item_emb' need the same device and dtype (got {user_emb.device}/"
                f"{user_emb.dtype} and {item_emb.device}/{item_emb.dtype})"
            )
            raise ValueError(msg)
        if not user_emb.is_floating_point():
            msg = f"embeddings need a floating dtype (got {user_emb.dtype})"
            raise ValueError(msg)
        numpy_ok = user_emb.device.type == "cpu" and user_emb.dtype in (torch.float32, torch.float64)
        if backend not in ("auto", "torch", "numpy") or layout not in ("auto", "nn", "nt"):
            msg = f"unknown backend {backend!r} or layout {layout!r}"
            raise ValueError(msg)
        if backend == "numpy" and not numpy_ok:
            msg = (
                f"backend 'numpy' needs CPU float32/float64 tensors (got {user_emb.device}/{user_emb.dtype})"
            )
            raise ValueError(msg)
        self.backend = "numpy" if backend == "numpy" or (backend == "auto" and numpy_ok) else "torch"
        self.layout = layout if layout != "auto" else ("nt" if self.backend == "numpy" else "nn")
        self.user_emb = user_emb.detach().contiguous()
        item = item_emb.detach()
        # (d, num_items) right-hand side: a transposed view of a row-major item matrix, or a contiguous copy.
        self.item_emb_t = item.contiguous().t() if self.layout == "nt" else item.t().contiguous()
        self.device = user_emb.device
        self.dtype = user_emb.dtype
        if self.backend == "numpy":
            self._user_np = self.user_emb.numpy()
            self._item_t_np = self.item_emb_t.numpy()

    @property
    def num_items(self) -> int:
        """Number of items scored."""
        return int(self.item_emb_t.size(1))

    def __call__(self, users: Tensor, out: Tensor) -> None:
        """Write ``user_emb[users] @ item_emb.T`` into ``out`` (shape ``(B, num_items)``)."""
        if self.backend == "numpy" and out.is_contiguous():
            np.matmul(self._user_np[users.numpy()], self._item_t_np, out=out.numpy())
        else:
            torch.mm(self.user_emb[users], self.item_emb_t, out=out)


class FunctionScorer:
    """Adapt a plain function ``users (B,) -> scores (B, num_items)`` to :class:`Scorer`.

    Args:
        fn: The scoring function.
        device: Device of the scores it returns.
        dtype: Dtype of the scores.
    """

    def __init__(
        self,
        fn: Callable[[Tensor], Tensor],
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.fn = fn
        self.device = torch.device(device)
        self.dtype = dtype

    def __call__(self, users: Tensor, out: Tensor) -> None:
        """Copy ``fn(users)`` into ``out``."""
        out.copy_(self.fn(users))


# ------------------------------------------------------------------------------------------ evaluator


@dataclass(frozen=True)
class RankingResult:
    """The metrics of one scorer on one set of users.

    Args:
        metrics: ``{"recall@20": ..., ...}``, see :mod:`recsys.metrics`.
        num_users: Users evaluated (with at least one ground-truth item).
        num_skipped: Users without ground truth, not evaluated.
        seconds: Wall time of the evaluation.
        segments: Metrics by user and item segment and the bias measures (see :mod:`recsys.segments`),
            when segments were given.
        exposure: ``(len(ks), num_items)`` lists each item appears in at each K (expected values for a
            closed-form baseline), when segments were given.
    """

    metrics: dict[str, float]
    num_users: int
    num_skipped: int
    seconds: float
    segments: dict[str, Any] | None = None
    exposure: Tensor | None = None


class ChunkedPairs:
    """(user, item) pairs restricted to a list of users, as sorted flat keys ``pos * num_items + item``.

    ``pos`` is the user's position in ``users``, so the pairs of a chunk ``[start, end)`` of that list are
    the contiguous slice ``keys[indptr[start]:indptr[end]]`` (a CSR in key form). Duplicate pairs are
    dropped. Building it sorts all the pairs, so an evaluation that ranks several rows for the same users
    builds the masked pairs once and passes them to each (see :func:`excluded_pairs`).

    Args:
        pairs: ``(2, E)`` int64 ``[user_idx; item_idx]``; pairs of users not in ``users`` are ignored.
        users: The users, ``(U,)``, distinct, on the pairs' device.
        num_users: Number of users (bound of the indices).
        num_items: Number of items.
    """

    def __init__(self, pairs: Tensor, users: Tensor, num_users: int, num_items: int) -> None:
        rows = user_positions(users, num_users)[pairs[0]]
        keep = rows >= 0
        self.keys = torch.unique(rows[keep] * num_items + pairs[1][keep])  # sorted
        bounds = torch.arange(users.numel() + 1, device=pairs.device) * num_items
        self.indptr = torch.searchsorted(self.keys, bounds)
        self.users = users
        self.num_items = num_items
        self._ptr = self.indptr.tolist()  # host copy: slicing with ints needs no device sync per chunk

    def chunk(self, start: int, end: int) -> Tensor:
        """Keys of rows ``start..end-1`` relative to row ``start``, shape ``(E_chunk,)``."""
        return self.keys[self._ptr[start] : self._ptr[end]] - start * self.num_items


def excluded_pairs(
    exclude: Tensor | ChunkedPairs | None, users: Tensor, num_users: int, num_items: int
) -> ChunkedPairs:
    """``exclude`` as :class:`ChunkedPairs` of ``users``: checked and built here, or prepared by the caller.

    Raises:
        ValueError: malformed pairs, or pairs prepared for other users or another catalogue.
    """
    if isinstance(exclude, ChunkedPairs):
        same = (
            exclude.num_items == num_items
            and exclude.users.device == users.device
            and (exclude.users is users or torch.equal(exclude.users, users))
        )
        if not same:
            msg = "'exclude' was prepared for other users or another number of items"
            raise ValueError(msg)
        return exclude
    if exclude is None:
        exclude = torch.empty(2, 0, dtype=torch.int64, device=users.device)
    exclude = exclude.to(users.device)
    check_pairs("exclude", exclude, num_users, num_items)
    return ChunkedPairs(exclude, users, num_users, num_items)


def check_pairs(name: str, pairs: Tensor, num_users: int, num_items: int) -> None:
    """Fail with a message naming ``name`` unless ``pairs`` is a ``(2, E)`` int64 tensor of valid indices."""
    if pairs.dim() != 2 or pairs.size(0) != 2:
        msg = f"'{name}' needs shape (2, E) (got {tuple(pairs.shape)})"
        raise ValueError(msg)
    if pairs.dtype != torch.int64:
        msg = f"'{name}' needs dtype int64 (got {pairs.dtype})"
        raise ValueError(msg)
    if pairs.numel() == 0:
        return
    lo, hi = pairs.min(dim=1).values.tolist(), pairs.max(dim=1).values.tolist()
    if lo[0] < 0 or hi[0] >= num_users or lo[1] < 0 or hi[1] >= num_items:
        msg = (
            f"'{name}' has indices outside 0..{num_users - 1} (users) / 0..{num_items - 1} (items): "
            f"users {lo[0]}..{hi[0]}, items {lo[1]}..{hi[1]}"
        )
        raise ValueError(msg)


def auto_batch_size(
    num_items: int, dtype: torch.dtype = torch.float32, memory: int = DEFAULT_MEMORY_BUDGET
) -> int:
    """Users per chunk so that the ``(B, num_items)`` score buffer fits in ``memory`` bytes (at most 4096)."""
    per_row = max(num_items, 1) * torch.empty(0, dtype=dtype).element_size()
    return max(1, min(MAX_AUTO_BATCH_SIZE, memory // per_row))


class _Clock:
    """Adds the seconds since the last lap to ``timings[name]``; does nothing without ``timings``."""

    def __init__(self, timings: dict[str, float] | None, device: torch.device) -> None:
        self.timings = timings
        self.cuda = device.type == "cuda"
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        if self.timings is None:
            return
        if self.cuda:  # kernels are asynchronous: wait for them, or the time lands in a later phase
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - self.last
        self.last = now


TOPK_BLOCK = 32
"""Block width of the block-max prefilter of :func:`topk_rows`."""


def topk_rows(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``torch.topk(scores, k, dim=1, sorted=True)``, with an exact block-max prefilter on CPU.

    ``torch.topk`` on CPU costs a few ns per element (it copies every (value, index) pair of a row and
    partially sorts them); reading the row once for block maxima costs a fraction of that. So each row is
    cut into blocks of :data:`TOPK_BLOCK` columns, the ``k`` blocks with the largest maxima are kept (plus
    the ragged tail block), and ``torch.topk`` runs on those ``k * TOPK_BLOCK`` candidates only.

    Exact: an element in a block outside the ``k`` best blocks has at least ``k`` block maxima (distinct
    elements) at least as large, so some top-``k`` list lies within the candidates; only which of several
    equal scores is returned may differ from ``torch.topk`` on the full row. Used when the row has at least
    ``4 k`` blocks and the tensor is a contiguous CPU one; otherwise (e.g. CUDA, whose ``topk`` is a radix
    select) this is plain ``torch.topk``.

    Args:
        scores: Scores, shape ``(B, N)``; ``-inf`` for excluded items.
        k: Number of best items per row, ``k <= N``.

    Returns:
        ``(values, indices)``, both of shape ``(B, k)``, best first.
    """
    num_rows, n = scores.shape
    num_blocks = n // TOPK_BLOCK
    if scores.device.type != "cpu" or num_blocks < 4 * k or not scores.is_contiguous() or num_rows == 0:
        values, indices = torch.topk(scores, k, dim=1, sorted=True)
        return values, indices
    width = num_blocks * TOPK_BLOCK
    blocks = scores[:, :width].view(num_rows, num_blocks, TOPK_BLOCK)
    best = torch.topk(blocks.amax(dim=2), k, dim=1, sorted=False).indices  # (B, k)
    # The chosen blocks, copied whole: every TOPK_BLOCK-wide window of the buffer is a row of an overlapping
    # view (no copy), so index_select moves each block with one memcpy where gather computes an offset per
    # element. The same values in the same order as gathering them, so the same top-k, ties included.
    flat = scores.view(-1)
    windows = flat.as_strided((flat.numel() - TOPK_BLOCK + 1, TOPK_BLOCK), (1, 1))
    starts = best * TOPK_BLOCK + torch.arange(0, num_rows * n, n, device=scores.device).unsqueeze(1)
    candidates = windows.index_select(0, starts.view(-1)).view(num_rows, k * TOPK_BLOCK)
    if width < n:  # the tail block is always a candidate
        candidates = torch.cat([candidates, scores[:, width:]], dim=1)
    values, position = torch.topk(candidates, k, dim=1, sorted=True)
    # Columns of the k winners only: inside a chosen block, or in the tail after the k blocks.
    in_block = position < k * TOPK_BLOCK
    block = best.gather(1, torch.where(in_block, position // TOPK_BLOCK, 0))
    columns = torch.where(
        in_block, block * TOPK_BLOCK + position % TOPK_BLOCK, position + (width - k * TOPK_BLOCK)
    )
    return values, columns


def user_positions(users: Tensor, num_users: int) -> Tensor:
    """``position[u]`` = index of ``u`` in ``users``, -1 for users not in it; shape ``(num_users,)``."""
    position = torch.full((num_users,), -1, dtype=torch.int64, device=users.device)
    position[users] = torch.arange(users.numel(), device=users.device)
    return position


def topk_chunks(
    scorer: Scorer,
    users: Tensor,
    k: int,
    *,
    num_users: int,
    num_items: int,
    exclude: Tensor | ChunkedPairs | None = None,
    batch_size: int | None = None,
    timings: dict[str, float] | None = None,
    buffer: Tensor | None = None,
) -> Iterator[tuple[int, int, Tensor]]:
    """Yield the top-``k`` unmasked items of ``users``, one chunk of users at a time.

    Per chunk: the scorer fills a preallocated ``(B, num_items)`` buffer, the chunk's excluded pairs are
    set to ``-inf`` by index, and :func:`topk_rows` (``torch.topk``) picks the best ``k``. A user with
    fewer than ``k`` unmasked items gets ``-1`` (padding) at the end of the list.

    Args:
        scorer: Writes ``(B, num_items)`` scores; everything runs on ``scorer.device``.
        users: Users to rank for, shape ``(U,)``, int64, distinct.
        k: List length.
        num_users: Number of users (bound of the indices).
        num_items: Number of items.
        exclude: Pairs never to recommend, shape ``(2, E)``, ``[user_idx; item_idx]``; pairs of users not
            in ``users`` are ignored. Or the same already prepared for ``users`` (:func:`excluded_pairs`).
        batch_size: Users per chunk; default: :func:`auto_batch_size`.
        timings: If given, seconds are added under ``score``, ``mask`` and ``topk`` (see
            :func:`full_ranking`).
        buffer: A score buffer to reuse, at least ``(min(batch_size, U), num_items)``, contiguous, of the
            scorer's dtype and device; default: a new one (callers that rank the same users many times pass
            one, so the pages are not faulted in again on every call).

    Yields:
        ``(start, end, index)``: the lists of ``users[start:end]``, ``index`` of shape ``(end - start, k)``,
        int64, best first. The tensor is new for every chunk (the score buffer is reused).

    Raises:
        ValueError: bad ``k``, ``batch_size``, ``users`` or ``exclude``.
    """
    if k <= 0:
        msg = f"'k' needs to be a positive integer (got {k})"
        raise ValueError(msg)
    if batch_size is None:
        batch_size = auto_batch_size(num_items, scorer.dtype)
    if batch_size <= 0:
        msg = f"'batch_size' needs to be positive (got {batch_size})"
        raise ValueError(msg)
    device = torch.device(scorer.device)
    users = users.to(device)
    if users.dim() != 1 or users.dtype != torch.int64:
        msg = f"'users' needs shape (U,) and dtype int64 (got {tuple(users.shape)}, {users.dtype})"
        raise ValueError(msg)
    if users.numel() and (int(users.min()) < 0 or int(users.max()) >= num_users):
        msg = f"'users' has indices outside 0..{num_users - 1}"
        raise ValueError(msg)
    masked = excluded_pairs(exclude, users, num_users, num_items)

    num_rows = users.numel()
    top = min(k, num_items)
    rows = min(batch_size, max(num_rows, 1))
    if buffer is None:
        buffer = torch.empty(rows, num_items, dtype=scorer.dtype, device=device)
    elif buffer.size(0) < rows or buffer.size(1) != num_items or not buffer.is_contiguous():
        msg = f"'buffer' needs shape ({rows}+, {num_items}) and to be contiguous (got {tuple(buffer.shape)})"
        raise ValueError(msg)
    padding = torch.full((1, k - top), -1, dtype=torch.int64, device=device)
    clock = _Clock(timings, device)
    for start in range(0, num_rows, batch_size):
        end = min(start + batch_size, num_rows)
        scores = buffer[: end - start]
        scorer(users[start:end], scores)
        clock.lap("score")
        scores.view(-1).index_fill_(0, masked.chunk(start, end), -math.inf)
        clock.lap("mask")
        values, index = topk_rows(scores, top)
        index.masked_fill_(values == -math.inf, -1)  # masked items that filled a short list
        if top < k:
            index = torch.cat([index, padding.expand(end - start, -1)], dim=1)
        clock.lap("topk")
        yield start, end, index
        clock.last = time.perf_counter()  # the consumer's time is its own


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

    Users are processed in chunks of ``batch_size`` (:func:`topk_chunks`); peak memory is one
    ``(batch_size, num_items)`` score buffer plus the index tensors. Ground-truth items that are also
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
            ground truth's users (:func:`excluded_pairs`).
        ks: Cut-offs of the metrics.
        item_popularity: Popularity per item, shape ``(num_items,)``, for ``popularity@K``.
        segments: If given, also the metrics by user and item segment and the bias measures.
        batch_size: Users per chunk; default: :func:`auto_batch_size`.
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
    clock = _Clock(timings, device)
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

    All chunks of :func:`topk_chunks` concatenated; see there for the arguments.
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
