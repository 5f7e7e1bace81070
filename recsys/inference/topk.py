"""Score, mask, top-k: the one implementation of "the best unmasked items of each user".

Evaluation (:func:`topk_chunks`, under :func:`recsys.evaluation.ranking.full_ranking`) and serving
(:class:`recsys.inference.recommend.Recommender`) both end in :func:`mask_topk`, so a list served for a user
is the list its metrics were measured on. Masked pairs are flat keys ``row * num_items + item`` of the score
matrix, set to ``-inf`` with one ``index_fill_``; the top-k is ``torch.topk`` after an exact block-max
prefilter on CPU (:func:`topk_rows`).

For evaluation the pairs are prepared once per set of users (:class:`ChunkedPairs`, a CSR in key form), so
the masked keys of a chunk of users are one contiguous slice, and the ``(B, num_items)`` score buffer is
allocated once and reused for every chunk: the full score matrix never exists.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import torch
from torch import Tensor

from recsys.inference.scoring import Scorer

DEFAULT_MEMORY_BUDGET = 256 * 2**20
"""Bytes of the score buffer when no batch size is given."""
MAX_AUTO_BATCH_SIZE = 4096


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
        keys = rows * num_items + pairs[1]
        keep = rows >= 0
        if not bool(keep.all()):  # one boolean gather, and none when every pair's user is in ``users``
            keys = keys[keep]
        self.keys = torch.unique(keys)  # sorted
        bounds = torch.arange(users.numel() + 1, device=pairs.device) * num_items
        self.indptr = torch.searchsorted(self.keys, bounds)
        self.users = users
        self.num_items = num_items
        self._ptr = self.indptr.tolist()  # host copy: slicing with ints needs no device sync per chunk

    def chunk(self, start: int, end: int) -> Tensor:
        """Keys of rows ``start..end-1`` relative to row ``start``, shape ``(E_chunk,)``."""
        return self.keys[self._ptr[start] : self._ptr[end]] - start * self.num_items

    def contains(self, keys: Tensor) -> Tensor:
        """Whether each of ``keys`` (in this key form) is one of the pairs: ``torch.isin(keys, self.keys)``.

        One binary search per key in the sorted keys, where ``isin`` sorts both sets together.
        """
        if self.keys.numel() == 0:
            return torch.zeros(keys.shape, dtype=torch.bool, device=keys.device)
        found = torch.searchsorted(self.keys, keys).clamp_(max=self.keys.numel() - 1)
        return self.keys[found] == keys


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


class PhaseClock:
    """Adds the seconds since the last lap to ``timings[name]``; does nothing without ``timings``.

    Shared by :func:`topk_chunks` and :func:`recsys.evaluation.ranking.full_ranking`, which time the phases of
    one loop.
    """

    def __init__(self, timings: dict[str, float] | None, device: torch.device) -> None:
        self.timings = timings
        self.cuda = device.type == "cuda"
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        """Close the phase ``name``: add the seconds since the last lap to it."""
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


def mask_topk(
    scores: Tensor, masked: Tensor | None, k: int, clock: PhaseClock | None = None
) -> tuple[Tensor, Tensor]:
    """Set the masked entries of ``scores`` to ``-inf`` in place, then take the top ``k`` of every row.

    The one mask-and-top-k of evaluation (:func:`topk_chunks`) and serving
    (:class:`recsys.inference.recommend.Recommender`): the same scores give the same lists, ties included.

    Args:
        scores: Scores, shape ``(B, N)``, contiguous; overwritten where masked.
        masked: Flat keys ``row * N + item`` of the entries never to return, any order; ``None``: none.
        k: Number of best items per row, ``k <= N``.
        clock: If given, the masking is timed as its ``mask`` phase.

    Returns:
        ``(values, index)``, both of shape ``(B, k)``, best first; ``index`` is ``-1`` where a row ran out
        of unmasked items (its value is ``-inf``).
    """
    if masked is not None:
        scores.view(-1).index_fill_(0, masked, -math.inf)
    if clock is not None:
        clock.lap("mask")
    values, index = topk_rows(scores, k)
    index.masked_fill_(values == -math.inf, -1)  # masked items that filled a short list
    return values, index


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

    Per chunk: the scorer fills a preallocated ``(B, num_items)`` buffer, then :func:`mask_topk` sets the
    chunk's excluded pairs to ``-inf`` by index and :func:`topk_rows` (``torch.topk``) picks the best ``k``.
    A user with fewer than ``k`` unmasked items gets ``-1`` (padding) at the end of the list.

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
            :func:`recsys.evaluation.ranking.full_ranking`).
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
    clock = PhaseClock(timings, device)
    for start in range(0, num_rows, batch_size):
        end = min(start + batch_size, num_rows)
        scores = buffer[: end - start]
        scorer(users[start:end], scores)
        clock.lap("score")
        _, index = mask_topk(scores, masked.chunk(start, end), top, clock)
        if top < k:
            index = torch.cat([index, padding.expand(end - start, -1)], dim=1)
        clock.lap("topk")
        yield start, end, index
        clock.last = time.perf_counter()  # the consumer's time is its own
