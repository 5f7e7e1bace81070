"""Matrix factorisation trained with BPR: the no-propagation baseline."""

from __future__ import annotations

import torch
from torch import Tensor

from recsys.models.base import EmbeddingModel, Embeddings, Rows, Views


class MF(EmbeddingModel):
    """MF-BPR (Rendle et al., 2009): a user's score for an item is the dot product of their embeddings."""

    def forward(
        self,
        adj: Tensor | None = None,
        *,
        perturbed: bool = False,
        generator: torch.Generator | None = None,
        rows: Rows | None = None,
    ) -> Views:
        """The embedding tables, or their ``rows`` (``adj``, ``perturbed`` and ``generator`` are unused)."""
        if rows is None:
            return Views(Embeddings(self.user_emb, self.item_emb))
        return Views(self.split(self.embedding[rows.nodes], rows))
