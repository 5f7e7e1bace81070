"""Full-ranking offline evaluation: every item is scored for every evaluated user, seen items are masked.

Used by training (model selection on valid) and by ``recsys evaluate`` (test). The metrics are defined in
:mod:`recsys.metrics`. The evaluator works on any :class:`Scorer`; :class:`EmbeddingScorer` is the model
(dot products of user and item embeddings), :class:`PopularityScorer` and :class:`RandomScorer` are the
reference rows of every report.

How one chunk of ``B`` users is evaluated (no Python loop over users, the full score matrix never exists):

1. score: the scorer writes ``(B, num_items)`` scores into one preallocated buffer (for embeddings, one
   BLAS product ``user_chunk @ item_emb.T`` with ``out=buffer``; see :class:`EmbeddingScorer`);
2. mask: the excluded (user, item) pairs of the chunk are a contiguous slice of sorted flat keys
   ``row * num_items + item`` (a CSR over the evaluated users), set to ``-inf`` with one ``index_fill_``;
3. top-k: ``torch.topk`` after an exact block-max prefilter on CPU (:func:`topk_rows`), best first;
4. metrics: hits by ``searchsorted`` of the top-k keys in the chunk's sorted ground-truth keys.

Protocols (named in every report):

* ``honest`` (default): the model is selected on valid and test is reported once. Evaluating valid
  excludes train; evaluating test excludes train and valid.
* ``paper``: the SimGCL/XSimGCL papers' protocol as run by SELFRec: train on train ∪ valid and report the
  best test epoch. Test excludes train ∪ valid (the training data); valid cannot be evaluated, as it is
  training data. Numbers under this protocol are optimistic and only for comparing with published ones.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal
from typing import Protocol as TypingProtocol

import numpy as np
import torch
from torch import Tensor

from recsys.dataset import Dataset
from recsys.errors import InputError
from recsys.metrics import DEFAULT_KS, METRIC_NAMES, RankingAccumulator, check_ks, sorted_relevance

logger = logging.getLogger(__name__)

REPORT_FORMAT_VERSION = 1
DEFAULT_MEMORY_BUDGET = 256 * 2**20
"""Bytes of the score buffer when no batch size is given."""
MAX_AUTO_BATCH_SIZE = 4096
EMBEDDINGS_FILE = "embeddings.pt"
BASELINES = ("most-popular", "random")


class Protocol(StrEnum):
    """Evaluation protocol; see the module docstring."""

    HONEST = "honest"
    PAPER = "paper"


def excluded_splits(split: str, protocol: Protocol | str = Protocol.HONEST) -> tuple[str, ...]:
    """The splits whose items are masked (never recommended) when ``split`` is evaluated.

    ============  ==================  ====================
    split         honest              paper
    ============  ==================  ====================
    ``valid``     train               (not allowed)
    ``test``      train, valid        train, valid
    ============  ==================  ====================

    Raises:
        InputError: unknown split or protocol, or ``valid`` under ``paper`` (valid is training data there).
    """
    protocol = _protocol(protocol)
    if split == "valid":
        if protocol is Protocol.PAPER:
            msg = "the paper protocol trains on train ∪ valid, so it can only evaluate split 'test'"
            raise InputError(msg)
        return ("train",)
    if split == "test":
        return ("train", "valid")
    msg = f"cannot evaluate split {split!r}; expected 'valid' or 'test'"
    raise InputError(msg)


def training_splits(protocol: Protocol | str = Protocol.HONEST) -> tuple[str, ...]:
    """The splits a model is trained on under ``protocol`` (also the baselines' and popularity's data)."""
    return ("train",) if _protocol(protocol) is Protocol.HONEST else ("train", "valid")


def _protocol(protocol: Protocol | str) -> Protocol:
    try:
        return Protocol(protocol)
    except ValueError:
        msg = f"unknown protocol {protocol!r}; expected one of {', '.join(p.value for p in Protocol)}"
        raise InputError(msg) from None


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


class PopularityScorer:
    """Most-popular baseline: every user gets the items ranked by number of training interactions.

    Ties are broken by the smaller item index, so the ranking is deterministic. The score of an item is
    ``num_items - rank`` (exact in float32 up to 2**24 items).

    Args:
        train: Training interactions, shape ``(2, E)``, ``[user_idx; item_idx]``.
        num_items: Catalogue size.
        dtype: Dtype of the scores.
    """

    def __init__(self, train: Tensor, num_items: int, *, dtype: torch.dtype = torch.float32) -> None:
        self.device = train.device
        self.dtype = dtype
        self.popularity = torch.bincount(train[1], minlength=num_items)
        order = torch.argsort(self.popularity, descending=True, stable=True)
        scores = torch.empty(num_items, dtype=dtype, device=self.device)
        scores[order] = torch.arange(num_items, 0, -1, device=self.device).to(dtype)
        self.scores = scores

    def __call__(self, users: Tensor, out: Tensor) -> None:
        """Broadcast the item scores to every row of ``out`` (shape ``(B, num_items)``)."""
        out.copy_(self.scores.expand_as(out))


class RandomScorer:
    """Random baseline: i.i.d. uniform scores, i.e. a uniformly random ranking of the unmasked items.

    Reproducible for a given seed, batch size and device; each scorer object draws from its own generator,
    so two evaluations with the same object differ (create a new one to repeat a result).

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
    """

    metrics: dict[str, float]
    num_users: int
    num_skipped: int
    seconds: float


class _ChunkedPairs:
    """(user, item) pairs restricted to the evaluated users, as sorted flat keys ``pos * num_items + item``.

    ``pos`` is the user's position in the evaluated-user list, so the pairs of a chunk ``[start, end)`` of
    that list are the contiguous slice ``keys[indptr[start]:indptr[end]]`` (a CSR in key form).
    Duplicate pairs are dropped.
    """

    def __init__(self, pairs: Tensor, position: Tensor, num_rows: int, num_items: int) -> None:
        rows = position[pairs[0]]
        keep = rows >= 0
        self.keys = torch.unique(rows[keep] * num_items + pairs[1][keep])  # sorted
        bounds = torch.arange(num_rows + 1, device=pairs.device) * num_items
        self.indptr = torch.searchsorted(self.keys, bounds)
        self.num_items = num_items

    def chunk(self, start: int, end: int, indptr: list[int]) -> Tensor:
        """Keys of rows ``start..end-1`` relative to row ``start``, shape ``(E_chunk,)``."""
        return self.keys[indptr[start] : indptr[end]] - start * self.num_items


def _check_pairs(name: str, pairs: Tensor, num_users: int, num_items: int) -> None:
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
    if scores.device.type != "cpu" or num_blocks < 4 * k or not scores.is_contiguous():
        values, indices = torch.topk(scores, k, dim=1, sorted=True)
        return values, indices
    width = num_blocks * TOPK_BLOCK
    blocks = scores[:, :width].view(num_rows, num_blocks, TOPK_BLOCK)
    best = torch.topk(blocks.amax(dim=2), k, dim=1, sorted=False).indices  # (B, k)
    offsets = torch.arange(TOPK_BLOCK, device=scores.device)
    candidates = blocks.gather(1, best.unsqueeze(2).expand(-1, -1, TOPK_BLOCK)).view(num_rows, -1)
    columns = (best.unsqueeze(2) * TOPK_BLOCK + offsets).view(num_rows, -1)
    if width < n:  # the tail block is always a candidate
        candidates = torch.cat([candidates, scores[:, width:]], dim=1)
        tail = torch.arange(width, n, device=scores.device).expand(num_rows, -1)
        columns = torch.cat([columns, tail], dim=1)
    values, position = torch.topk(candidates, k, dim=1, sorted=True)
    return values, columns.gather(1, position)


def _positions(users: Tensor, num_users: int) -> Tensor:
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
    exclude: Tensor | None = None,
    batch_size: int | None = None,
    timings: dict[str, float] | None = None,
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
            in ``users`` are ignored.
        batch_size: Users per chunk; default: :func:`auto_batch_size`.
        timings: If given, seconds are added under ``score``, ``mask`` and ``topk`` (see
            :func:`full_ranking`).

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
    if exclude is None:
        exclude = torch.empty(2, 0, dtype=torch.int64, device=device)
    exclude = exclude.to(device)
    _check_pairs("exclude", exclude, num_users, num_items)
    masked = _ChunkedPairs(exclude, _positions(users, num_users), users.numel(), num_items)
    masked_ptr = masked.indptr.tolist()  # host copy: slicing with ints needs no device sync per chunk

    num_rows = users.numel()
    top = min(k, num_items)
    buffer = torch.empty(min(batch_size, max(num_rows, 1)), num_items, dtype=scorer.dtype, device=device)
    padding = torch.full((1, k - top), -1, dtype=torch.int64, device=device)
    clock = _Clock(timings, device)
    for start in range(0, num_rows, batch_size):
        end = min(start + batch_size, num_rows)
        scores = buffer[: end - start]
        scorer(users[start:end], scores)
        clock.lap("score")
        scores.view(-1).index_fill_(0, masked.chunk(start, end, masked_ptr), -math.inf)
        clock.lap("mask")
        values, index = topk_rows(scores, top)
        index.masked_fill_(values == -math.inf, -1)  # masked items that filled a short list
        if top < k:
            index = torch.cat([index, padding.expand(end - start, -1)], dim=1)
        clock.lap("topk")
        yield start, end, index
        clock.last = time.perf_counter()  # the consumer's time is its own


def full_ranking(
    scorer: Scorer,
    ground_truth: Tensor,
    *,
    num_users: int,
    num_items: int,
    exclude: Tensor | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    item_popularity: Tensor | None = None,
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
            counted once.
        num_users: Number of users; users without ground truth are skipped and counted.
        num_items: Number of items (columns of the score matrix).
        exclude: Pairs never to recommend (e.g. train), shape ``(2, E')``.
        ks: Cut-offs of the metrics.
        item_popularity: Popularity per item, shape ``(num_items,)``, for ``popularity@K``.
        batch_size: Users per chunk; default: :func:`auto_batch_size`.
        timings: If given, seconds per phase are added to it under ``setup``, ``score``, ``mask``,
            ``topk`` and ``metrics`` (synchronising the device between phases, which costs a little).

    Returns:
        The metrics, with the numbers of evaluated and skipped users.

    Raises:
        ValueError: malformed pairs, indices out of range, or a bad ``ks``/``batch_size``.
    """
    t_start = time.perf_counter()
    ks = check_ks(ks)
    device = torch.device(scorer.device)
    ground_truth = ground_truth.to(device)
    _check_pairs("ground_truth", ground_truth, num_users, num_items)
    users = torch.unique(ground_truth[0])  # sorted: the evaluated users
    num_eval = users.numel()
    truth = _ChunkedPairs(ground_truth, _positions(users, num_users), num_eval, num_items)
    num_relevant = truth.indptr.diff()
    truth_ptr = truth.indptr.tolist()
    acc = RankingAccumulator(ks, num_items, item_popularity, device=device)
    if timings is not None:
        timings["setup"] = timings.get("setup", 0.0) + time.perf_counter() - t_start

    chunks = topk_chunks(
        scorer,
        users,
        acc.max_k,
        num_users=num_users,
        num_items=num_items,
        exclude=exclude,
        batch_size=batch_size,
        timings=timings,
    )
    clock = _Clock(timings, device)
    for start, end, index in chunks:
        clock.last = time.perf_counter()
        rel = sorted_relevance(index, truth.chunk(start, end, truth_ptr), num_items)
        acc.update(index, rel, num_relevant[start:end])
        clock.lap("metrics")
    metrics = acc.compute()
    clock.lap("metrics")
    return RankingResult(
        metrics=metrics,
        num_users=num_eval,
        num_skipped=num_users - num_eval,
        seconds=time.perf_counter() - t_start,
    )


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


# --------------------------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class ReportRow:
    """One row of a report: a scorer's metrics.

    Args:
        name: ``model``, ``most-popular`` or ``random``.
        metrics: ``{"recall@20": ..., ...}``.
        seconds: Wall time of its evaluation.
    """

    name: str
    metrics: dict[str, float]
    seconds: float


@dataclass(frozen=True)
class EvaluationReport:
    """Metrics of a model and the baselines on one split under one protocol.

    Args:
        protocol: ``honest`` or ``paper`` (see the module docstring).
        split: The evaluated split, ``valid`` or ``test``.
        ks: Cut-offs.
        num_users: Users evaluated (with ground truth in ``split``).
        num_skipped: Users without ground truth in ``split``.
        model: The model's row, or ``None`` when only baselines were evaluated.
        baselines: Reference rows (most-popular, random).
        excluded: The splits whose items were masked.
        dataset: The dataset directory, if known.
        artifact: The artifact directory, if known.
    """

    protocol: Protocol
    split: str
    ks: tuple[int, ...]
    num_users: int
    num_skipped: int
    model: ReportRow | None = None
    baselines: tuple[ReportRow, ...] = ()
    excluded: tuple[str, ...] = ()
    dataset: str | None = None
    artifact: str | None = None
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    @property
    def rows(self) -> tuple[ReportRow, ...]:
        """The model row (if any) followed by the baselines."""
        return ((self.model,) if self.model is not None else ()) + self.baselines

    @property
    def metrics(self) -> dict[str, float]:
        """The model's metrics (empty without a model)."""
        return dict(self.model.metrics) if self.model is not None else {}

    @property
    def seconds(self) -> float:
        """Total evaluation time of all rows."""
        return sum(row.seconds for row in self.rows)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the content of ``eval_<split>.json``)."""
        return {
            "format_version": REPORT_FORMAT_VERSION,
            "protocol": self.protocol.value,
            "split": self.split,
            "excluded": list(self.excluded),
            "ks": list(self.ks),
            "num_users": self.num_users,
            "num_skipped": self.num_skipped,
            "metrics": self.metrics,
            "seconds": self.seconds,
            "model": None if self.model is None else _row_dict(self.model),
            "baselines": {row.name: _row_dict(row) for row in self.baselines},
            "dataset": self.dataset,
            "artifact": self.artifact,
            "created": self.created,
        }


def _row_dict(row: ReportRow) -> dict[str, Any]:
    return {"name": row.name, "metrics": row.metrics, "seconds": row.seconds}


def evaluate_split(
    dataset: Dataset,
    user_emb: Tensor | None = None,
    item_emb: Tensor | None = None,
    *,
    split: str = "test",
    protocol: Protocol | str = Protocol.HONEST,
    ks: Sequence[int] = DEFAULT_KS,
    baselines: Sequence[str] = BASELINES,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    model_name: str = "model",
) -> EvaluationReport:
    """Evaluate embeddings (and/or the baselines) on one split of a dataset under a protocol.

    Masks the items of :func:`excluded_splits`; the baselines and ``popularity@K`` use the training data
    of the protocol (:func:`training_splits`: train under ``honest``, train ∪ valid under ``paper``).

    Args:
        dataset: The dataset (see :func:`recsys.dataset.load_dataset`).
        user_emb: User embeddings, shape ``(num_users, d)``; ``None`` to evaluate only the baselines.
        item_emb: Item embeddings, shape ``(num_items, d)``.
        split: ``valid`` or ``test``.
        protocol: ``honest`` or ``paper``.
        ks: Cut-offs.
        baselines: Names from :data:`BASELINES` to add as reference rows.
        batch_size: Users per chunk (default: by memory budget).
        device: Device of the baselines when no embeddings are given (the embeddings' device otherwise);
            default CPU.
        seed: Seed of the random baseline.
        model_name: Name of the model's row.

    Returns:
        The report: protocol, split, user counts, the model's row and the baseline rows.

    Raises:
        InputError: bad split/protocol/baseline name, or embeddings that do not match the dataset.
    """
    protocol = _protocol(protocol)
    excluded = excluded_splits(split, protocol)
    ks = check_ks(ks)
    unknown = [name for name in baselines if name not in BASELINES]
    if unknown:
        msg = f"unknown baseline(s) {', '.join(unknown)}; expected some of {', '.join(BASELINES)}"
        raise InputError(msg)
    if (user_emb is None) != (item_emb is None):
        msg = "give both user and item embeddings, or neither"
        raise InputError(msg)
    if user_emb is not None and item_emb is not None:
        check_embeddings(user_emb, item_emb, dataset.num_users, dataset.num_items)
        device = user_emb.device
    device = torch.device(device if device is not None else "cpu")

    truth = dataset.split(split).to(device)
    exclude = torch.cat([dataset.split(name) for name in excluded], dim=1).to(device)
    training = torch.cat([dataset.split(name) for name in training_splits(protocol)], dim=1).to(device)
    popularity = torch.bincount(training[1], minlength=dataset.num_items)

    def run(name: str, scorer: Scorer) -> tuple[ReportRow, RankingResult]:
        result = full_ranking(
            scorer,
            truth,
            num_users=dataset.num_users,
            num_items=dataset.num_items,
            exclude=exclude,
            ks=ks,
            item_popularity=popularity,
            batch_size=batch_size,
        )
        logger.info(
            "%s on %s (%s): %s in %.2f s",
            name,
            split,
            protocol.value,
            _summary(result.metrics, ks),
            result.seconds,
        )
        return ReportRow(name, result.metrics, result.seconds), result

    model: ReportRow | None = None
    last: RankingResult | None = None
    if user_emb is not None and item_emb is not None:
        model, last = run(model_name, EmbeddingScorer(user_emb, item_emb))
    rows = []
    for name in baselines:  # float32 scores whatever the model's dtype: ranks stay exact up to 2**24 items
        scorer: Scorer = (
            PopularityScorer(training, dataset.num_items)
            if name == "most-popular"
            else RandomScorer(seed, device=device)
        )
        row, last = run(name, scorer)
        rows.append(row)
    if last is None:  # nothing to score: still count the users
        evaluated = int(torch.unique(truth[0]).numel())
        num_users, num_skipped = evaluated, dataset.num_users - evaluated
    else:
        num_users, num_skipped = last.num_users, last.num_skipped
    return EvaluationReport(
        protocol=protocol,
        split=split,
        ks=ks,
        num_users=num_users,
        num_skipped=num_skipped,
        model=model,
        baselines=tuple(rows),
        excluded=excluded,
        dataset=str(dataset.path) if dataset.path is not None else None,
    )


def _summary(metrics: dict[str, float], ks: Sequence[int]) -> str:
    k = 20 if 20 in ks else ks[-1]
    return f"recall@{k} {metrics[f'recall@{k}']:.4f}, ndcg@{k} {metrics[f'ndcg@{k}']:.4f}"


def check_embeddings(user_emb: Tensor, item_emb: Tensor, num_users: int, num_items: int) -> None:
    """Check that embeddings fit a dataset.

    Raises:
        InputError: not 2-d floating tensors of shapes ``(num_users, d)`` and ``(num_items, d)``.
    """
    for name, emb, rows in (("user", user_emb, num_users), ("item", item_emb, num_items)):
        if emb.dim() != 2 or not emb.is_floating_point():
            msg = f"{name} embeddings need a 2-d floating tensor (got shape {tuple(emb.shape)}, {emb.dtype})"
            raise InputError(msg)
        if emb.size(0) != rows:
            msg = (
                f"{name} embeddings have {emb.size(0):,} rows but the dataset has {rows:,} {name}s "
                "(was the model trained on another dataset?)"
            )
            raise InputError(msg)
    if user_emb.size(1) != item_emb.size(1):
        msg = f"user and item embeddings differ in dimension ({user_emb.size(1)} vs {item_emb.size(1)})"
        raise InputError(msg)


def load_embeddings(
    artifact_dir: Path | str,
    *,
    num_users: int | None = None,
    num_items: int | None = None,
    map_location: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """Read ``<artifact_dir>/embeddings.pt``: a dict ``{"user": (num_users, d), "item": (num_items, d)}``.

    Loaded with ``torch.load(weights_only=True)``, so no code is unpickled.

    Args:
        artifact_dir: The artifact directory.
        num_users: Expected number of users (the dataset's), checked when given.
        num_items: Expected number of items, checked when given.
        map_location: Device to load the tensors onto.

    Returns:
        ``(user_emb, item_emb)``.

    Raises:
        InputError: missing directory or file, unreadable file, wrong keys, or shapes that do not match.
    """
    artifact_dir = Path(artifact_dir)
    if not artifact_dir.is_dir():
        msg = f"{artifact_dir}: no such artifact directory"
        raise InputError(msg)
    path = artifact_dir / EMBEDDINGS_FILE
    if not path.is_file():
        msg = f"{path}: missing; an artifact needs {EMBEDDINGS_FILE} with the final user and item embeddings"
        raise InputError(msg)
    try:
        data = torch.load(path, weights_only=True, map_location=map_location)
    except Exception as exc:  # torch raises pickle, zip and runtime errors alike for a bad file
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        msg = f"{path}: cannot read the embeddings: {first}"
        raise InputError(msg) from exc
    if not isinstance(data, dict) or not all(isinstance(data.get(key), Tensor) for key in ("user", "item")):
        keys = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        msg = f"{path}: expected a dict with tensors 'user' and 'item' (got {keys})"
        raise InputError(msg)
    user_emb, item_emb = data["user"], data["item"]
    check_embeddings(
        user_emb,
        item_emb,
        num_users if num_users is not None else user_emb.size(0),
        num_items if num_items is not None else item_emb.size(0),
    )
    return user_emb, item_emb


def write_report(report: EvaluationReport, path: Path | str) -> Path:
    """Write ``report.to_dict()`` as JSON, atomically (a temporary sibling renamed over ``path``).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(report.to_dict(), fh, indent=2)
            fh.write("\n")
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def format_report(report: EvaluationReport, digits: int = 4) -> str:
    """A plain-text table: a header line, then one block per K with a row per scorer.

    Columns of each block: ``recall@K ndcg@K precision@K hit@K mrr@K coverage@K``.

    Returns:
        The table, without a trailing newline.
    """
    header = (
        f"protocol {report.protocol.value} | split {report.split} "
        f"(excluding {' + '.join(report.excluded) or 'nothing'}) | "
        f"users evaluated {report.num_users:,} | skipped (no ground truth) {report.num_skipped:,}"
    )
    rows = report.rows
    if not rows:
        return header + "\n(nothing evaluated)"
    names = [row.name for row in rows]
    width = max(len("model"), *map(len, names))
    lines = [header]
    for k in report.ks:
        columns = [f"{name}@{k}" for name in (*METRIC_NAMES, "coverage")]
        col = max(digits + 2, *map(len, columns))
        lines.append("")
        lines.append(" ".join([" " * width, *(c.rjust(col) for c in columns)]))
        for row in rows:
            values = [row.metrics.get(c, math.nan) for c in columns]
            lines.append(" ".join([row.name.ljust(width), *(f"{v:.{digits}f}".rjust(col) for v in values)]))
    return "\n".join(lines)
