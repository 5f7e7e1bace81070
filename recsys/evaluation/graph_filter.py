r"""The graph-filter baseline: a closed-form low-pass filter over the item-item graph, no training.

The GF-CF family (Shen et al., CIKM 2021). With :math:`\tilde R = D_U^{-1/2} R D_I^{-1/2}` (training
interactions, user and item degrees) and its top-``k`` right singular vectors :math:`V_k`, a user
:math:`r_u` scores items by

.. math::

    s_u = \left( r_u \tilde R^\top \tilde R
          + \alpha\, r_u D_I^{-1/2} V_k V_k^\top D_I^{1/2} \right) D_I^{\gamma}

a linear filter (normalised co-occurrence) plus an ideal low-pass filter (the smooth, low-frequency part of
the item graph), tilted towards popular items by :math:`\gamma`. The first term is one sparse product per
chunk of users; the second a dense ``(B, k) x (k, num_items)`` product into the score buffer. :math:`V_k`
comes from a randomized SVD (subspace iteration on the sparse :math:`\tilde R`, Halko et al. 2011).
:math:`\alpha` and :math:`\gamma` are selected on the selection split (valid under the honest protocol),
from a 3 x 3 grid, on a fixed sample of its users (:meth:`GraphFilter.select`).

It learns from the protocol's training interactions only, like the other rows of
:mod:`recsys.evaluation.baselines` (whose registry names it ``graph-filter``), and unlike them it costs a fit,
so it is asked for by name.
"""

from __future__ import annotations

import itertools
import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from recsys.evaluation.ranking import GroundTruth, ListMeasure
from recsys.inference.topk import auto_batch_size, topk_chunks

if TYPE_CHECKING:  # scipy is imported where the graph filter is built: `recsys evaluate` starts faster
    import scipy.sparse as sp

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GraphFilterConfig:
    r"""Hyperparameters of the graph filter and the grid it is tuned on.

    Args:
        rank: ``k``, singular vectors of the ideal low-pass part; at most a quarter of the smaller side of
            the interaction matrix (a filter that keeps most of the spectrum filters nothing).
        ideal_weights: Grid of :math:`\alpha`, the weight of the ideal low-pass part.
        popularity_exponents: Grid of :math:`\gamma`, the tilt towards popular items.
        power_iterations: Subspace iterations of the randomized SVD.
        oversampling: Extra columns of the randomized SVD.
        selection_users: Users of the selection split the grid is evaluated on (a fixed random sample when
            the split has more).
        metric: Selection metric.
        seed: Seed of the randomized SVD and the user sample.
    """

    rank: int = 512
    ideal_weights: tuple[float, ...] = (0.1, 0.3, 1.0)
    popularity_exponents: tuple[float, ...] = (0.0, 0.1, 0.2)
    power_iterations: int = 3
    oversampling: int = 32
    selection_users: int = 8192
    metric: str = "recall@20"
    seed: int = 0


@dataclass(frozen=True)
class Selection:
    """The grid point chosen on the selection split, and the metric of every point."""

    ideal_weight: float
    popularity_exponent: float
    metric: str
    value: float
    num_users: int
    grid: dict[str, float] = field(default_factory=dict)


class GraphFilter:
    """The fitted filter: the sparse item-item operator and the low-pass singular vectors (module docstring).

    Args:
        train: Training interactions, ``(2, E)``.
        num_users: Number of users.
        num_items: Number of items.
        config: Hyperparameters.
    """

    def __init__(
        self, train: Tensor, num_users: int, num_items: int, config: GraphFilterConfig | None = None
    ) -> None:
        import scipy.sparse as sp

        start = time.perf_counter()
        self.config = config or GraphFilterConfig()
        self.num_users, self.num_items = num_users, num_items
        users, items = train.cpu().numpy()
        ones = np.ones(users.size, dtype=np.float32)
        r = sp.csr_matrix((ones, (users, items)), shape=(num_users, num_items), dtype=np.float32)
        r.sum_duplicates()
        r.data[:] = 1.0
        self.interactions = r
        self.item_degree = np.asarray(r.sum(axis=0), dtype=np.float64).ravel()
        user_degree = np.asarray(r.sum(axis=1), dtype=np.float64).ravel()
        norm = (sp.diags(_power(user_degree, -0.5)) @ r @ sp.diags(_power(self.item_degree, -0.5))).astype(
            np.float32
        )
        self.item_item = (norm.T @ norm).tocsr()  # the linear filter's operator
        self.rank = max(1, min(self.config.rank, min(num_users, num_items) // 4))
        vt = _top_right_singular_vectors(norm.tocsr(), self.rank, self.config)  # (k, num_items)
        self.user_side = np.ascontiguousarray((vt * _power(self.item_degree, -0.5)).T, dtype=np.float32)
        self.item_side = np.ascontiguousarray(vt * _power(self.item_degree, 0.5), dtype=np.float32)
        self.seconds = time.perf_counter() - start
        logger.info(
            "graph filter: %d x %d, %s item-item non-zeros, rank %d, built in %.1f s",
            num_users,
            num_items,
            f"{self.item_item.nnz:,}",
            self.rank,
            self.seconds,
        )

    def scorer(self, ideal_weight: float, popularity_exponent: float) -> GraphFilterScorer:
        """The scorer of one grid point (CPU, float32)."""
        import scipy.sparse as sp

        tilt = _power(self.item_degree, popularity_exponent)
        linear = (self.item_item @ sp.diags(tilt.astype(np.float32))).tocsr()
        ideal = np.ascontiguousarray(self.item_side * (ideal_weight * tilt), dtype=np.float32)
        return GraphFilterScorer(self.interactions, linear, self.user_side, ideal)

    def components(self, users: np.ndarray, linear: np.ndarray, ideal: np.ndarray) -> None:
        """The two filters' scores for ``users`` without weights or tilt, into ``linear`` and ``ideal``."""
        rows = self.interactions[users]
        np.matmul(rows @ self.user_side, self.item_side, out=ideal)
        (rows @ self.item_item).toarray(out=linear)

    def select(self, truth: Tensor, exclude: Tensor, *, batch_size: int | None = None) -> Selection:
        """Evaluate the grid on (a sample of) the users of ``truth`` and return the best point.

        Each chunk of users gets the two filters' scores once; every grid point then mixes them into the
        score buffer and is ranked and measured as a full ranking (:func:`recsys.inference.topk.topk_chunks`).

        Args:
            truth: Relevant pairs of the selection split, ``(2, E)``.
            exclude: Pairs never recommended there (e.g. train), ``(2, E')``.
            batch_size: Users per chunk; default: :func:`recsys.inference.topk.auto_batch_size`.
        """
        cfg = self.config
        k = int(cfg.metric.split("@")[1])
        users = torch.unique(truth[0].cpu())
        if users.numel() > cfg.selection_users:
            g = torch.Generator().manual_seed(cfg.seed)
            users = torch.sort(
                users[torch.randperm(users.numel(), generator=g)[: cfg.selection_users]]
            ).values
        keep = torch.zeros(self.num_users, dtype=torch.bool)
        keep[users] = True
        truth = truth.cpu()[:, keep[truth[0].cpu()]]
        exclude = exclude.cpu()[:, keep[exclude[0].cpu()]]
        gt = GroundTruth(truth, self.num_users, self.num_items, "cpu")
        grid = list(itertools.product(cfg.ideal_weights, cfg.popularity_exponents))
        measures = [ListMeasure(gt, (k,)) for _ in grid]
        size = min(batch_size or auto_batch_size(self.num_items), max(len(gt), 1))
        linear, ideal, out = (torch.empty(size, self.num_items) for _ in range(3))
        for start in range(0, len(gt), size):
            end = min(start + size, len(gt))
            chunk = gt.users[start:end]
            self.components(chunk.numpy(), linear[: end - start].numpy(), ideal[: end - start].numpy())
            for (alpha, gamma), measure in zip(grid, measures, strict=True):
                mix = _Mix(linear, ideal, alpha, torch.from_numpy(_power(self.item_degree, gamma)).float())
                lists = topk_chunks(
                    mix,
                    chunk,
                    k,
                    num_users=self.num_users,
                    num_items=self.num_items,
                    exclude=exclude,
                    batch_size=size,
                    buffer=out,
                )
                for s, e, index in lists:
                    measure.update(start + s, start + e, index)
        values = [measure.result().metrics[cfg.metric] for measure in measures]
        best = max(range(len(grid)), key=lambda i: (values[i], -i))  # first of equals
        alpha, gamma = grid[best]
        return Selection(
            ideal_weight=alpha,
            popularity_exponent=gamma,
            metric=cfg.metric,
            value=values[best],
            num_users=len(gt),
            grid={f"alpha={a:g},gamma={c:g}": v for (a, c), v in zip(grid, values, strict=True)},
        )


class GraphFilterScorer:
    r"""Scores of one graph-filter grid point: the dense low-pass product, then the sparse linear part added.

    Args:
        interactions: ``(num_users, num_items)`` CSR of the training interactions.
        linear: The linear filter's item-item operator with the tilt applied, CSR.
        user_side: :math:`D_I^{-1/2} V_k`, ``(num_items, k)``.
        item_side: :math:`\alpha V_k^\top D_I^{1/2 + \gamma}`, ``(k, num_items)``.
    """

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(
        self, interactions: sp.csr_matrix, linear: sp.csr_matrix, user_side: np.ndarray, item_side: np.ndarray
    ) -> None:
        self.interactions, self.linear = interactions, linear
        self.user_side, self.item_side = user_side, item_side

    def __call__(self, users: Tensor, out: Tensor) -> None:
        """Write the scores of ``users`` into ``out`` (``(B, num_items)``, contiguous float32 on CPU)."""
        from scipy.linalg.blas import sgemm

        target = out.numpy()
        if not target.flags.c_contiguous:
            msg = "the graph filter writes into a C-contiguous score buffer"
            raise ValueError(msg)
        rows = self.interactions[users.cpu().numpy()]
        (rows @ self.linear).toarray(out=target)
        # target += (rows @ user_side) @ item_side, by BLAS with beta = 1 on the transposed (Fortran) views.
        sgemm(1.0, self.item_side.T, (rows @ self.user_side).T, beta=1.0, c=target.T, overwrite_c=True)


class _Mix:
    """``out = (linear + alpha * ideal) * tilt`` for the chunk already in the component buffers."""

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, linear: Tensor, ideal: Tensor, alpha: float, tilt: Tensor) -> None:
        self.linear, self.ideal, self.alpha, self.tilt = linear, ideal, alpha, tilt

    def __call__(self, users: Tensor, out: Tensor) -> None:
        n = users.numel()
        torch.add(self.linear[:n], self.ideal[:n], alpha=self.alpha, out=out)
        out.mul_(self.tilt)


def _power(values: np.ndarray, exponent: float) -> np.ndarray:
    """``values ** exponent`` where positive, 0 elsewhere (items or users without training interactions)."""
    out = np.zeros_like(values, dtype=np.float64)
    positive = values > 0
    out[positive] = values[positive] ** exponent
    return out


def _top_right_singular_vectors(matrix: sp.csr_matrix, rank: int, cfg: GraphFilterConfig) -> np.ndarray:
    """The top ``rank`` right singular vectors of a sparse matrix, ``(rank, n)``, by randomized SVD.

    Subspace iteration (Halko, Martinsson and Tropp 2011, algorithm 4.4) on torch's sparse CSR products,
    re-orthonormalised after every product by a Cholesky QR (float64 Gram matrix; Householder QR if the
    Gram matrix is not positive definite), then the small SVD through the eigenvectors of ``B B^T``.
    """
    rows, cols = matrix.shape
    width = min(rank + cfg.oversampling, rows, cols)
    a = _torch_csr(matrix)
    a_t = _torch_csr(matrix.T.tocsr())
    g = torch.Generator().manual_seed(cfg.seed)
    z = torch.randn(cols, width, generator=g)
    for _ in range(cfg.power_iterations):
        # One orthonormalisation per A^T A step is enough here: the singular values of a degree-normalised
        # interaction matrix lie in [0, 1], so a step stretches the kept directions by at most (1/s_k)^2.
        z = _orthonormal(a_t @ (a @ z))
    q = _orthonormal(a @ z)  # (rows, width), spans the top left singular space
    b = (a_t @ q).t().double().numpy()  # (width, cols) = q^T A
    # numpy's LAPACK: torch.linalg.eigh took seconds on a 200 x 200 matrix on the AMD test machine.
    eigenvalues, vectors = np.linalg.eigh(b @ b.T)
    top = np.argsort(eigenvalues)[::-1][:rank]
    sigma = np.sqrt(np.maximum(eigenvalues[top], 1e-30))
    return ((vectors[:, top].T @ b) / sigma[:, None]).astype(np.float32)


def _orthonormal(y: Tensor) -> Tensor:
    """Orthonormal basis of the columns of ``y``: Cholesky QR (Householder QR if ``y`` is rank-deficient)."""
    chol, info = torch.linalg.cholesky_ex((y.t() @ y).double())
    if int(info) != 0:
        return torch.linalg.qr(y).Q
    return torch.linalg.solve_triangular(chol.float().t(), y, upper=True, left=False)  # y = q L^T


def _torch_csr(matrix: sp.csr_matrix) -> Tensor:
    with warnings.catch_warnings():  # sparse CSR is marked beta; the product used here is stable
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(matrix.indptr.astype(np.int64)),
            torch.from_numpy(matrix.indices.astype(np.int64)),
            torch.from_numpy(matrix.data.astype(np.float32)),
            size=matrix.shape,
        )
