r"""Honest tuning of the graph filters: every grid point of every filter measured on the selection split.

Each filter's hyperparameters are chosen on the selection split (valid under the honest protocol), never on
the split that is reported, by measuring every point of its grid (:class:`FilterConfig`) on a fixed random
sample of that split's users, as a full ranking would, but on candidate items only:

1. per chunk of sampled users, each filter's *pilot* (its published setting, its low-rank terms cut to the
   top ``pilot_rank`` eigenvectors: it only proposes items) scores all items, the user's masked items are
   removed, and the top ``candidates`` items of every pilot are kept (their union: the user's candidates);
2. every grid point is then scored on the candidates only, from parts computed once per chunk (the sparse
   products :math:`(r D^{-\beta}) \tilde P` for each :math:`\beta` of the grids, the projections of
   :math:`r` on every user side, and the eigenvectors' rows at the candidates). The low-rank terms of all
   points that share a pair of sides span a few vectors (ChebyCF's 9 points per :math:`\beta`: 3
   corrections and the ideal pass), so a chunk costs one batched ``(M, w) x (w, vectors)`` product per
   user for all points, with ``M`` candidates instead of all items;
3. each point's top-K among the candidates is measured against the split's relevant items.

A point's metric equals its full-ranking metric whenever its top-K lies within the candidates, which the
candidates are there to make true (``benchmarks/filters.py --check`` recomputes the chosen points' metrics
by full ranking). The point with the best metric wins (the first of equals, in grid order), per
filter; ``graph-filter`` is the filter whose winner is best. The cost of all this is part of the row's
seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from recsys.evaluation.filters import bspm, chebycf, gfcf
from recsys.evaluation.filters.spectral import ItemGraph
from recsys.evaluation.filters.terms import FilterScorer, Terms, is_basis, side_exponent
from recsys.evaluation.ranking import GroundTruth, ListMeasure
from recsys.inference.topk import excluded_pairs, mask_topk

logger = logging.getLogger(__name__)

FAMILIES: dict[str, ModuleType] = {gfcf.NAME: gfcf, chebycf.NAME: chebycf, bspm.NAME: bspm}
"""The filters, by row name, in the order ties between them are broken."""
BEST = "graph-filter"
"""The row of the best filter on the selection split."""


@dataclass(frozen=True)
class FilterConfig:
    """The item graph's basis, the grids and how they are searched.

    Args:
        rank: ``w``, eigenpairs of the item graph kept (randomized SVD).
        oversampling: Extra columns of the randomized SVD.
        power_iterations: Subspace iterations of the randomized SVD.
        selection_users: Users of the selection split the grids are measured on (a fixed random sample when
            the split has more).
        candidates: Items per user and pilot that the grid points are ranked among.
        pilot_rank: Eigenvectors the pilots' low-rank terms keep (they only propose candidates); None: all.
        batch_size: Sampled users per chunk of the search.
        metric: Selection metric, ``name@K``.
        seed: Seed of the randomized SVD and the user sample.
        gfcf: GF-CF's grid.
        chebycf: ChebyCF's grid.
        bspm: BSPM's grid.
    """

    rank: int = 512
    oversampling: int = 32
    power_iterations: int = 3
    selection_users: int = 4096
    candidates: int = 100
    pilot_rank: int | None = 128
    batch_size: int = 256
    metric: str = "recall@20"
    seed: int = 0
    gfcf: tuple[gfcf.Settings, ...] = gfcf.GRID
    chebycf: tuple[chebycf.Settings, ...] = chebycf.GRID
    bspm: tuple[bspm.Settings, ...] = bspm.GRID

    def grid(self, family: str) -> tuple[Any, ...]:
        """The grid of the filter called ``family``."""
        return {gfcf.NAME: self.gfcf, chebycf.NAME: self.chebycf, bspm.NAME: self.bspm}[family]


@dataclass(frozen=True)
class Choice:
    """One filter's best grid point on the selection sample, and every point's metric."""

    family: str
    settings: Any
    value: float
    grid: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Selection:
    """The search's outcome: each filter's choice, how it was measured, what it cost."""

    metric: str
    num_users: int
    candidates: int
    choices: dict[str, Choice]
    seconds: float

    def best(self) -> Choice:
        """The filter whose choice is best (the first of equals, in :data:`FAMILIES` order)."""
        order = [name for name in FAMILIES if name in self.choices]
        return max((self.choices[name] for name in order), key=lambda c: (c.value, -order.index(c.family)))


def build_graph(pairs: Tensor, num_users: int, num_items: int, cfg: FilterConfig) -> ItemGraph:
    """The item graph of ``pairs`` with ``cfg``'s basis."""
    return ItemGraph(
        pairs,
        num_users,
        num_items,
        rank=cfg.rank,
        oversampling=cfg.oversampling,
        power_iterations=cfg.power_iterations,
        seed=cfg.seed,
    )


def select(
    graph: ItemGraph,
    families: Sequence[str],
    truth: Tensor,
    exclude: Tensor,
    cfg: FilterConfig,
) -> Selection:
    """Measure every grid point of ``families`` on (a sample of) the users of ``truth``; see the module doc.

    Args:
        graph: The item graph fitted on the protocol's training data.
        families: Names from :data:`FAMILIES`.
        truth: Relevant pairs of the selection split, ``(2, E)``.
        exclude: Pairs never recommended there (the training data), ``(2, E')``.
        cfg: The grids and the search's settings.
    """
    start = time.perf_counter()
    k = int(cfg.metric.split("@")[1])
    num_users, num_items = graph.num_users, graph.num_items
    users = torch.unique(truth[0].cpu())
    if users.numel() > cfg.selection_users:
        g = torch.Generator().manual_seed(cfg.seed)
        users = torch.sort(users[torch.randperm(users.numel(), generator=g)[: cfg.selection_users]]).values
    keep = torch.zeros(num_users, dtype=torch.bool)
    keep[users] = True
    truth = truth.cpu()[:, keep[truth[0].cpu()]]
    gt = GroundTruth(truth, num_users, num_items, "cpu")
    masked = excluded_pairs(exclude.cpu()[:, keep[exclude[0].cpu()]], gt.users, num_users, num_items)

    points = [(name, s) for name in families for s in cfg.grid(name)]
    terms = [FAMILIES[name].terms(graph, s) for name, s in points]
    pilots = [
        _truncated(FAMILIES[name].terms(graph, FAMILIES[name].PAPER, compact=True), cfg) for name in families
    ]
    parts = _Parts(graph, terms, pilots, cfg.batch_size)
    measures = [ListMeasure(gt, (k,)) for _ in points]
    width = min(cfg.candidates, num_items)
    for first in range(0, len(gt), cfg.batch_size):
        last = min(first + cfg.batch_size, len(gt))
        parts.load(gt.users[first:last].numpy())
        tops = []
        for pilot in range(len(pilots)):
            scores = torch.from_numpy(parts.full(pilot))
            _, top = mask_topk(scores, masked.chunk(first, last), width)
            tops.append(top)
        cand = _union(tops)
        lists = parts.topk(terms, cand, k)
        for measure, index in zip(measures, lists, strict=True):
            measure.update(first, last, index)
    values = [measure.result().metrics[cfg.metric] for measure in measures]
    choices = {}
    for name in families:
        mine = [i for i, (family, _) in enumerate(points) if family == name]
        best = max(mine, key=lambda i: (values[i], -i))  # first of equals
        choices[name] = Choice(
            family=name,
            settings=points[best][1],
            value=values[best],
            grid={points[i][1].label(): values[i] for i in mine},
        )
    seconds = time.perf_counter() - start
    logger.info(
        "graph filters tuned on %d users (%d grid points, %d candidates per pilot) in %.1f s: %s",
        len(gt),
        len(points),
        width,
        seconds,
        ", ".join(f"{c.family} {c.value:.4f}" for c in choices.values()),
    )
    return Selection(cfg.metric, len(gt), width, choices, seconds)


def _truncated(terms: Terms, cfg: FilterConfig) -> Terms:
    """``terms`` with its low-rank weights cut to the first ``cfg.pilot_rank``: a cheaper pilot."""
    if cfg.pilot_rank is None:
        return terms
    low = tuple(replace(term, weights=term.weights[: cfg.pilot_rank]) for term in terms.low_rank)
    return replace(terms, low_rank=low)


def _span(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``weights`` ``(P, k)`` as ``mix @ span``: ``span`` ``(r, k)`` spans its rows, ``mix`` is ``(P, r)``."""
    u, s, vt = np.linalg.svd(weights.astype(np.float64), full_matrices=False)
    r = max(1, int((s > s[0] * 1e-9).sum())) if s.size and s[0] > 0 else 1
    return s[:r, None] * vt[:r], u[:, :r]


def _union(tops: list[Tensor]) -> Tensor:
    """The candidates of all pilots, ``(B, M)``: each user's items once, ``-1`` padding at the end.

    ``M`` is the largest number of distinct candidates of a user in the chunk (pilots agree on many).
    """
    cand = torch.sort(torch.cat(tops, dim=1), dim=1).values
    repeat = torch.zeros_like(cand, dtype=torch.bool)
    repeat[:, 1:] = cand[:, 1:] == cand[:, :-1]
    cand = torch.sort(cand.masked_fill_(repeat, -1), dim=1, descending=True).values
    width = max(int((cand >= 0).sum(dim=1).max()), 1) if cand.numel() else 1
    return cand[:, :width].contiguous()


class _Parts:
    r"""What the terms of many grid points share, computed once per chunk of users.

    Per chunk: the users' rows, the sparse products :math:`(r D^{-\beta}) \tilde P` of every
    :math:`\beta` in the terms (``(B, I)`` each), and the projections :math:`r U` of every user side
    (``(B, w)`` each). On candidates, the item sides are gathered at the candidates once per chunk (the
    eigenvectors for every basis side, and each named block), and every point's low-rank terms that share an
    item side are one batched product with them.
    """

    def __init__(self, graph: ItemGraph, terms: Sequence[Terms], pilots: Sequence[Terms], batch: int) -> None:
        self.graph = graph
        self.betas = sorted({beta for t in [*terms, *pilots] for beta, _ in t.sparse})
        self.pilots = [(t, FilterScorer(graph, t)) for t in pilots]
        self.merged = [t.merged_low_rank(graph.rank) for t in terms]
        self.users = sorted({user for merged in self.merged for user, _ in merged})
        self.items = sorted({item for merged in self.merged for _, item in merged})
        self.basis = torch.from_numpy(graph.basis)
        self.blocks = {
            name: torch.from_numpy(np.ascontiguousarray(graph.blocks[name].T))
            for name in self.items
            if not is_basis(name)
        }
        self.powers: dict[float, np.ndarray] = {}
        self.rows: sp.csr_matrix | None = None
        # Buffers reused for every chunk: a fresh (B, I) array per chunk costs its page faults again.
        size = (batch, graph.num_items)
        self.sparse = {beta: np.empty(size, dtype=np.float32) for beta in self.betas}
        self.scores = np.empty(size, dtype=np.float32)
        self.projections: dict[str, np.ndarray] = {}
        self.buffer = torch.empty(0)

    def power(self, exponent: float) -> np.ndarray:
        r""":math:`d_i^{\,e}` per item, float32, cached."""
        if exponent not in self.powers:
            self.powers[exponent] = self.graph.degree_power(exponent).astype(np.float32)
        return self.powers[exponent]

    def load(self, users: np.ndarray) -> None:
        """Compute the shared parts of ``users``."""
        graph, n = self.graph, len(users)
        rows = self.rows = graph.interactions[users]
        for beta, out in self.sparse.items():
            (rows @ sp.diags(self.power(-beta)) @ graph.item_item).toarray(out=out[:n])
        self.projections = {}
        for side in self.users:
            if is_basis(side):  # rows D^e V, scaling the rows' few entries rather than the basis
                left = rows @ sp.diags(self.power(side_exponent(side)))
                self.projections[side] = np.asarray(left @ graph.basis, dtype=np.float32)
            else:
                block = graph.blocks[side]
                projected = np.zeros((n, graph.rank), dtype=np.float32)
                projected[:, : block.shape[1]] = rows @ block
                self.projections[side] = projected

    def full(self, pilot: int) -> np.ndarray:
        """The exact scores of a pilot for the loaded users, ``(B, I)`` float32, as its FilterScorer's.

        The sparse part from the chunk's products, the identity part on the rows' entries, the low-rank part
        through the scorer's folded sides; into one reused buffer.
        """
        from scipy.linalg.blas import sgemm

        assert self.rows is not None
        terms, scorer = self.pilots[pilot]
        rows = self.rows.tocoo()
        n = self.rows.shape[0]
        out = self.scores[:n]
        tilt = self.power(terms.tilt) if terms.tilt else np.ones(self.graph.num_items, dtype=np.float32)
        out.fill(0.0)
        for beta, weight in terms.sparse:
            out += self.sparse[beta][:n] * (np.float32(weight) * self.power(beta) * tilt)
        if terms.identity:
            out[rows.row, rows.col] += np.float32(terms.identity) * tilt[rows.col]
        if scorer.user_side is not None and scorer.item_side is not None:
            left = np.asarray(self.rows @ scorer.user_side, dtype=np.float32)
            sgemm(1.0, scorer.item_side.T, left.T, beta=1.0, c=out.T, overwrite_c=True)
        return out

    def topk(self, terms: Sequence[Terms], cand: Tensor, k: int) -> list[Tensor]:
        """Each of ``terms``' top ``k`` among ``cand`` (``(B, M)`` item ids, -1 for none), as item ids."""
        assert self.rows is not None
        valid = cand >= 0
        items = cand.clamp(min=0)
        num_rows, width = items.shape
        num_items = self.graph.num_items
        rows = self.rows.tocoo()
        seen = torch.from_numpy(rows.row.astype(np.int64) * num_items + rows.col)
        own = torch.isin(torch.arange(num_rows).unsqueeze(1) * num_items + items, seen).float()  # r at C
        scores = torch.zeros(len(terms), num_rows, width)
        at = {beta: torch.from_numpy(self.sparse[beta][:num_rows]).gather(1, items) for beta in self.betas}
        for p, t in enumerate(terms):
            for beta, weight in t.sparse:
                scores[p].add_(at[beta] * torch.from_numpy(self.power(beta))[items], alpha=weight)
            if t.identity:
                scores[p].add_(own, alpha=t.identity)
        # Low-rank terms, one batched product per gathered item side: for every user u, side[C_u] (M, k)
        # times Z_u * v for the vectors v spanning the weights of the points with that (user side, item side)
        # pair (ChebyCF's 9 points per beta span 4: 3 corrections and the ideal pass), mixed back per point.
        basis = [item for item in self.items if is_basis(item)]
        for group in ([basis] if basis else []) + [[item] for item in self.items if not is_basis(item)]:
            side = self.basis if is_basis(group[0]) else self.blocks[group[0]]
            rank = side.size(1)
            columns: list[tuple[str, list[int], np.ndarray, int]] = []
            vectors: list[tuple[str, np.ndarray]] = []
            for user in self.users:
                for item in group:
                    points = [p for p in range(len(terms)) if (user, item) in self.merged[p]]
                    if not points:
                        continue
                    weights = np.stack([self.merged[p][(user, item)][:rank] for p in points])
                    span, mix = _span(weights)
                    columns.append((item, points, mix, len(vectors)))
                    vectors += [(user, v) for v in span]
            if not columns:
                continue
            left = torch.empty(num_rows, rank, len(vectors))
            for j, (user, vector) in enumerate(vectors):
                z = torch.from_numpy(self.projections[user][:, :rank])
                torch.mul(z, torch.from_numpy(vector.astype(np.float32)), out=left[:, :, j])
            size = num_rows * width * rank
            if self.buffer.numel() < size:  # reused: a fresh (B, M, w) tensor per chunk costs its page faults
                self.buffer = torch.empty(size)
            at_side = self.buffer[:size].view(num_rows * width, rank)
            torch.index_select(side, 0, items.view(-1), out=at_side)
            part = torch.bmm(at_side.view(num_rows, width, rank), left)  # (B, M, vectors)
            for item, points, mix, first in columns:
                sub = part[:, :, first : first + mix.shape[1]]
                if is_basis(item) and side_exponent(item):
                    sub = sub * torch.from_numpy(self.power(side_exponent(item)))[items].unsqueeze(2)
                mixed = sub @ torch.from_numpy(mix.T.astype(np.float32))  # (B, M, points)
                scores[points] += mixed.permute(2, 0, 1)
        for p, t in enumerate(terms):
            if t.tilt:
                scores[p].mul_(torch.from_numpy(self.power(t.tilt))[items])
        scores.masked_fill_(~valid, -torch.inf)
        top = min(k, width)
        values, position = torch.topk(scores, top, dim=2)
        index = torch.where(values > -torch.inf, items.expand(len(terms), -1, -1).gather(2, position), -1)
        if top < k:
            index = torch.cat([index, index.new_full((len(terms), num_rows, k - top), -1)], dim=2)
        return list(index.unbind(0))
