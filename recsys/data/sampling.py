"""Negative sampling, vectorised.

:class:`NegativeSampler` draws BPR's negatives, one per pair, for a whole epoch at once;
:class:`SharedNegatives` draws the items a softmax's batch shares and knows their expected counts (log-Q).
"""

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


SHARED_DISTRIBUTIONS = ("uniform", "popularity")


class SharedNegatives:
    r"""Negatives a softmax's batch shares: M items drawn per batch, and every item's expected count.

    A sampled softmax scores each row of a batch against one set of candidates: the batch's positive items
    (in-batch negatives) and M items drawn once for the batch, with replacement, uniformly or ∝ popularity
    (mixed negative sampling, Yang et al., WWW 2020). Its log-Q correction needs the expected number of
    copies of an item among those candidates, :math:`E[n_j] = B\,p_j + M\,r_j`: the B in-batch positives
    come ∝ the training popularity :math:`p_j = \deg(j) / E` (the epoch shuffles the pairs uniformly) and
    the M shared items from :math:`r_j` (:math:`1/I`, or :math:`p_j`).

    Args:
        popularity: :math:`p`, shape ``(I,)``, summing to 1; draws come out on its device.
        size: M.
        distribution: ``uniform`` or ``popularity``.
    """

    def __init__(self, popularity: Tensor, size: int, distribution: str = "uniform") -> None:
        if distribution not in SHARED_DISTRIBUTIONS or size < 0:
            msg = f"distribution {distribution!r} not in {SHARED_DISTRIBUTIONS}, or size {size} < 0"
            raise ValueError(msg)
        self.popularity, self.size, self.distribution = popularity, size, distribution

    @classmethod
    def from_pairs(
        cls, train: Tensor, num_items: int, size: int, distribution: str = "uniform"
    ) -> SharedNegatives:
        """From the ``(2, E)`` training pairs: :math:`p_j` is item j's share of them."""
        degree = torch.bincount(train[1], minlength=num_items).double()
        return cls((degree / degree.sum()).float(), size, distribution)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """M item ids, shape ``(M,)``, int64, with replacement; the same given the generator's state."""
        if self.distribution == "popularity" and self.size:
            return torch.multinomial(self.popularity, self.size, replacement=True, generator=generator)
        num_items, device = self.popularity.numel(), self.popularity.device
        return torch.randint(num_items, (self.size,), generator=generator, device=device)

    def log_expected_count(self, items: Tensor, in_batch: int) -> Tensor:
        r""":math:`\log E[n_j] = \log(B\,p_j + M\,r_j)` of each of ``items`` ``(C,)``, B = ``in_batch``."""
        p = self.popularity[items]
        shared = p if self.distribution == "popularity" else torch.full_like(p, 1.0 / self.popularity.numel())
        return (in_batch * p + self.size * shared).log()
