r"""GF-CF (Shen et al., CIKM 2021, arXiv 2108.07567): a linear filter plus an ideal low-pass.

.. math::

    s_u = \big( r_u \tilde P + \alpha\, r_u D_I^{-1/2} V_\eta V_\eta^\top D_I^{1/2} \big) D_I^{\gamma}

the normalised co-occurrence (:math:`\tilde P = \tilde R^\top \tilde R`, a linear low-pass) plus the smooth,
low-frequency part of the item graph (:math:`V_\eta`: the top :math:`\eta` right singular vectors of
:math:`\tilde R`), tilted towards popular items by :math:`\gamma` (not in the paper, where
:math:`\gamma = 0`, :math:`\alpha = 0.3`, :math:`\eta = 256` on gowalla). One sparse term and one low-rank
term (:mod:`recsys.evaluation.filters.terms`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys.evaluation.filters.spectral import ItemGraph
from recsys.evaluation.filters.terms import LowRank, Terms

NAME = "gf-cf"
DESCRIPTION = "GF-CF: linear filter plus an ideal low-pass (CIKM 2021)"


@dataclass(frozen=True)
class Settings:
    r"""One GF-CF filter; the defaults are the paper's gowalla setting.

    Attributes:
        ideal_rank: :math:`\eta` (capped at the graph's rank).
        ideal_weight: :math:`\alpha`.
        tilt: :math:`\gamma`.
    """

    ideal_rank: int = 256
    ideal_weight: float = 0.3
    tilt: float = 0.0

    def label(self) -> str:
        """The settings in a few words."""
        return f"eta {self.ideal_rank}, alpha {self.ideal_weight:g}, gamma {self.tilt:g}"


PAPER = Settings()


def grid(
    ideal_ranks: tuple[int, ...] = (256, 512),
    ideal_weights: tuple[float, ...] = (0.1, 0.3, 1.0),
    tilts: tuple[float, ...] = (0.0, 0.1, 0.2),
) -> tuple[Settings, ...]:
    """Every combination of the given values (default: 18 points)."""
    return tuple(
        Settings(eta, alpha, gamma) for eta in ideal_ranks for alpha in ideal_weights for gamma in tilts
    )


GRID = grid()


def terms(graph: ItemGraph, settings: Settings, *, compact: bool = False) -> Terms:
    """The linear filter (sparse) and the ideal low-pass (low-rank), tilted (``compact`` is moot)."""
    eta = min(settings.ideal_rank, graph.rank)
    ideal = LowRank(np.full(eta, settings.ideal_weight), user_exponent=0.5, item_exponent=0.5)
    return Terms(sparse=((0.0, 1.0),), low_rank=(ideal,), tilt=settings.tilt)
