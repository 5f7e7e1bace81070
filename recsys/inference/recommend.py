"""The plain recommender over an artifact: what ``recsys recommend`` and the HTTP service both call.

All scoring is one matrix product with the item embedding matrix, then the mask-and-top-k of evaluation
(:func:`recsys.inference.topk.mask_topk`), so a served list is the list the metrics measured: no loop over
items, no model code (the artifact's final embeddings are all it needs), no dataset directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import Tensor

from recsys.artifact import Artifact, load_artifact
from recsys.errors import InputError
from recsys.inference.retrieval import ItemIndex, build_index
from recsys.inference.topk import mask_topk


class UnknownIdError(InputError):
    """Raw ids that the artifact does not know; ``ids`` lists them (serving answers 404 with them)."""

    def __init__(self, kind: str, ids: Sequence[Any]) -> None:
        self.kind, self.ids = kind, list(ids)
        shown = ", ".join(repr(i) for i in self.ids[:10]) + (" ..." if len(self.ids) > 10 else "")
        super().__init__(f"unknown {kind} id(s): {shown}")


@dataclass(frozen=True)
class Recommendation:
    """Top-k items for one query: raw item ids with their scores, best first."""

    items: list[Any]
    scores: list[float]


class Recommender:
    """Top-k recommendations, new-user fold-in and similar items over one artifact.

    Args:
        artifact: A loaded artifact (see :func:`recsys.artifact.load_artifact`).
        device: Where the embeddings live and scoring runs.
        retrieval: ``exact`` (default: every item scored) or an approximate faiss index, ``ivf`` or
            ``hnsw``, for catalogues of millions of items. It serves :meth:`recommend` without an
            ``include`` list; fold-in, similar items and ``include`` stay exact.
        retrieval_options: Passed to :func:`recsys.inference.retrieval.build_index` (e.g. ``nprobe``).
    """

    def __init__(
        self,
        artifact: Artifact,
        device: torch.device | str = "cpu",
        retrieval: str = "exact",
        retrieval_options: dict[str, Any] | None = None,
    ) -> None:
        self.artifact = artifact
        self.device = torch.device(device)
        self.user_emb = artifact.user_emb.to(self.device)
        self.item_emb = artifact.item_emb.to(self.device)
        self.item_emb_t = self.item_emb.T.contiguous()
        normed = torch.nn.functional.normalize(self.item_emb, dim=1)
        self.item_unit_t = normed.T.contiguous()
        self._item_unit = normed
        self.user_ids = artifact.users["raw_id"]
        self.item_ids = artifact.items["raw_id"]
        self._user_index = _index(self.user_ids)
        self._item_index = _index(self.item_ids)
        indptr = torch.from_numpy(artifact.seen_indptr)
        self._seen_indptr = indptr
        self._seen_indices = torch.from_numpy(artifact.seen_indices)
        self.item_degree = torch.bincount(self._seen_indices, minlength=self.num_items).to(self.device)
        self._popular = torch.argsort(self.item_degree, descending=True, stable=True)
        self.retrieval = retrieval
        self.index: ItemIndex | None = None
        if retrieval != "exact":
            self.index = build_index(self.item_emb, retrieval, **(retrieval_options or {}))

    @classmethod
    def from_artifact(
        cls,
        path: Path | str,
        device: torch.device | str = "cpu",
        retrieval: str = "exact",
        retrieval_options: dict[str, Any] | None = None,
    ) -> Recommender:
        """Load the artifact at ``path`` (validated; nothing is unpickled)."""
        return cls(load_artifact(Path(path)), device, retrieval, retrieval_options)

    @property
    def num_users(self) -> int:
        """Users known to the model."""
        return int(self.user_emb.size(0))

    @property
    def num_items(self) -> int:
        """Items in the catalogue."""
        return int(self.item_emb.size(0))

    @property
    def model_version(self) -> str:
        """The artifact id: changes whenever the embeddings change."""
        return self.artifact.artifact_id

    def user_indices(self, user_ids: Sequence[Any]) -> list[int | None]:
        """Index of each raw user id, ``None`` where unknown."""
        return [self._user_index.get(_key(u)) for u in user_ids]

    def item_indices(self, item_ids: Sequence[Any]) -> list[int | None]:
        """Index of each raw item id, ``None`` where unknown."""
        return [self._item_index.get(_key(i)) for i in item_ids]

    def recommend(
        self,
        user_ids: Sequence[Any],
        k: int = 20,
        *,
        exclude_seen: bool = True,
        exclude: Sequence[Any] = (),
        include: Sequence[Any] | None = None,
    ) -> list[Recommendation]:
        """Top-``k`` items for each known user, in one matrix product.

        Args:
            user_ids: Raw user ids.
            k: List length; clipped to the number of items that can be recommended.
            exclude_seen: Drop each user's training items.
            exclude: Raw item ids never to recommend.
            include: When given, recommend only among these raw item ids.

        Raises:
            UnknownIdError: some user ids (or ``exclude``/``include`` item ids) are unknown.
        """
        indices = self.user_indices(user_ids)
        unknown = [u for u, i in zip(user_ids, indices, strict=True) if i is None]
        if unknown:
            raise UnknownIdError(kind="user", ids=unknown)
        rows = torch.tensor(indices, dtype=torch.long, device=self.device)
        if self.index is not None and include is None:
            return self._approximate(rows, k, exclude_seen, exclude)
        scores = self.user_emb[rows] @ self.item_emb_t
        seen = self._seen_keys(rows) if exclude_seen else None
        return self._top(scores, k, exclude, include, seen)

    def _approximate(
        self, rows: Tensor, k: int, exclude_seen: bool, exclude: Sequence[Any]
    ) -> list[Recommendation]:
        """Top-``k`` from the approximate index: over-fetch enough candidates to drop the excluded ones."""
        _check_k(k)
        assert self.index is not None
        banned = self._known_items(exclude) if exclude else None
        extra = len(exclude)
        if exclude_seen:
            row_of, cols = self._seen_pairs(rows)
            extra += int(torch.bincount(row_of, minlength=rows.numel()).max())  # the most items one row sees
        scores, items = self.index.search(self.user_emb[rows], min(k + extra, self.num_items))
        if exclude_seen:  # a candidate is dropped when (its row, item) is a training pair
            scores[torch.isin(_pair_keys(items, self.num_items), row_of * self.num_items + cols)] = -torch.inf
        if banned is not None:
            scores[torch.isin(items, banned)] = -torch.inf
        top_scores, order = torch.topk(scores, min(k, scores.size(1)), dim=1)
        return self._recommendations(top_scores, items.gather(1, order))

    def recommend_new_user(
        self, item_ids: Sequence[Any], k: int = 20, *, exclude_seen: bool = True, exclude: Sequence[Any] = ()
    ) -> tuple[Recommendation, list[Any]]:
        r"""Top-``k`` for a user the model has not seen, from the items they interacted with (fold-in).

        The user's embedding is one LightGCN aggregation step over the final item embeddings
        :math:`\bar e_i`, with the symmetric normalisation the new edges would get:

        .. math::
            e_u = \sum_{i \in I_u} \frac{\bar e_i}{\sqrt{|I_u|}\,\sqrt{d_i + 1}}

        where :math:`d_i` is item i's number of training interactions. No retraining happens.

        Returns:
            The recommendation and the raw item ids that were not known (reported, not silently dropped;
            the fold-in uses the known ones).

        Raises:
            InputError: no item id is known, so there is nothing to fold in.
        """
        indices = self.item_indices(item_ids)
        unknown = [i for i, x in zip(item_ids, indices, strict=True) if x is None]
        known = sorted({x for x in indices if x is not None})
        if not known:
            raise UnknownIdError(kind="item", ids=unknown or list(item_ids))
        items = torch.tensor(known, device=self.device)
        scores = (self.fold_in(items) @ self.item_emb_t).unsqueeze(0)
        seen = items if exclude_seen else None  # one row, so an item's key is the item itself
        return self._top(scores, k, exclude, None, seen)[0], unknown

    def fold_in(self, items: Tensor) -> Tensor:
        """The fold-in embedding of a new user who interacted with item indices ``items`` (unique)."""
        weights = (self.item_degree[items].float() + 1.0).rsqrt() / float(items.numel()) ** 0.5
        return weights @ self.item_emb[items]

    def similar_items(self, item_id: Any, k: int = 20) -> Recommendation:
        """The ``k`` items whose embeddings have the highest cosine similarity with ``item_id``'s (symmetric).

        Raises:
            UnknownIdError: the item id is unknown.
        """
        index = self.item_indices([item_id])[0]
        if index is None:
            raise UnknownIdError(kind="item", ids=[item_id])
        scores = (self._item_unit[index] @ self.item_unit_t).unsqueeze(0)
        return self._top(scores, k, (), None, torch.tensor([index], device=self.device))[0]

    def popular(self, k: int = 20, *, exclude: Sequence[Any] = ()) -> Recommendation:
        """The most interacted-with items (the fallback for unknown users); score = training count."""
        scores = self.item_degree.float().unsqueeze(0).clone()
        return self._top(scores, k, exclude, None)[0]

    def _seen_pairs(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Each row's training items as ``(position of the row in rows, item)`` pairs (no loop over users)."""
        cpu_rows = rows.cpu()
        starts, ends = self._seen_indptr[cpu_rows], self._seen_indptr[cpu_rows + 1]
        counts = ends - starts
        total = int(counts.sum())
        row_of = torch.repeat_interleave(torch.arange(len(cpu_rows)), counts)
        # position of each entry within its row's slice of the CSR: 0, 1, ..., count - 1
        within = torch.arange(total) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        cols = self._seen_indices[torch.repeat_interleave(starts, counts) + within]
        return row_of.to(self.device), cols.to(self.device)

    def _seen_keys(self, rows: Tensor) -> Tensor:
        """Each row's training items as flat keys ``position in rows * num_items + item`` (for masking)."""
        row_of, cols = self._seen_pairs(rows)
        return row_of * self.num_items + cols

    def _top(
        self,
        scores: Tensor,
        k: int,
        exclude: Sequence[Any],
        include: Sequence[Any] | None,
        masked: Tensor | None = None,
    ) -> list[Recommendation]:
        """The top ``k`` of ``(B, num_items)`` scores after the item filters and the per-row ``masked`` keys.

        The filters apply to every row (raw ids); ``masked`` (flat keys ``row * num_items + item``, e.g. the
        seen items) and the top-k are evaluation's own :func:`recsys.inference.topk.mask_topk`.
        """
        _check_k(k)
        if exclude:
            scores[:, self._known_items(exclude)] = -torch.inf
        if include is not None:
            allowed = torch.full((self.num_items,), -torch.inf, device=self.device)
            allowed[self._known_items(include)] = 0.0
            scores += allowed
        top_scores, top_items = mask_topk(scores, masked, min(k, self.num_items))
        return self._recommendations(top_scores, top_items)

    def _recommendations(self, top_scores: Tensor, top_items: Tensor) -> list[Recommendation]:
        """Rows of scores and item indices (best first) as raw ids, dropping the ``-inf`` slots."""
        out = []
        for row_scores, row_items in zip(top_scores.cpu(), top_items.cpu(), strict=True):
            keep = torch.isfinite(row_scores)  # k is clipped to what can actually be recommended
            ids = self.item_ids.gather(pl.Series(row_items[keep].numpy())).to_list()
            out.append(Recommendation(ids, row_scores[keep].tolist()))
        return out

    def _known_items(self, item_ids: Sequence[Any]) -> Tensor:
        indices = self.item_indices(item_ids)
        unknown = [i for i, x in zip(item_ids, indices, strict=True) if x is None]
        if unknown:
            raise UnknownIdError(kind="item", ids=unknown)
        return torch.tensor(indices, dtype=torch.long, device=self.device)


def _check_k(k: int) -> None:
    if k < 1:
        msg = f"k must be >= 1, got {k}"
        raise InputError(msg)


def _pair_keys(items: Tensor, num_items: int) -> Tensor:
    """``row * num_items + item`` for every entry of a ``(B, C)`` item matrix: one id per (row, item)."""
    rows = torch.arange(items.size(0), device=items.device).unsqueeze(1)
    return rows * num_items + items


def _key(raw: Any) -> str:
    """Lookup key of a raw id: its text, so ``42`` and ``"42"`` name the same integer id."""
    return str(raw)


def _index(raw_ids: pl.Series) -> dict[str, int]:
    return dict(zip(raw_ids.cast(pl.String).to_list(), np.arange(raw_ids.len()).tolist(), strict=True))
