"""What every model shares: the embedding tables, the output type, and the noise of SimGCL/XSimGCL."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn


class Embeddings(NamedTuple):
    """User and item embeddings, shapes ``(num_users, d)`` and ``(num_items, d)``."""

    user: Tensor
    item: Tensor


class Views(NamedTuple):
    """What a forward pass returns: the embeddings to score with, and the contrastive view (or ``None``).

    Every model returns this same type, so the training loop never branches on a model's return arity.
    """

    final: Embeddings
    cl: Embeddings | None = None


class Rows(NamedTuple):
    """A sorted subset of the nodes (users first), for a forward pass that computes only those rows.

    Args:
        nodes: Sorted unique node indices (users ``0..num_users-1``, then items), shape ``(R,)``.
        num_users: How many of ``nodes`` are users: the first ``num_users`` of them.
    """

    nodes: Tensor
    num_users: int


class EmbeddingModel(nn.Module):
    """Free user and item embeddings in one ``(num_users + num_items, d)`` table, users first.

    One table rather than two saves a concatenation (and its backward) on every propagation; ``user_emb``
    and ``item_emb`` are views of it. Initialised as the reference implementations do (Xavier uniform).
    """

    def __init__(self, num_users: int, num_items: int, embedding_dim: int = 64) -> None:
        super().__init__()
        if min(num_users, num_items, embedding_dim) < 1:
            sizes = f"{num_users}, {num_items}, {embedding_dim}"
            msg = f"num_users, num_items and embedding_dim must be >= 1, got {sizes}"
            raise ValueError(msg)
        self.num_users, self.num_items, self.embedding_dim = num_users, num_items, embedding_dim
        self.embedding = nn.Parameter(torch.empty(num_users + num_items, embedding_dim))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Xavier-uniform initialisation of the user and the item part, each with its own fan.

        The bounds match two separate ``(num_users, d)`` and ``(num_items, d)`` tables, as in SELFRec.
        """
        with torch.no_grad():
            nn.init.xavier_uniform_(self.embedding[: self.num_users], generator=generator)
            nn.init.xavier_uniform_(self.embedding[self.num_users :], generator=generator)

    @property
    def user_emb(self) -> Tensor:
        """Layer-0 user embeddings (a view), shape ``(num_users, d)``."""
        return self.embedding[: self.num_users]

    @property
    def item_emb(self) -> Tensor:
        """Layer-0 item embeddings (a view), shape ``(num_items, d)``."""
        return self.embedding[self.num_users :]

    def ego(self) -> Tensor:
        """Layer-0 node embeddings, users then items, shape ``(num_users + num_items, d)``."""
        return self.embedding

    def split(self, nodes: Tensor, rows: Rows | None = None) -> Embeddings:
        """Cut node embeddings back into users and items (views, no copy).

        Args:
            nodes: All nodes' embeddings, shape ``(N, d)``, or only ``rows``' embeddings, ``(R, d)``.
            rows: The nodes ``nodes`` holds, when not all of them.
        """
        if rows is None:
            user, item = torch.split(nodes, [self.num_users, self.num_items])
        else:
            user, item = nodes[: rows.num_users], nodes[rows.num_users :]
        return Embeddings(user, item)

    @torch.no_grad()
    def get_embedding(self, adj: Tensor | None) -> Embeddings:
        """The clean embeddings used for scoring (no noise, no gradient)."""
        views: Views = self(adj)
        return Embeddings(views.final.user.detach(), views.final.item.detach())

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.num_users}, {self.num_items}, embedding_dim={self.embedding_dim})"
        )


def uniform_noise(x: Tensor, eps: float, generator: torch.Generator | None = None) -> Tensor:
    """SimGCL's perturbation ``sign(x) * normalize(U(0, 1)) * eps``, row-wise.

    Each row of the result has L2 norm ``eps`` and the sign pattern of ``x``, so the perturbed embedding
    stays in the same hyperoctant (the noise rotates it by a bounded angle). The noise is a constant for
    autograd (``sign`` has zero gradient), so it is built in place without a graph: adding it costs the
    backward pass nothing. :func:`perturb` adds it to ``x`` in the same pass as its scaling.

    Args:
        x: Embeddings, shape ``(N, d)``.
        eps: The noise magnitude ε.
        generator: Optional generator for reproducible noise.

    Returns:
        The noise, shape ``(N, d)`` (not added to ``x``).
    """
    with torch.no_grad():
        noise, scale = _signed_draws(x, generator)
        return noise.mul_(scale.mul_(eps))


def perturb(x: Tensor, eps: float, generator: torch.Generator | None = None) -> Tensor:
    """``x + uniform_noise(x, eps, generator)``, the noise scaled and added in one pass (same draws)."""
    with torch.no_grad():
        noise, scale = _signed_draws(x, generator)
    return torch.addcmul(x, noise, scale.mul_(eps))


def _signed_draws(x: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Uniform draws with the signs of ``x`` (0 where ``x`` is 0), and each row's inverse norm.

    Why the uniforms come from 64-bit random integers: on CPU ``torch.rand`` of a gowalla-sized
    ``(70k, 64)`` table took 32-46 ms here (a quarter of an XSimGCL step), while ``torch.randint`` over the
    full int64 range fills the same bytes several times faster. Each int64 is read as four uniform uint16s in
    ``[0, 2^16)``; the scale is irrelevant because every row is normalised, and 16 bits of resolution are far
    finer than anything a random direction needs. The sign is applied with ``copysign`` rather than a
    multiplication by ``torch.sign(x)``, which on CPU cost more than drawing the numbers. ``sign(0) = 0``:
    an isolated node's zero row gets no noise; the pass that finds zeros is skipped when a count of
    non-zeros says there are none.
    """
    rows, dim = x.shape
    bits = torch.randint(
        -(2**63), 2**63 - 1, (rows, (dim + 3) // 4), generator=generator, device=x.device, dtype=torch.int64
    )
    noise = bits.view(torch.uint16)[:, :dim].to(x.dtype)
    scale = noise.norm(dim=-1, keepdim=True).clamp_min_(1e-12).reciprocal_()
    torch.copysign(noise, x, out=noise)
    if int(torch.count_nonzero(x)) < x.numel():
        noise.masked_fill_(x == 0, 0.0)
    return noise, scale
