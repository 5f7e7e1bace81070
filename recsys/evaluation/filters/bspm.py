r"""BSPM (Choi, Hong, Lee, Park and Park, SIGIR 2023, arXiv 2211.09324): blurring, then sharpening.

A user's history is blurred by the heat equation on the item graph, an ideal low-pass of it is merged in
(the early-merge variant, BSPM-EM), and the sum is sharpened by the reverse process:

.. math::

    \frac{d s}{d t} = -s L = s (\tilde P - I), \quad s(0) = r_u, \quad t \in [0, T_b]
    \qquad \text{(blurring)}

.. math::

    \frac{d s}{d t} = -s \tilde P, \quad
    s(0) = s_b(T_b) + \beta\, r_u D_I^{-1/2} V_\eta V_\eta^\top D_I^{1/2}, \quad t \in [0, T_s]
    \qquad \text{(sharpening)}

The sharpening equation is the reverse heat equation :math:`ds/dt = s L` up to the factor :math:`e^{-t}` on
every item (:math:`-\tilde P = L - I`), which leaves the ranking unchanged. Both are linear, so ``K`` steps of
size :math:`\tau = T / K` of a one-step solver multiply the signal by a polynomial of :math:`\tilde P`:
:math:`R(\tau g(\tilde P))^K` with :math:`g(\lambda) = \lambda - 1` (blurring) or :math:`-\lambda`
(sharpening) and the solver's stability function :math:`R(z) = 1 + z` (Euler),
:math:`1 + z + z^2/2 + z^3/6 + z^4/24` (RK4), or :math:`e^z` (``exact``). With :math:`B` and :math:`H` the
blurring and sharpening polynomials:

.. math::

    s_u = r_u B(\tilde P) H(\tilde P) + \beta\, (r_u D_I^{-1/2} V_\eta)\,
          \big(V_\eta^\top D_I^{1/2} H(\tilde P)\big)

The first term is a function of :math:`\tilde P` (one sparse and one low-rank term,
:mod:`recsys.evaluation.filters.spectral`); the second a low-rank term whose item side
:math:`V_\eta^\top D_I^{1/2} H(\tilde P)` is computed once per sharpening setting. The authors' gowalla
setting: one Euler step of :math:`T_b = 1` (so :math:`B(\tilde P) = \tilde P`), one RK4 step of
:math:`T_s = 2.5`, :math:`\beta = 0.2`, :math:`\eta = 448`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from recsys.evaluation.filters.spectral import ItemGraph
from recsys.evaluation.filters.terms import LowRank, Terms

NAME = "bspm"
DESCRIPTION = "BSPM-EM: blurring, ideal low-pass merged, then sharpening, as discretised ODEs (SIGIR 2023)"
SOLVERS = ("euler", "rk4", "exact")


@dataclass(frozen=True)
class Settings:
    r"""One BSPM-EM filter; the defaults are the authors' gowalla configuration.

    Attributes:
        blur_time: :math:`T_b`.
        blur_steps: Solver steps over :math:`T_b`.
        blur_solver: ``euler``, ``rk4`` or ``exact``.
        sharpen_time: :math:`T_s`.
        sharpen_steps: Solver steps over :math:`T_s`.
        sharpen_solver: ``euler``, ``rk4`` or ``exact``.
        ideal_rank: :math:`\eta` (capped at the graph's rank).
        ideal_weight: :math:`\beta`, the weight of the ideal low-pass merged before sharpening.
    """

    blur_time: float = 1.0
    blur_steps: int = 1
    blur_solver: str = "euler"
    sharpen_time: float = 2.5
    sharpen_steps: int = 1
    sharpen_solver: str = "rk4"
    ideal_rank: int = 448
    ideal_weight: float = 0.2

    def label(self) -> str:
        """The settings in a few words."""
        return (
            f"blur {self.blur_solver} {self.blur_steps}x to {self.blur_time:g}, sharpen "
            f"{self.sharpen_solver} {self.sharpen_steps}x to {self.sharpen_time:g}, eta {self.ideal_rank}, "
            f"beta {self.ideal_weight:g}"
        )


PAPER = Settings()


def grid(
    sharpen_times: tuple[float, ...] = (1.5, 2.0, 2.5, 3.0),
    ideal_weights: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4),
    ideal_ranks: tuple[int, ...] = (448,),
    blur_times: tuple[float, ...] = (1.0,),
) -> tuple[Settings, ...]:
    """Every combination of the given values, other settings the authors' (default: 16 points)."""
    return tuple(
        Settings(blur_time=tb, sharpen_time=ts, ideal_rank=eta, ideal_weight=beta)
        for tb in blur_times
        for ts in sharpen_times
        for eta in ideal_ranks
        for beta in ideal_weights
    )


GRID = grid()


def stability(solver: str, z: np.ndarray) -> np.ndarray:
    r"""The factor one step of ``solver`` applies to :math:`ds/dt = g s` with :math:`z = \tau g`."""
    if solver == "euler":
        return 1.0 + z
    if solver == "rk4":
        return 1.0 + z + z**2 / 2 + z**3 / 6 + z**4 / 24
    if solver == "exact":
        return np.exp(z)
    msg = f"unknown ODE solver {solver!r}; expected one of {', '.join(SOLVERS)}"
    raise ValueError(msg)


def blur(settings: Settings, lam: np.ndarray) -> np.ndarray:
    r""":math:`B(\lambda)`: the blurring solver's polynomial at eigenvalues ``lam`` of :math:`\tilde P`."""
    tau = settings.blur_time / settings.blur_steps
    return stability(settings.blur_solver, tau * (lam - 1.0)) ** settings.blur_steps


def sharpen(settings: Settings, lam: np.ndarray) -> np.ndarray:
    r""":math:`H(\lambda)`: the sharpening solver's polynomial at eigenvalues ``lam``."""
    tau = settings.sharpen_time / settings.sharpen_steps
    return stability(settings.sharpen_solver, -tau * lam) ** settings.sharpen_steps


def terms(graph: ItemGraph, settings: Settings, *, compact: bool = False) -> Terms:
    r"""The blurred-and-sharpened signal and the sharpened ideal low-pass, as sparse and low-rank terms.

    The first term is :math:`q(\tilde P)` with :math:`q = B H`, in the form of
    :meth:`~recsys.evaluation.filters.spectral.ItemGraph.response`. In the second, with
    :math:`X = V_\eta^\top D_I^{1/2}` and :math:`H(\tilde P) \approx a I + b \tilde P +
    V \operatorname{diag}(c) V^\top` the same way, the item side is
    :math:`G = X H(\tilde P) \approx a X + b X \tilde P + (X V) \operatorname{diag}(c) V^\top`.
    ``compact``: :math:`G` computed (one ``(eta, I)`` block per sharpening setting, the cheapest to score);
    otherwise three low-rank terms whose sides (:math:`X \tilde P`, and :math:`D_I^{-1/2} V_\eta X V`) do
    not depend on the sharpening setting, so that a grid over it shares them.
    """
    main = graph.response(lambda lam: blur(settings, lam) * sharpen(settings, lam))
    sharp = graph.response(lambda lam: sharpen(settings, lam))
    eta = min(settings.ideal_rank, graph.rank)
    smoothed, mixed = f"bspm-xp:{eta}", f"bspm-xv:{eta}"
    name = f"bspm-ideal:{eta}:{settings.sharpen_solver},{settings.sharpen_steps},{settings.sharpen_time!r}"
    if smoothed not in graph.blocks or (compact and name not in graph.blocks):
        x = (graph.basis[:, :eta] * graph.degree_power(0.5).astype(np.float32)[:, None]).T
        x = np.ascontiguousarray(x, dtype=np.float32)
    if smoothed not in graph.blocks:  # X P = (X R^T) R, through the sparse R; X V, (eta, w)
        graph.blocks[smoothed] = np.ascontiguousarray(
            np.asarray(graph.norm.T @ (graph.norm @ x.T)).T, dtype=np.float32
        )
        graph.blocks[mixed] = np.ascontiguousarray(x @ graph.basis, dtype=np.float32)
    beta = settings.ideal_weight
    if compact:
        if name not in graph.blocks:
            side = sharp.identity * x + sharp.linear * graph.blocks[smoothed]
            side += (graph.blocks[mixed] * sharp.correction.astype(np.float32)) @ graph.basis.T
            graph.blocks[name] = np.ascontiguousarray(side, dtype=np.float32)
        ideal: tuple[LowRank, ...] = (LowRank(np.full(eta, beta), user_exponent=0.5, item=name),)
    else:
        projected = f"bspm-dxv:{eta}"  # D^{-1/2} V_eta (X V), (I, w): the user side of the last term
        if projected not in graph.blocks:
            left = graph.basis[:, :eta] * graph.degree_power(-0.5).astype(np.float32)[:, None]
            graph.blocks[projected] = np.ascontiguousarray(left @ graph.blocks[mixed], dtype=np.float32)
        ones = np.ones(eta)
        ideal = (
            LowRank(beta * sharp.identity * ones, user_exponent=0.5, item_exponent=0.5),
            LowRank(beta * sharp.linear * ones, user_exponent=0.5, item=smoothed),
            LowRank(beta * sharp.correction, user=projected),
        )
    return Terms(
        sparse=((0.0, main.linear),), identity=main.identity, low_rank=(LowRank(main.correction), *ideal)
    )


def check(settings: Settings) -> None:
    """Raise ``ValueError`` for an unknown solver or a non-positive time or step count."""
    for solver in (settings.blur_solver, settings.sharpen_solver):
        stability(solver, np.zeros(1))
    if min(settings.blur_steps, settings.sharpen_steps) < 1 or not (
        math.isfinite(settings.blur_time) and math.isfinite(settings.sharpen_time)
    ):
        msg = f"BSPM needs at least one solver step and finite times (got {settings})"
        raise ValueError(msg)
