"""Uniform negative sampling, vectorised: one call draws the negatives of a whole epoch."""

from __future__ import annotations

import torch
from torch import Tensor

from recsys.errors import InputError


class NegativeSampler:
    """Draw, for each (user, positive) pair, an item the user has not interacted with in training.

    Membership is tested on sorted ``user * num_items + item`` keys with ``searchsorted``; the draws that hit
    a positive are redrawn until none does. Each round keeps a draw with probability at least
    ``1 - max_user_density``, so the loop ends quickly; it is bounded by ``max_rounds`` all the same.

    Args:
        train: ``(2, E)`` training pairs ``[user_idx; item_idx]``.
        num_items: Number of items.
        max_rounds: Redraw rounds before giving up.

    Raises:
        InputError: a user has interacted with every item (no negative exists for them).
    """

    def __init__(self, train: Tensor, num_items: int, max_rounds: int = 1000) -> None:
        self.num_items = num_items
        self.max_rounds = max_rounds
        self.keys = torch.unique(train[0] * num_items + train[1])  # sorted
        per_user = torch.bincount(train[0])
        if per_user.numel() and int(per_user.max()) >= num_items:
            user = int(per_user.argmax())
            msg = f"user_idx {user} has interacted with all {num_items} items; no negative can be sampled"
            raise InputError(msg)

    def is_positive(self, users: Tensor, items: Tensor) -> Tensor:
        """Boolean mask: is ``(users[b], items[b])`` a training interaction."""
        keys = users * self.num_items + items
        pos = torch.searchsorted(self.keys, keys).clamp_(max=self.keys.numel() - 1)
        return self.keys[pos] == keys

    def sample(self, users: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One uniform negative item per entry of ``users`` (same device as ``users``)."""
        items = torch.randint(self.num_items, users.shape, generator=generator, device=users.device)
        bad = self.is_positive(users, items).nonzero().squeeze(1)
        for _ in range(self.max_rounds):
            if bad.numel() == 0:
                return items
            items[bad] = torch.randint(self.num_items, bad.shape, generator=generator, device=users.device)
            bad = bad[self.is_positive(users[bad], items[bad])]
        msg = f"negative sampling did not converge in {self.max_rounds} rounds"
        raise RuntimeError(msg)

    def to(self, device: torch.device | str) -> NegativeSampler:
        """Move the key table to ``device``."""
        self.keys = self.keys.to(device)
        return self
