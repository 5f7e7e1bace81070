r"""The one form of every filter's scores, and its exact scorer.

A user's training interactions :math:`r_u \in \{0, 1\}^I` are scored by a sum of terms, then tilted:

.. math::

    s_u = \Big( \sum_s w_s\, (r_u D_I^{-\beta_s}) \tilde P D_I^{\beta_s} \;+\; a\, r_u
          \;+\; \sum_l (r_u U_l) \operatorname{diag}(c_l)\, W_l \Big) D_I^{\gamma}

with :math:`\tilde P` the item-item operator and :math:`V` the top eigenvectors of
:class:`~recsys.evaluation.filters.spectral.ItemGraph`. A sparse term is a degree-normalised linear filter,
the identity term touches only the user's own (masked) items, and :math:`\gamma` tilts towards popular
items. A low-rank term has a user side :math:`U_l` (``(I, k)``) and an item side :math:`W_l` (``(k, I)``):
usually :math:`U = D_I^{-\mu} V_k` and :math:`W = V_k^\top D_I^{\nu}` (a function of :math:`\tilde P` on the
top of its spectrum), or a matrix the filter computed once and named in :attr:`ItemGraph.blocks` (BSPM's
sharpened ideal low-pass). Each filter module turns a point of its grid into :class:`Terms`;
:class:`FilterScorer` scores them for full ranking, and :mod:`recsys.evaluation.filters.tuning` evaluates
many of them on candidate items at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from recsys.evaluation.filters.spectral import ItemGraph


@dataclass(frozen=True)
class LowRank:
    r"""One low-rank term :math:`(r U) \operatorname{diag}(c) W`.

    Attributes:
        weights: :math:`c`, ``(k,)``, ``k`` at most the graph's rank.
        user_exponent: :math:`\mu` of the user side :math:`D_I^{-\mu} V_k` (when ``user`` is ``None``).
        item_exponent: :math:`\nu` of the item side :math:`V_k^\top D_I^{\nu}` (when ``item`` is ``None``).
        user: Name of a precomputed ``(I, k')`` user side in :attr:`ItemGraph.blocks` (first ``k`` columns).
        item: Name of a precomputed ``(k', I)`` item side in :attr:`ItemGraph.blocks` (first ``k`` rows).
    """

    weights: np.ndarray
    user_exponent: float = 0.0
    item_exponent: float = 0.0
    user: str | None = None
    item: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        """``(user side, item side)``: terms with the same key share both sides, so their weights add."""
        user = self.user if self.user is not None else f"d^{-float(self.user_exponent)!r}"
        item = self.item if self.item is not None else f"d^{float(self.item_exponent)!r}"
        return user, item


def is_basis(side: str) -> bool:
    """Whether a side key is the eigenvectors times a degree power (not a named block)."""
    return side.startswith("d^")


def side_exponent(side: str) -> float:
    """The degree exponent of a basis side key: ``d^-0.5`` is :math:`D_I^{-1/2} V` (or its transpose)."""
    return float(side[2:])


@dataclass(frozen=True)
class Terms:
    r"""A filter's scores as a sum of terms (module docstring).

    Attributes:
        sparse: ``(beta, weight)`` pairs, each :math:`w (r D_I^{-\beta}) \tilde P D_I^{\beta}`.
        identity: :math:`a`, the weight of :math:`r` itself.
        low_rank: The low-rank terms.
        tilt: :math:`\gamma`, scores times :math:`d_i^{\gamma}` (0: no tilt).
    """

    sparse: tuple[tuple[float, float], ...] = ()
    identity: float = 0.0
    low_rank: tuple[LowRank, ...] = field(default=())
    tilt: float = 0.0

    def merged_low_rank(self, rank: int) -> dict[tuple[str, str], np.ndarray]:
        """The low-rank weights by shared sides, each padded with zeros to ``(rank,)``."""
        merged: dict[tuple[str, str], np.ndarray] = {}
        for term in self.low_rank:
            weights = merged.setdefault(term.key, np.zeros(rank, dtype=np.float64))
            weights[: term.weights.size] += term.weights
        return merged


def user_side(graph: ItemGraph, side: str, width: int | None = None) -> np.ndarray:
    """The ``(num_items, width)`` user side of a key, float32 (columns past a named block's are zero)."""
    width = graph.rank if width is None else width
    if is_basis(side):
        return graph.basis[:, :width] * graph.degree_power(side_exponent(side)).astype(np.float32)[:, None]
    block = graph.blocks[side][:, :width]
    return block if block.shape[1] == width else _padded(block, (graph.num_items, width))


def item_side(graph: ItemGraph, side: str, height: int | None = None) -> np.ndarray:
    """The ``(height, num_items)`` item side of a key, float32 (rows past a named block's are zero)."""
    height = graph.rank if height is None else height
    if is_basis(side):
        power = graph.degree_power(side_exponent(side)).astype(np.float32)
        return np.ascontiguousarray((graph.basis[:, :height] * power[:, None]).T)
    block = graph.blocks[side][:height]
    return block if block.shape[0] == height else _padded(block, (height, graph.num_items))


def _padded(block: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, dtype=np.float32)
    out[: block.shape[0], : block.shape[1]] = block
    return out


class FilterScorer:
    r"""Exact scores of one :class:`Terms`: the sparse part, then the low-rank part added by BLAS.

    Every term is folded into two operators once: a sparse :math:`(I, I)` matrix with :math:`\tilde P`'s
    pattern (the sparse terms, normalisations and tilt included) and a pair of dense sides :math:`(I, m)`,
    :math:`(m, I)` (the low-rank terms side by side, those sharing a user side summed into one), so a chunk
    costs one sparse product and one dense product whatever the filter; the identity term is added on the
    users' own items.

    Args:
        graph: The fitted item graph.
        terms: The filter's terms.
    """

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, graph: ItemGraph, terms: Terms) -> None:
        self.interactions = graph.interactions
        self.graph, self.terms = graph, terms
        tilt = graph.degree_power(terms.tilt) if terms.tilt else np.ones(graph.num_items)
        self._linear: sp.csr_matrix | None = None
        self.identity = (terms.identity * tilt).astype(np.float32)
        # Terms that share a user side share its projection: their item sides add, weights folded in. Only
        # the columns up to the last non-zero weight are kept (an ideal part uses the top eta).
        sides: dict[str, np.ndarray] = {}
        for (user, item), weights in terms.merged_low_rank(graph.rank).items():
            height = int(np.flatnonzero(weights)[-1]) + 1 if weights.any() else 0
            if height == 0:
                continue
            part = item_side(graph, item, height) * weights[:height, None].astype(np.float32)  # a new array
            if user in sides and sides[user].shape[0] >= height:
                sides[user][:height] += part
            elif user in sides:
                part[: sides[user].shape[0]] += sides[user]
                sides[user] = part
            else:
                sides[user] = part
        users, items = [], []
        for user, side in sides.items():
            users.append(user_side(graph, user, side.shape[0]))
            items.append(side * tilt.astype(np.float32) if terms.tilt else side)
        self.user_side = np.ascontiguousarray(np.hstack(users), dtype=np.float32) if users else None
        self.item_side = np.ascontiguousarray(np.vstack(items), dtype=np.float32) if items else None

    @property
    def linear(self) -> sp.csr_matrix | None:
        r"""The sparse terms as one ``(I, I)`` CSR with :math:`\tilde P`'s pattern (built on first use).

        Its values are :math:`\tilde P`'s scaled per row and column, sharing its index arrays; ``None``
        without sparse terms. (The identity term is added per chunk, on the users' own items.)
        """
        terms, graph = self.terms, self.graph
        if self._linear is None and terms.sparse:
            p = graph.item_item
            rows = np.repeat(np.arange(graph.num_items, dtype=np.int32), np.diff(p.indptr))
            tilt = graph.degree_power(terms.tilt) if terms.tilt else np.ones(graph.num_items)
            data = np.zeros(p.nnz, dtype=np.float32)
            for beta, weight in terms.sparse:
                left = (weight * graph.degree_power(-beta)).astype(np.float32)
                right = (graph.degree_power(beta) * tilt).astype(np.float32)
                data += p.data * left[rows] * right[p.indices]
            self._linear = sp.csr_matrix((data, p.indices, p.indptr), shape=p.shape)
        return self._linear

    @property
    def width(self) -> int:
        """Columns of the dense product per user (0 without low-rank terms)."""
        return 0 if self.user_side is None else self.user_side.shape[1]

    def __call__(self, users: Tensor, out: Tensor) -> None:
        """Write the scores of ``users`` into ``out`` (``(B, num_items)``, contiguous float32 on CPU)."""
        from scipy.linalg.blas import sgemm

        target = out.numpy()
        if not target.flags.c_contiguous:
            msg = "the graph filter writes into a C-contiguous score buffer"
            raise ValueError(msg)
        rows = self.interactions[users.cpu().numpy()]
        linear = self.linear
        if linear is not None:
            (rows @ linear).toarray(out=target)
        else:
            target.fill(0.0)
        if self.terms.identity:  # a r_u, tilted: on the users' own items only
            own = rows.tocoo()
            target[own.row, own.col] += self.identity[own.col]
        if self.user_side is not None and self.item_side is not None:
            # target += (rows @ user_side) @ item_side: BLAS with beta = 1 on the transposed (Fortran) views.
            left = np.asarray(rows @ self.user_side, dtype=np.float32)
            sgemm(1.0, self.item_side.T, left.T, beta=1.0, c=target.T, overwrite_c=True)
