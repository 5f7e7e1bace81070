"""Warm start: begin training on a new dataset version from a trained artifact, matching ids by raw id.

A new dataset version renumbers users and items (indices follow the sorted raw ids of *its* training
graph), so rows are matched through the raw ids of the artifact's ``users.parquet``/``items.parquet`` and
the dataset's own id maps, never by index. What starts where (layer 0: the trained parameters in
``model.pt``, not the propagated final embeddings of ``embeddings.pt``, since layer 0 is what the model
learns and propagation recomputes the rest over the new graph):

1. **Known** users and items (same raw id in the artifact): the artifact's layer-0 row.
2. **New items**: the mean of the layer-0 rows of their training neighbours that are known users. An item
   whose neighbours are all new keeps the model's normal random initialisation.
3. **New users**, after the items: the mean of the layer-0 rows of their training items that carry learned
   information (known items, and new items set by rule 2). A user with none keeps the random init, so every
   row starts either from what was learned or from the usual random init, never from a blend of noise.

Why a plain mean and not serving's fold-in (``Recommender.fold_in``, a LightGCN-normalised sum
``Σ ē_i / sqrt(|I_u| (d_i + 1))``): that formula builds a *final*, propagated embedding, one aggregation
step, whose norm shrinks with item degrees. A warm-start row is a layer-0 parameter trained next to the
known users' layer-0 rows; the mean keeps it on their scale and in the direction of the user's items, and
needs no degree from the old graph. The optimiser (Adam) starts fresh: its moments belong to the old graph.

``shrink`` (``--init-shrink``, default 1: off) multiplies the parent's rows, and so every row derived from
them, before training. A warm start from a model selected at its peak on the older interactions keeps
fitting those until it overfits them; shrinking the weights towards zero first restores much of what it
loses (Ash & Adams, "On Warm-Starting Neural Network Training", NeurIPS 2020; measured on gowalla in
``docs/benchmarks.md``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import polars as pl
import torch
from torch import Tensor

from recsys.artifact import Artifact, load_artifact, load_state_dict
from recsys.atomic import atomic_write_text
from recsys.config import DEFAULT_PRESET, PRESETS, WARM_PATIENCE_STEPS, TrainConfig, config_from_dict
from recsys.data.dataset import Dataset
from recsys.data.graph import NodeOrder
from recsys.data.protocol import training_splits
from recsys.errors import InputError, first_line
from recsys.models.base import EmbeddingModel, Embeddings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Parent:
    """A trained artifact to start from: the loaded artifact and its layer-0 embeddings.

    Args:
        artifact: The artifact, validated as serving loads it.
        user: Layer-0 user embeddings, ``(num_users, d)``, in the artifact's user order.
        item: Layer-0 item embeddings, ``(num_items, d)``.
        shrink: The factor ``user`` and ``item`` were multiplied by (1: as trained).
    """

    artifact: Artifact
    user: Tensor
    item: Tensor
    shrink: float = 1.0

    @property
    def artifact_id(self) -> str:
        """The parent's artifact id."""
        return self.artifact.artifact_id

    @property
    def config_path(self) -> Path:
        """The parent's ``config.json``, named in errors about its values."""
        return self.artifact.path / "config.json"

    def record(self) -> dict[str, Any]:
        """What a child artifact records about its parent (``config.json`` ``parent``): its lineage."""
        config = self.artifact.config
        return {
            "artifact_id": self.artifact_id,
            "path": str(self.artifact.path.resolve()),
            "trained_at": config.get("trained_at"),
            "model": self.artifact.model_name,
            "dataset_sha256": config.get("dataset", {}).get("meta_sha256"),
            "shrink": self.shrink,
        }

    def inherit_config(self, overrides: dict[str, Any], source: str = "options") -> TrainConfig:
        """The child's config: the parent's resolved config, then ``overrides`` (a config file, then flags).

        A preset named in ``overrides`` replaces the settings the parent took from its preset (unless
        ``overrides`` sets them too). The model must stay the same: the rows are that model's parameters.
        The stopping rule is the exception to "the parent's": a warm start stops after at most
        :data:`WARM_PATIENCE_STEPS` without a better metric and has no ``min_steps``, unless ``overrides``
        says otherwise.

        Raises:
            InputError: another model or embedding size, or a value the config does not accept.
        """
        trained = dict(self.artifact.config.get("config") or {})
        if not trained:
            msg = f"{self.config_path}: no 'config' object (the resolved training config) to start from"
            raise InputError(msg)
        model = overrides.get("model", trained.get("model"))
        if model != self.artifact.model_name:
            msg = (
                f"warm start keeps the model: {self.artifact.path} is a {self.artifact.model_name} "
                f"artifact, not {model!r} (from {source})"
            )
            raise InputError(msg)
        if "preset" in overrides:
            preset = PRESETS.get(trained.get("preset", DEFAULT_PRESET), {})
            trained = {k: v for k, v in trained.items() if k not in preset}
        patience = min(int(trained.get("patience_steps", WARM_PATIENCE_STEPS)), WARM_PATIENCE_STEPS)
        stopping = {"patience_steps": patience, "min_steps": 0}
        cfg = config_from_dict({**trained, **stopping, **overrides}, source=f"{self.config_path} + {source}")
        if cfg.embedding_dim != self.user.size(1):
            msg = (
                f"warm start keeps the embedding size: {self.artifact.path} has d = {self.user.size(1)}, "
                f"not embedding_dim {cfg.embedding_dim} (from {source})"
            )
            raise InputError(msg)
        return cfg


def load_parent(path: Path, shrink: float = 1.0) -> Parent:
    """Load an artifact to warm-start from: validated as serving loads it, plus its layer-0 table.

    Args:
        path: The artifact directory.
        shrink: Multiply the layer-0 rows by this, in ``(0, 1]`` (module docstring).

    Raises:
        InputError: a missing or broken artifact, a ``model.pt`` without the ``embedding`` table, or a
            shrink outside ``(0, 1]``.
    """
    if not 0.0 < shrink <= 1.0:
        msg = f"--init-shrink {shrink}: expected a factor in (0, 1] (1 keeps the parent's rows as trained)"
        raise InputError(msg)
    artifact = load_artifact(Path(path))
    table = load_state_dict(artifact.path).get("embedding")
    num_users, num_items = artifact.users.height, artifact.items.height
    if table is None or table.dim() != 2 or table.size(0) != num_users + num_items:
        shape = None if table is None else tuple(table.shape)
        msg = (
            f"{artifact.path / 'model.pt'}: expected an 'embedding' tensor of shape "
            f"({num_users} + {num_items}, d) (layer 0, users then items), got {shape}"
        )
        raise InputError(msg)
    user, item = (table.float() * shrink).split([num_users, num_items])
    return Parent(artifact, user, item, shrink)


def match_ids(known: pl.Series, new: pl.Series) -> Tensor:
    """For each raw id of ``new``, the position of the same raw id in ``known``, or -1.

    Ids are compared as text, as serving looks them up: a version whose ids were all integers and one that
    added a string id (so its ids are read as strings) still match.
    """
    known_df = pl.DataFrame({"key": known.cast(pl.String)}).with_row_index("match")
    joined = (
        pl.DataFrame({"key": new.cast(pl.String)})
        .join(known_df, on="key", how="left", maintain_order="left")
        .get_column("match")
    )
    return torch.from_numpy(joined.cast(pl.Int64).fill_null(-1).to_numpy().copy())


def raw_ids(dataset: Dataset) -> tuple[pl.Series, pl.Series]:
    """The raw ids of a dataset directory's users and items, in index order (its id maps).

    Raises:
        InputError: the dataset was not read from a directory, or its id maps are unreadable.
    """
    if dataset.path is None:
        msg = "matching by raw id needs a dataset directory (its users.parquet and items.parquet)"
        raise InputError(msg)
    try:
        users = pl.read_parquet(dataset.path / "users.parquet").sort("user_idx")["raw_id"]
        items = pl.read_parquet(dataset.path / "items.parquet").sort("item_idx")["raw_id"]
    except (OSError, pl.exceptions.PolarsError) as exc:
        msg = f"{dataset.path}: cannot read the id maps (users.parquet, items.parquet): {first_line(exc)}"
        raise InputError(msg) from exc
    return users, items


class Sources(NamedTuple):
    """Where each row of a warm start comes from (boolean masks over the new dataset's rows).

    Args:
        known_users: Users of the parent (their layer-0 row).
        folded_users: New users with an informed training item (the mean of those items' rows).
        known_items: Items of the parent.
        neighbour_items: New items with a known training neighbour (the mean of those users' rows).
    """

    known_users: Tensor
    folded_users: Tensor
    known_items: Tensor
    neighbour_items: Tensor

    def counts(self) -> dict[str, int]:
        """Rows per source, the random ones included (recorded in the artifact and logged)."""
        users, items = self.known_users.numel(), self.known_items.numel()
        known_u, folded = int(self.known_users.sum()), int(self.folded_users.sum())
        known_i, neighbours = int(self.known_items.sum()), int(self.neighbour_items.sum())
        return {
            "users_known": known_u,
            "users_folded_in": folded,
            "users_random": users - known_u - folded,
            "items_known": known_i,
            "items_from_neighbours": neighbours,
            "items_random": items - known_i - neighbours,
        }


def warm_start_sources(user_match: Tensor, item_match: Tensor, pairs: Tensor) -> Sources:
    """Which rule sets each row (module docstring); the masks :func:`warm_start_embeddings` fills by.

    Args:
        user_match: Parent row of each user of the new dataset, -1 if new, ``(U,)`` (:func:`match_ids`).
        item_match: Parent row of each item, -1 if new, ``(I,)``.
        pairs: The new dataset's training interactions, ``(2, E)`` ``[user_idx; item_idx]``.
    """
    known_users, known_items = user_match >= 0, item_match >= 0
    users, items = pairs[0], pairs[1]
    with_known_user = torch.bincount(items[known_users[users]], minlength=item_match.numel()) > 0
    neighbour_items = ~known_items & with_known_user
    informed = known_items | neighbour_items
    with_informed_item = torch.bincount(users[informed[items]], minlength=user_match.numel()) > 0
    return Sources(known_users, ~known_users & with_informed_item, known_items, neighbour_items)


def _means(index: Tensor, values: Tensor, size: int) -> Tensor:
    """Mean of the rows of ``values`` grouped by ``index`` into ``size`` groups (0 for an empty group)."""
    sums = torch.zeros(size, values.size(1), dtype=values.dtype).index_add_(0, index, values)
    counts = torch.bincount(index, minlength=size).clamp_min(1)
    return sums / counts.unsqueeze(1).to(values.dtype)


def warm_start_embeddings(
    parent_user: Tensor,
    parent_item: Tensor,
    user_match: Tensor,
    item_match: Tensor,
    pairs: Tensor,
    random_user: Tensor,
    random_item: Tensor,
) -> tuple[Embeddings, Sources]:
    """The layer-0 start of every user and item of the new dataset (rules in the module docstring).

    Args:
        parent_user: The parent's layer-0 user rows, ``(U_p, d)``.
        parent_item: The parent's layer-0 item rows, ``(I_p, d)``.
        user_match: Parent row of each new user, -1 if new, ``(U,)`` (:func:`match_ids`).
        item_match: Parent row of each new item, -1 if new, ``(I,)``.
        pairs: The training interactions of the new dataset, ``(2, E)`` ``[user_idx; item_idx]``, unique.
        random_user: The model's random init of the users, ``(U, d)``: kept where nothing is known.
        random_item: The same for the items, ``(I, d)``.

    Returns:
        The initial embeddings (new tensors; the inputs are not modified) and where each row came from.
    """
    src = warm_start_sources(user_match, item_match, pairs)
    user, item = random_user.clone(), random_item.clone()
    user[src.known_users] = parent_user[user_match[src.known_users]].to(user.dtype)
    item[src.known_items] = parent_item[item_match[src.known_items]].to(item.dtype)
    users, items = pairs[0], pairs[1]
    # Rule 2: a new item's known neighbours (rows already set above).
    edges = src.known_users[users] & src.neighbour_items[items]
    item[src.neighbour_items] = _means(items[edges], user[users[edges]], item.size(0))[src.neighbour_items]
    # Rule 3, after rule 2: a new user's informed items.
    edges = src.folded_users[users] & (src.known_items | src.neighbour_items)[items]
    user[src.folded_users] = _means(users[edges], item[items[edges]], user.size(0))[src.folded_users]
    return Embeddings(user, item), src


@dataclass(frozen=True)
class WarmStart:
    """A parent matched to one dataset, laid over the random init by :func:`recsys.training.run.prepare_run`.

    Args:
        parent: The artifact to start from.
        user_match: Parent row of each dataset user, -1 if new.
        item_match: Parent row of each dataset item, -1 if new.
        pairs: The training interactions the neighbour means read (the protocol's training splits).
    """

    parent: Parent
    user_match: Tensor
    item_match: Tensor
    pairs: Tensor

    @classmethod
    def match(cls, parent: Parent, dataset: Dataset, protocol: str) -> WarmStart:
        """Match ``dataset``'s users and items (its own id maps) to the parent's by raw id.

        Raises:
            InputError: the dataset was not read from a directory, or its id maps are unreadable.
        """
        users, items = raw_ids(dataset)
        pairs = dataset.pairs(training_splits(protocol))
        user_match = match_ids(parent.artifact.users["raw_id"], users)
        return cls(parent, user_match, match_ids(parent.artifact.items["raw_id"], items), pairs)

    def sources(self) -> Sources:
        """Where each row starts from (no embeddings computed)."""
        return warm_start_sources(self.user_match, self.item_match, self.pairs)

    def record(self) -> dict[str, Any]:
        """The parent's lineage plus how many rows came from where (``config.json`` ``parent``)."""
        return {**self.parent.record(), "init": self.sources().counts()}

    @torch.no_grad()
    def initialise(self, model: EmbeddingModel, order: NodeOrder) -> Sources:
        """Overwrite ``model``'s freshly random layer 0 (in the training labels of ``order``) with the start.

        Returns:
            Where each row came from.
        """
        if model.embedding_dim != self.parent.user.size(1):
            msg = (
                f"warm start: {self.parent.artifact.path} has d = {self.parent.user.size(1)}, the model "
                f"{model.embedding_dim}"
            )
            raise InputError(msg)
        if (model.num_users, model.num_items) != (self.user_match.numel(), self.item_match.numel()):
            msg = "warm start: matched to another dataset than the model's"
            raise ValueError(msg)
        random_user, random_item = order.restore(model.user_emb.cpu(), model.item_emb.cpu())
        start, sources = warm_start_embeddings(
            self.parent.user,
            self.parent.item,
            self.user_match,
            self.item_match,
            self.pairs,
            random_user,
            random_item,
        )
        device = model.embedding.device
        model.user_emb[order.user_rank.to(device)] = start.user.to(device)
        model.item_emb[order.item_rank.to(device)] = start.item.to(device)
        logger.info(
            "warm start from %s: %s",
            self.parent.artifact.path,
            ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in sources.counts().items()),
        )
        return sources


def check_resume_parent(checkpoint_dir: Path, parent: Parent | None, *, resume: bool) -> None:
    """Keep a run's parent across ``--resume``: record it on a fresh start, insist on it when resuming.

    The initial weights come from the parent (shrunk by its factor) only on a fresh start; a resumed run
    continues its checkpoint. Resuming with another (or no) ``--init-from``, or another ``--init-shrink``,
    would write an artifact that names the wrong parent or factor.

    Raises:
        InputError: resuming with a different parent or shrink factor than the checkpoint was started from.
    """
    marker = checkpoint_dir / "parent.txt"
    wanted = _parent_start(parent)
    if resume:
        recorded = marker.read_text().strip() if marker.is_file() else ""
        if recorded != wanted:
            started = f"--init-from an artifact with id {recorded}" if recorded else "no --init-from"
            given = f"--init-from {parent.artifact.path} (id {wanted})" if parent else "no --init-from"
            msg = f"--resume: the checkpoint at {checkpoint_dir} was started with {started}, now {given}"
            raise InputError(msg)
        return
    if parent is not None:
        atomic_write_text(marker, wanted + "\n")
    else:
        marker.unlink(missing_ok=True)


def _parent_start(parent: Parent | None) -> str:
    """What a checkpoint records of its start: the parent's id, and its shrink factor unless 1."""
    if parent is None:
        return ""
    return parent.artifact_id + ("" if parent.shrink == 1.0 else f", --init-shrink {parent.shrink:g}")


__all__ = [
    "Parent",
    "Sources",
    "WarmStart",
    "check_resume_parent",
    "load_parent",
    "match_ids",
    "raw_ids",
    "warm_start_embeddings",
    "warm_start_sources",
]
