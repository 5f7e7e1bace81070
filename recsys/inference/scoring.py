"""Scorers: anything that writes the scores of all items for a chunk of users into a buffer.

The model is :class:`EmbeddingScorer` (dot products of the final embeddings, written straight into the
evaluator's buffer); the baselines of :mod:`recsys.evaluation.baselines` and
:mod:`recsys.evaluation.filters` are scorers too, so :func:`recsys.inference.topk.topk_chunks` ranks
every row of a report the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal
from typing import Protocol as TypingProtocol

import numpy as np
import torch
from torch import Tensor


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
