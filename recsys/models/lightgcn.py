"""LightGCN and the two noise-based contrastive models built on it, SimGCL and XSimGCL."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from recsys.data.graph import gather_and_propagate_rows, propagate, propagate_rows
from recsys.models.base import EmbeddingModel, Embeddings, Rows, Views, perturb, uniform_noise


class Layers(NamedTuple):
    """Layers ``0..L`` of one propagation, as the model reads them and as computed for every node.

    ``output``: at the rows asked for, if any. ``whole``: every node's (all but the last layer when rows were
    asked for, since the last one is computed at those rows alone).
    """

    output: list[Tensor]
    whole: list[Tensor]


class LightGCN(EmbeddingModel):
    r"""LightGCN (He et al., SIGIR 2020): the mean of layers ``0..L`` of parameter-free propagation.

    .. math::
        E^{(l+1)} = \hat A E^{(l)}, \qquad E = \frac{1}{L+1} \sum_{l=0}^{L} E^{(l)}

    with :math:`\hat A = D^{-1/2} A D^{-1/2}` the normalised bipartite adjacency.

    Args:
        num_users: Number of users.
        num_items: Number of items.
        embedding_dim: Embedding size d.
        num_layers: Propagation layers L.

    Shapes:
        forward: ``adj`` ``(N, N)`` CSR -> ``Views(final=Embeddings((U, d), (I, d)), cl=None)``.
    """

    def __init__(self, num_users: int, num_items: int, embedding_dim: int = 64, num_layers: int = 2) -> None:
        super().__init__(num_users, num_items, embedding_dim)
        if num_layers < 1:
            msg = f"num_layers must be >= 1, got {num_layers}"
            raise ValueError(msg)
        self.num_layers = num_layers

    def layers(
        self,
        adj: Tensor,
        noise_eps: float = 0.0,
        generator: torch.Generator | None = None,
        rows: Rows | None = None,
    ) -> Layers:
        """Node embeddings of layers ``0..L``; with ``noise_eps > 0`` each propagated layer is perturbed.

        With ``rows``, the output layers are those nodes' only, shape ``(R, d)``, and the last layer (and
        its noise) is computed there alone; the layers below are computed whole, ``(N, d)``, because the
        last one reads their neighbours, and are kept in ``whole``.
        """
        whole = [self.ego()]
        for _ in range(1, self.num_layers if rows is not None else self.num_layers + 1):
            whole.append(_perturbed(propagate(adj, whole[-1]), noise_eps, generator))
        if rows is None:
            return Layers(whole, whole)
        below, last = gather_and_propagate_rows(adj, rows.nodes, whole[-1])
        output = [layer[rows.nodes] for layer in whole[:-1]] + [below, _perturbed(last, noise_eps, generator)]
        return Layers(output, whole)

    def forward(
        self,
        adj: Tensor | None,
        *,
        perturbed: bool = False,
        generator: torch.Generator | None = None,
        rows: Rows | None = None,
    ) -> Views:
        """Mean of layers ``0..L`` (``perturbed`` is ignored: plain LightGCN has no noise)."""
        assert adj is not None, "LightGCN needs the normalised adjacency"
        return Views(self.split(_mean(self.layers(adj, rows=rows).output), rows))

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, num_layers={self.num_layers})"


class SimGCL(LightGCN):
    r"""SimGCL (Yu et al., SIGIR 2022): LightGCN whose contrastive views add uniform noise at every layer.

    Following the authors' code, the output is the mean of layers ``1..L`` (layer 0 excluded), clean for
    the recommendation loss and perturbed (:math:`E^{(l)} + \mathrm{sign}(E^{(l)}) \odot \bar\Delta \epsilon`)
    for each of the two contrastive views.

    Args:
        noise_eps: Noise magnitude ε (0.1 in the authors' configuration).
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding_dim: int = 64,
        num_layers: int = 2,
        noise_eps: float = 0.1,
    ) -> None:
        super().__init__(num_users, num_items, embedding_dim, num_layers)
        self.noise_eps = noise_eps

    def forward(
        self,
        adj: Tensor | None,
        *,
        perturbed: bool = False,
        generator: torch.Generator | None = None,
        rows: Rows | None = None,
    ) -> Views:
        """Mean of layers ``1..L``, perturbed when asked (one call = one view)."""
        assert adj is not None, "SimGCL needs the normalised adjacency"
        layers = self.layers(adj, self.noise_eps if perturbed else 0.0, generator, rows).output
        return Views(self.split(_mean(layers[1:]), rows))

    def clean_and_perturbed(
        self, adj: Tensor, count: int, generator: torch.Generator | None = None, rows: Rows | None = None
    ) -> tuple[Embeddings, list[Embeddings]]:
        r"""The clean output and ``count`` perturbed ones, all from one differentiable propagation.

        Equal to one clean and ``count`` perturbed :meth:`forward` calls (same generator order), at about
        a third of the cost. Why it is exact: the noise is a constant for autograd, so a perturbed layer
        is the clean layer plus a constant offset,

        .. math::
            E'^{(l)} = E^{(l)} + \delta^{(l)}, \qquad
            \delta^{(l)} = \hat A \delta^{(l-1)} + \mathrm{sign}(E^{(l)} + \hat A \delta^{(l-1)})
            \odot \bar\Delta^{(l)} \epsilon, \qquad \delta^{(0)} = 0,

        and a view is the clean output plus the mean of its offsets. Only the clean propagation needs a
        backward; each view adds ``L - 1`` gradient-free sparse products for its offsets instead of a
        full propagation forward and backward (12 sparse products per SimGCL step become 6 for L = 2).
        With ``rows``, every output and the last layer's offsets are computed for those nodes only.
        """
        computed = self.layers(adj, rows=rows)
        clean = _mean(computed.output[1:])
        # Each layer where the offsets need it: whole below the last, at the rows for the last.
        layers = computed.whole[1:] if rows is None else computed.whole[1:] + computed.output[-1:]
        views = []
        for _ in range(count):
            with torch.no_grad():
                offsets: list[Tensor] = []
                delta: Tensor | None = None
                for depth, layer in enumerate(layers, start=1):
                    spread: Tensor | None = None
                    if delta is not None:
                        if rows is not None and depth == self.num_layers:
                            spread = propagate_rows(adj, rows.nodes, delta)
                        else:
                            spread = propagate(adj, delta)
                    base = layer if spread is None else layer + spread
                    delta = uniform_noise(base, self.noise_eps, generator)
                    if spread is not None:
                        delta.add_(spread)
                    offsets.append(delta)
                offset = _mean(_at(offsets, rows))
            views.append(self.split(clean + offset, rows))
        return self.split(clean, rows), views


class XSimGCL(LightGCN):
    r"""XSimGCL (Yu et al., TKDE 2023): one perturbed pass serves both the recommendation and the CL loss.

    The final embedding (mean of perturbed layers ``1..L``) is contrasted with the perturbed layer
    ``cl_layer`` (l*) of the same pass. Clean (``perturbed=False``) passes are for scoring.

    Args:
        noise_eps: Noise magnitude ε (0.2 in the authors' configuration).
        cl_layer: The layer l* used as the contrastive view (1 in the authors' configuration).
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding_dim: int = 64,
        num_layers: int = 2,
        noise_eps: float = 0.2,
        cl_layer: int = 1,
    ) -> None:
        super().__init__(num_users, num_items, embedding_dim, num_layers)
        if not 1 <= cl_layer <= num_layers:
            msg = f"cl_layer must be in [1, num_layers={num_layers}], got {cl_layer}"
            raise ValueError(msg)
        self.noise_eps, self.cl_layer = noise_eps, cl_layer

    def forward(
        self,
        adj: Tensor | None,
        *,
        perturbed: bool = False,
        generator: torch.Generator | None = None,
        rows: Rows | None = None,
    ) -> Views:
        """``Views(final, cl)``; ``cl`` is layer l* of the same pass (perturbed iff ``perturbed``)."""
        assert adj is not None, "XSimGCL needs the normalised adjacency"
        layers = self.layers(adj, self.noise_eps if perturbed else 0.0, generator, rows).output
        return Views(self.split(_mean(layers[1:]), rows), self.split(layers[self.cl_layer], rows))


def _at(layers: list[Tensor], rows: Rows | None) -> list[Tensor]:
    """The layers at ``rows`` (all of them when ``None``); the last one is already computed there only."""
    if rows is None:
        return layers
    return [layer[rows.nodes] for layer in layers[:-1]] + [layers[-1]]


def _perturbed(layer: Tensor, noise_eps: float, generator: torch.Generator | None) -> Tensor:
    """The layer plus SimGCL's noise (a constant for autograd); the layer itself when ``noise_eps`` is 0."""
    return perturb(layer, noise_eps, generator) if noise_eps else layer


def _mean(layers: list[Tensor]) -> Tensor:
    """Mean of the layers by summation: no ``(L, N, d)`` stacked copy, a cheaper backward."""
    total = layers[0]
    for layer in layers[1:]:
        total = total + layer
    return total / len(layers)
