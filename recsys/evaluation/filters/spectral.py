r"""The item graph of the training interactions, its top eigenpairs, and functions of it applied through them.

With :math:`R \in \{0, 1\}^{U \times I}` the training interactions and :math:`D_U, D_I` the user and item
degrees,

.. math::

    \tilde R = D_U^{-1/2} R D_I^{-1/2}, \qquad \tilde P = \tilde R^\top \tilde R \quad (I \times I)

:math:`\tilde P` is symmetric positive semi-definite with eigenvalues :math:`\lambda \in [0, 1]` (1 for the
smoothest signal, :math:`D_I^{1/2} \mathbf 1`, on each connected part), and the normalised Laplacian of the
item graph is :math:`L = I - \tilde P`. Every filter of :mod:`recsys.evaluation.filters` scores with some
function :math:`f(\tilde P) = V f(\Lambda) V^\top` of it. Applied exactly, a polynomial of order ``K`` costs
``2K`` sparse products per chunk of users (16 for ChebyCF), and a general ``f`` the whole eigendecomposition.
Here ``f`` is exact on the top ``w`` eigenpairs :math:`(\theta_j, v_j)` (from a randomized SVD of
:math:`\tilde R`, :math:`\theta = \sigma^2`) and a chord on the rest of the spectrum:

.. math::

    f(\tilde P) \approx a I + b \tilde P + V_w \operatorname{diag}(f(\theta) - a - b\theta) V_w^\top,
    \qquad a = f(0), \quad b = \frac{f(\theta_w) - a}{\theta_w}

The eigenvalues left out lie in :math:`[0, \theta_w]`, where ``f`` is replaced by the straight line through
its end points; the error is at most :math:`\max_{\lambda \in [0, \theta_w]} |f(\lambda) - a - b\lambda|` in
operator norm (:attr:`Response.tail_error`). It is exact when ``f`` is linear (GF-CF's linear filter) and
when the basis holds every non-zero eigenvalue (the tests' small graphs). The chord also makes the
correction vanish at the cut, so the last and least accurate Ritz vectors of the randomized SVD carry
almost no weight. Whatever ``f`` is, a chunk of ``B`` users costs one sparse product with :math:`\tilde P`
and one ``(B, w) x (w, I)`` dense product.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Response:
    r"""A function of :math:`\tilde P` as :math:`a I + b \tilde P + V_w \operatorname{diag}(c) V_w^\top`.

    Attributes:
        identity: :math:`a = f(0)`.
        linear: :math:`b`, the chord's slope on :math:`[0, \theta_w]`.
        correction: :math:`c = f(\theta) - a - b\theta`, ``(w,)``.
        tail_error: :math:`\max_{\lambda \in [0, \theta_w]} |f(\lambda) - a - b\lambda|`; 0 when the basis
            holds every non-zero eigenvalue.
    """

    identity: float
    linear: float
    correction: np.ndarray
    tail_error: float


class ItemGraph:
    """The normalised interactions, the item-item operator and its top eigenpairs (module docstring).

    Args:
        pairs: Training interactions, ``(2, E)``, ``[user_idx; item_idx]``; duplicates count once.
        num_users: Number of users.
        num_items: Number of items.
        rank: ``w``, eigenpairs kept (at most ``min(num_users, num_items)``).
        oversampling: Extra columns of the randomized SVD (dropped after it).
        power_iterations: Subspace iterations of the randomized SVD.
        seed: Seed of the randomized SVD.
    """

    def __init__(
        self,
        pairs: Tensor,
        num_users: int,
        num_items: int,
        *,
        rank: int = 512,
        oversampling: int = 32,
        power_iterations: int = 3,
        seed: int = 0,
    ) -> None:
        start = time.perf_counter()
        self.num_users, self.num_items = num_users, num_items
        users, items = pairs.cpu().numpy()
        ones = np.ones(users.size, dtype=np.float32)
        r = sp.csr_matrix((ones, (users, items)), shape=(num_users, num_items), dtype=np.float32)
        r.sum_duplicates()
        r.data[:] = 1.0
        self.interactions = r
        self.item_degree = np.asarray(r.sum(axis=0), dtype=np.float64).ravel()
        user_degree = np.asarray(r.sum(axis=1), dtype=np.float64).ravel()
        norm = sp.diags(degree_power(user_degree, -0.5)) @ r @ sp.diags(self.degree_power(-0.5))
        self.norm = norm.astype(np.float32).tocsr()
        self.item_item = (self.norm.T @ self.norm).tocsr()
        self.rank = max(1, min(rank, num_users, num_items))
        vt, sigma = top_right_singular_vectors(self.norm, self.rank, oversampling, power_iterations, seed)
        self.basis = np.ascontiguousarray(vt.T)  # (num_items, w), orthonormal columns
        self.eigenvalues = np.minimum(sigma.astype(np.float64) ** 2, 1.0)  # (w,), descending
        # Every non-zero eigenvalue is kept (the rest are exactly 0, where the chord is exact).
        self.complete = self.rank >= min(num_users, num_items)
        self.blocks: dict[str, np.ndarray] = {}
        self.seconds = time.perf_counter() - start
        logger.info(
            "item graph: %d x %d, %s item-item non-zeros, rank %d (eigenvalues %.3f..%.3f), built in %.1f s",
            num_users,
            num_items,
            f"{self.item_item.nnz:,}",
            self.rank,
            self.eigenvalues[0],
            self.eigenvalues[-1],
            self.seconds,
        )

    def degree_power(self, exponent: float) -> np.ndarray:
        r""":math:`d_i^{\,e}` per item, float64, ``(num_items,)``; 0 for items without interactions."""
        return degree_power(self.item_degree, exponent)

    def response(self, f: Callable[[np.ndarray], np.ndarray]) -> Response:
        r"""``f`` (vectorised over eigenvalues in :math:`[0, 1]`) in the form of :class:`Response`."""
        theta = self.eigenvalues
        cut = float(theta[-1])
        identity = float(f(np.zeros(1))[0])
        if self.complete or cut <= 1e-12:  # nothing but zero eigenvalues outside the basis
            return Response(identity, 0.0, f(theta) - identity, 0.0)
        slope = (float(f(np.array([cut]))[0]) - identity) / cut
        tail = np.linspace(0.0, cut, 257)
        error = float(np.abs(f(tail) - identity - slope * tail).max())
        return Response(identity, slope, f(theta) - identity - slope * theta, error)


def degree_power(degree: np.ndarray, exponent: float) -> np.ndarray:
    """``degree ** exponent`` where positive, 0 elsewhere (users or items without interactions), float64."""
    out = np.zeros(degree.shape, dtype=np.float64)
    positive = degree > 0
    out[positive] = degree[positive].astype(np.float64) ** exponent
    return out


def top_right_singular_vectors(
    matrix: sp.csr_matrix, rank: int, oversampling: int = 32, power_iterations: int = 3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The top ``rank`` right singular vectors ``(rank, n)`` and singular values ``(rank,)`` of a matrix.

    Randomized SVD (Halko, Martinsson and Tropp 2011, algorithm 4.4): subspace iteration on torch's sparse
    CSR products, re-orthonormalised after every product by a Cholesky QR (float64 Gram matrix; Householder
    QR if the Gram matrix is not positive definite), then the small SVD through the eigenvectors of
    ``B B^T``. Exact (a dense SVD) when the requested width covers the smaller side.
    """
    rows, cols = matrix.shape
    width = min(rank + oversampling, rows, cols)
    if width >= min(rows, cols):  # the whole spectrum: a dense SVD is exact and cheaper
        _, sigma, vt = np.linalg.svd(matrix.toarray().astype(np.float64), full_matrices=False)
        return vt[:rank].astype(np.float32), sigma[:rank]
    a = _torch_csr(matrix)
    a_t = _torch_csr(matrix.T.tocsr())
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(cols, width, generator=g)
    for _ in range(power_iterations):
        # One orthonormalisation per A^T A step is enough here: the singular values of a degree-normalised
        # interaction matrix lie in [0, 1], so a step stretches the kept directions by at most (1/s_k)^2.
        z = _orthonormal(a_t @ (a @ z))
    q = _orthonormal(a @ z)  # (rows, width), spans the top left singular space
    b = (a_t @ q).t().double().numpy()  # (width, cols) = q^T A
    # numpy's LAPACK: torch.linalg.eigh took seconds on a 200 x 200 matrix on the AMD test machine.
    eigenvalues, vectors = np.linalg.eigh(b @ b.T)
    top = np.argsort(eigenvalues)[::-1][:rank]
    sigma = np.sqrt(np.maximum(eigenvalues[top], 1e-30))
    return ((vectors[:, top].T @ b) / sigma[:, None]).astype(np.float32), sigma


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
