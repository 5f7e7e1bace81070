r"""ChebyCF (Kim, Sung, Han and Lee, SIGIR 2025, arXiv 2505.00552): a Chebyshev-interpolated low-pass filter.

On the rescaled Laplacian of the item graph :math:`\tilde L = 2(I - \tilde P) - I = I - 2\tilde P` (spectrum
in :math:`[-1, 1]`), a user's degree-normalised history is filtered by a polynomial, plus an ideal pass-band
boost, and the normalisation undone:

.. math::

    s_u = \Big[ (r_u D_I^{-\beta})\, h_K(\tilde L) + \alpha\, (r_u D_I^{-\beta}) V_\eta V_\eta^\top \Big]
          D_I^{\beta},
    \qquad h_K(x) = \sum_{k=0}^{K} c_k T_k(x)

with :math:`T_k` the Chebyshev polynomials (:math:`T_0 = 1`, :math:`T_1 = x`,
:math:`T_k = 2x T_{k-1} - T_{k-2}`) and :math:`h_K` the interpolant of a *plateau* at the :math:`K + 1`
Chebyshev nodes :math:`x_j = \cos\frac{(2j + 1)\pi}{2K + 2}`:

.. math::

    c_k = \frac{2 - \delta_{k0}}{K + 1} \sum_{j=0}^{K} g_j T_k(x_j), \qquad
    g_j = \rho_\varphi\!\Big(\cos\frac{(K - j')\pi}{K}\Big), \qquad
    \rho_\varphi(x) = \tfrac12 - \tfrac12 \operatorname{sign}(x) |x|^{\varphi}

where :math:`j'` numbers the nodes from the lowest frequency (:math:`x = -1`, kept) to the highest
(:math:`x = 1`, removed). The plateau's flatness :math:`\varphi` sets how sharp the cut-off at mid-spectrum
is; its values are taken at the Chebyshev extrema and assigned to the nodes in order, as the authors' code
does (sampling :math:`\rho_\varphi` at the nodes themselves gives a slightly smoother filter).
:math:`V_\eta` are the top :math:`\eta` eigenvectors of :math:`\tilde P` (the ideal pass-band), :math:`\beta`
the degree normalisation. As a function of :math:`\tilde P`'s eigenvalues the filter is
:math:`f(\lambda) = h_K(1 - 2\lambda) + \alpha [\lambda \text{ among the top } \eta]`, one low-rank term and
one sparse term (:mod:`recsys.evaluation.filters.spectral`), whatever the order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from recsys.evaluation.filters.spectral import ItemGraph
from recsys.evaluation.filters.terms import LowRank, Terms

NAME = "chebycf"
DESCRIPTION = "ChebyCF: Chebyshev-interpolated low-pass plus an ideal pass-band boost (SIGIR 2025)"


@dataclass(frozen=True)
class Settings:
    r"""One ChebyCF filter; the defaults are the authors' gowalla configuration.

    Attributes:
        order: :math:`K`, the polynomial order.
        flatness: :math:`\varphi`, the plateau's flatness.
        ideal_rank: :math:`\eta`, eigenvectors of the ideal pass-band (capped at the graph's rank).
        ideal_weight: :math:`\alpha`, the weight of the ideal pass-band.
        degree_exponent: :math:`\beta`, the degree normalisation.
    """

    order: int = 8
    flatness: float = 1.5
    ideal_rank: int = 512
    ideal_weight: float = 0.2
    degree_exponent: float = 0.4

    def label(self) -> str:
        """The settings in a few words."""
        return (
            f"K {self.order}, phi {self.flatness:g}, eta {self.ideal_rank}, alpha {self.ideal_weight:g}, "
            f"beta {self.degree_exponent:g}"
        )


PAPER = Settings()


def grid(
    orders: tuple[int, ...] = (8,),
    flatness: tuple[float, ...] = (1.5, 2.0, 4.0),
    ideal_ranks: tuple[int, ...] = (512,),
    ideal_weights: tuple[float, ...] = (0.1, 0.2, 0.3),
    degree_exponents: tuple[float, ...] = (0.2, 0.3, 0.4),
) -> tuple[Settings, ...]:
    """Every combination of the given values (the default: 27 points around the authors' setting)."""
    return tuple(
        Settings(k, phi, eta, alpha, beta)
        for k in orders
        for phi in flatness
        for eta in ideal_ranks
        for alpha in ideal_weights
        for beta in degree_exponents
    )


GRID = grid()


def coefficients(order: int, flatness: float) -> np.ndarray:
    """:math:`c_0 .. c_K` of the interpolated plateau (module docstring), ``(order + 1,)``."""
    j = np.arange(order + 1)
    nodes = np.cos((2 * (order - j) + 1) * math.pi / (2 * order + 2))  # ascending: x_0 near -1
    extrema = np.cos((order - j) * math.pi / order) if order > 0 else np.zeros(1)
    target = 0.5 - 0.5 * np.sign(extrema) * np.abs(extrema) ** flatness
    basis = np.polynomial.chebyshev.chebvander(nodes, order)  # (nodes, k): T_k(x_j)
    c = 2.0 / (order + 1) * (target @ basis)
    c[0] /= 2
    return c


def transfer(settings: Settings) -> np.ndarray:
    r""":math:`h_K(1 - 2\lambda)` on a grid of 11 eigenvalues 0, 0.1, .., 1 (for reports and tests)."""
    lam = np.linspace(0.0, 1.0, 11)
    return np.polynomial.chebyshev.chebval(1.0 - 2.0 * lam, coefficients(settings.order, settings.flatness))


def terms(graph: ItemGraph, settings: Settings, *, compact: bool = False) -> Terms:
    """The filter as one sparse, one identity and one low-rank term (one form: ``compact`` is moot)."""
    c = coefficients(settings.order, settings.flatness)
    response = graph.response(lambda lam: np.polynomial.chebyshev.chebval(1.0 - 2.0 * lam, c))
    weights = response.correction.copy()
    weights[: min(settings.ideal_rank, graph.rank)] += settings.ideal_weight
    beta = settings.degree_exponent
    return Terms(
        sparse=((beta, response.linear),),
        identity=response.identity,
        low_rank=(LowRank(weights, user_exponent=beta, item_exponent=beta),),
    )


def tail_error(graph: ItemGraph, settings: Settings) -> float:
    """The bound on the chord's error outside the basis (:attr:`~spectral.Response.tail_error`)."""
    c = coefficients(settings.order, settings.flatness)
    return graph.response(lambda lam: np.polynomial.chebyshev.chebval(1.0 - 2.0 * lam, c)).tail_error
