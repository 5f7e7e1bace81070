"""The model artifact (contract 2): one self-contained directory that evaluation and serving load.

Layout::

    config.json      format version, model name, resolved config, dataset digest and ingest options,
                     counts, trained-at, parent artifact (warm-started models)
    model.pt         state_dict (tensors only: loads with torch.load(weights_only=True))
    embeddings.pt    {"user": (U, d), "item": (I, d)} final embeddings used for scoring
    users.parquet    user_idx <-> raw_id      (copied from the dataset)
    items.parquet    item_idx <-> raw_id
    seen.npz         the interactions the model learned as CSR (indptr, indices): items to exclude per user
    metrics.json     protocol, selected epoch and step, selection and test metrics, baseline check, refit
    log.jsonl        one JSON record per epoch of the selection run
    refit.jsonl      one JSON record per epoch of the refit, if the model was refit (``--refit``)
    curve.png        training curves

Written to a temporary sibling and renamed, so a reader sees a whole artifact or none. Nothing in it is
pickled code.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from recsys._version import __version__
from recsys.atomic import atomic_directory, check_directory
from recsys.data.dataset import Dataset
from recsys.data.protocol import Refit, held_out_splits, parse_refit, training_splits
from recsys.errors import InputError, first_line

if TYPE_CHECKING:
    import polars as pl

ARTIFACT_FORMAT_VERSION = 1
REFIT_LOG = "refit.jsonl"
REQUIRED_FILES = (
    "config.json",
    "model.pt",
    "embeddings.pt",
    "users.parquet",
    "items.parquet",
    "seen.npz",
    "metrics.json",
)


@dataclass(frozen=True)
class ArtifactModel:
    """An artifact without its id maps: all that scoring users and items by index needs (evaluation).

    Args:
        path: The directory.
        config: Parsed ``config.json``.
        metrics: Parsed ``metrics.json``.
        user_emb: ``(num_users, d)`` float tensor.
        item_emb: ``(num_items, d)`` float tensor.
        seen_indptr: CSR row pointers of the interactions learned (:attr:`trained_splits`), ``(U + 1,)``.
        seen_indices: CSR item indices, ``(E,)``.
    """

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    user_emb: Tensor
    item_emb: Tensor
    seen_indptr: np.ndarray
    seen_indices: np.ndarray

    @property
    def model_name(self) -> str:
        """``mf``, ``lightgcn``, ``simgcl`` or ``xsimgcl``."""
        return str(self.config["model"])

    @property
    def protocol(self) -> str:
        """The protocol it was trained under (``honest`` when the artifact does not say)."""
        trained = self.config.get("config", {}).get("protocol") or self.metrics.get("protocol")
        return str(trained or "honest")

    @property
    def refit(self) -> Refit:
        """What the model was refit on after selection (``none`` when the artifact does not say).

        Raises:
            InputError: ``config.json`` names an unknown refit.
        """
        return parse_refit(self.config.get("config", {}).get("refit") or Refit.NONE, self.protocol)

    @property
    def trained_splits(self) -> tuple[str, ...]:
        """The splits the model learned, which ``seen.npz`` holds (train ∪ valid after a refit, ...)."""
        return training_splits(self.protocol, self.refit)

    @property
    def held_out_splits(self) -> tuple[str, ...]:
        """The splits the model never learned, the only ones with honest figures (none after refit all)."""
        return held_out_splits(self.protocol, self.refit)

    @property
    def artifact_id(self) -> str:
        """A short stable id of this artifact (digest of its config and embeddings files)."""
        return str(self.config.get("artifact_id", ""))


@dataclass(frozen=True)
class Artifact(ArtifactModel):
    """A loaded artifact: everything serving and evaluation need, nothing else.

    The fields of :class:`ArtifactModel`, then the id maps:

    Args:
        users: ``user_idx``/``raw_id`` map.
        items: ``item_idx``/``raw_id`` map.
    """

    users: pl.DataFrame
    items: pl.DataFrame


def write_artifact(
    out: Path,
    *,
    dataset: Dataset,
    config: dict[str, Any],
    state_dict: dict[str, Tensor],
    user_emb: Tensor,
    item_emb: Tensor,
    train_pairs: Tensor,
    metrics: dict[str, Any],
    history: list[dict[str, Any]],
    force: bool = False,
    parent: dict[str, Any] | None = None,
    refit_history: list[dict[str, Any]] | None = None,
) -> Path:
    """Write an artifact directory atomically (see the module docstring for its layout).

    ``config.json`` also records the dataset's ingest options (``dataset.options``, from its ``meta.json``),
    so the next version of the log can be ingested the same way (``recsys refresh``), and, for a
    warm-started model, its ``parent`` (:meth:`recsys.training.warmstart.WarmStart.record`): its lineage.
    ``train_pairs`` are the pairs the model learned (``seen.npz``); ``refit_history``, the refit's epochs
    (``refit.jsonl``), if the model was refit.
    """
    if dataset.path is None:
        msg = "the dataset must come from a directory (its id maps are copied into the artifact)"
        raise ValueError(msg)
    with atomic_directory(out, force=force) as tmp:
        torch.save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, tmp / "model.pt")
        torch.save(
            {"user": user_emb.detach().cpu().contiguous(), "item": item_emb.detach().cpu().contiguous()},
            tmp / "embeddings.pt",
        )
        shutil.copyfile(dataset.path / "users.parquet", tmp / "users.parquet")
        shutil.copyfile(dataset.path / "items.parquet", tmp / "items.parquet")
        indptr, indices = _csr(train_pairs, dataset.num_users)
        np.savez(tmp / "seen.npz", indptr=indptr, indices=indices)
        (tmp / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
        if refit_history is not None:
            (tmp / REFIT_LOG).write_text("".join(json.dumps(r) + "\n" for r in refit_history))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        digest = hashlib.sha256((tmp / "embeddings.pt").read_bytes()).hexdigest()[:12]
        full_config = {
            "format_version": ARTIFACT_FORMAT_VERSION,
            "artifact_id": digest,
            "model": config["model"],
            "config": config,
            "trained_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "recsys_version": __version__,
            "num_users": dataset.num_users,
            "num_items": dataset.num_items,
            "embedding_dim": int(user_emb.size(1)),
            "num_train_interactions": int(train_pairs.size(1)),
            "dataset": {
                "path": str(dataset.path.resolve()),
                "meta_sha256": dataset_digest(dataset.path),
                "options": dataset.meta.get("options"),
            },
        }
        if parent is not None:
            full_config["parent"] = parent
        (tmp / "config.json").write_text(json.dumps(full_config, indent=2) + "\n")
        _plot(history, tmp / "curve.png")
    return Path(out)


def write_embeddings_artifact(
    out: Path,
    dataset: Dataset,
    user_emb: Tensor,
    item_emb: Tensor,
    *,
    config: dict[str, Any],
    history: list[dict[str, Any]] | None = None,
    force: bool = False,
) -> Path:
    """An artifact for embeddings made elsewhere (random ones for benchmarks and tests, another library's).

    The embeddings are the only weights, the dataset's train split is the seen items, and ``config`` needs at
    least ``model`` (and ``protocol`` when not honest).
    """
    return write_artifact(
        out,
        dataset=dataset,
        config=config,
        state_dict={"embedding": torch.cat([user_emb, item_emb])},
        user_emb=user_emb,
        item_emb=item_emb,
        train_pairs=dataset.train,
        metrics={"protocol": config.get("protocol", "honest")},
        history=history or [],
        force=force,
    )


def load_artifact(path: Path) -> Artifact:
    """Load and validate an artifact directory.

    Raises:
        InputError: a file is missing, unreadable or inconsistent with the others (the message names it).
    """
    import polars as pl  # here: evaluation reads no id maps (load_artifact_model) and skips its slow import

    maps: list[pl.DataFrame] = []

    def read_id_maps(path: Path) -> tuple[int, int]:
        try:
            maps.extend(pl.read_parquet(path / name) for name in _ID_MAPS)
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise _id_map_error(path, exc) from exc
        return maps[0].height, maps[1].height

    model = _load_model(Path(path), read_id_maps)
    parts = {part.name: getattr(model, part.name) for part in fields(model)}
    return Artifact(**parts, users=maps[0], items=maps[1])


def load_artifact_model(path: Path) -> ArtifactModel:
    """:func:`load_artifact` without the id maps: the same checks, with their sizes read from their footers.

    For evaluation, which ranks by index: it reads the Parquet footers with pyarrow, which loads in a
    fraction of the time polars takes to import.

    Raises:
        InputError: as :func:`load_artifact`.
    """
    import pyarrow as pa  # here: serving reads its id maps with polars and need not load pyarrow too
    import pyarrow.parquet as pq

    def id_map_sizes(path: Path) -> tuple[int, int]:
        try:
            users, items = (pq.read_metadata(path / name).num_rows for name in _ID_MAPS)
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise _id_map_error(path, exc) from exc
        return users, items

    return _load_model(Path(path), id_map_sizes)


_ID_MAPS = ("users.parquet", "items.parquet")


def _id_map_error(path: Path, exc: Exception) -> InputError:
    return InputError(f"{path}: cannot read the id maps: {first_line(exc)}")


def _load_model(path: Path, id_map_sizes: Callable[[Path], tuple[int, int]]) -> ArtifactModel:
    """Read and check all but the id maps, whose sizes ``id_map_sizes`` reads (or raises InputError for)."""
    check_directory(path, REQUIRED_FILES, kind="artifact", hint="train one with `recsys train`")
    config = read_json_object(path / "config.json")
    if config.get("format_version") != ARTIFACT_FORMAT_VERSION:
        msg = (
            f"{path / 'config.json'}: artifact format version {config.get('format_version')!r}, "
            f"this recsys reads version {ARTIFACT_FORMAT_VERSION}"
        )
        raise InputError(msg)
    metrics = read_json_object(path / "metrics.json")
    emb = _read_tensors(path / "embeddings.pt", ("user", "item"))
    num_users, num_items = id_map_sizes(path)
    try:
        with np.load(path / "seen.npz", allow_pickle=False) as seen:
            indptr, indices = seen["indptr"], seen["indices"]
    except (OSError, ValueError, KeyError) as exc:
        msg = f"{path / 'seen.npz'}: cannot read: {first_line(exc)}"
        raise InputError(msg) from exc
    user_emb, item_emb = emb["user"], emb["item"]
    problems = embedding_problems(user_emb, item_emb, num_users, num_items, "the id maps'")
    counts = (config.get("num_users"), config.get("num_items"))
    if not problems and counts != (num_users, num_items):
        problems.append(
            f"config.json records {counts[0]} users and {counts[1]} items, the id maps hold "
            f"{num_users} and {num_items}"
        )
    if len(indptr) != num_users + 1 or (len(indices) and int(indices.max()) >= num_items):
        problems.append("seen.npz does not match the id maps")
    if problems:
        msg = f"{path}: inconsistent artifact: {'; '.join(problems)}"
        raise InputError(msg)
    return ArtifactModel(path, config, metrics, user_emb.float(), item_emb.float(), indptr, indices)


def embedding_problems(
    user_emb: Tensor, item_emb: Tensor, num_users: int, num_items: int, whose: str
) -> list[str]:
    """What keeps embeddings from scoring ``num_users`` x ``num_items``; empty when nothing does.

    The one shape rule of scoring embeddings, applied by :func:`load_artifact` to an artifact's files and by
    :func:`recsys.evaluation.evaluate.evaluate_split` to embeddings from anywhere: floating ``(num_users, d)``
    and ``(num_items, d)`` matrices of one width ``d``.

    Args:
        user_emb: User embeddings.
        item_emb: Item embeddings.
        num_users: Users they must cover.
        num_items: Items they must cover.
        whose: Where the counts come from, for the messages (e.g. ``"the dataset's"``).
    """
    problems = []
    for name, emb, rows in (("user", user_emb, num_users), ("item", item_emb, num_items)):
        if emb.dim() != 2 or not emb.is_floating_point() or emb.size(0) != rows:
            problems.append(
                f"{name} embeddings of shape {tuple(emb.shape)} ({emb.dtype}) do not fit {whose} "
                f"{rows:,} {name}s"
            )
    if not problems and user_emb.size(1) != item_emb.size(1):
        problems.append(
            f"user and item embeddings differ in dimension ({user_emb.size(1)} vs {item_emb.size(1)})"
        )
    return problems


def dataset_digest(path: Path) -> str:
    """The digest training records for a dataset directory: SHA-256 of its ``meta.json``."""
    return hashlib.sha256((Path(path) / "meta.json").read_bytes()).hexdigest()


def check_dataset(artifact: ArtifactModel, dataset: Dataset, *, allow_other: bool = False) -> str | None:
    """Check that ``artifact`` was trained on ``dataset``: same counts, and the digest recorded at training.

    Args:
        artifact: The loaded artifact.
        dataset: The dataset to evaluate it on.
        allow_other: Return the digest mismatch as a warning instead of raising it.

    Returns:
        ``None`` when it matches, otherwise (with ``allow_other``) the warning text.

    Raises:
        InputError: other user/item counts (never allowed: the ids would not line up), or another digest.
    """
    if (artifact.user_emb.size(0), artifact.item_emb.size(0)) != (dataset.num_users, dataset.num_items):
        msg = (
            f"{artifact.path}: trained on {artifact.user_emb.size(0):,} users and "
            f"{artifact.item_emb.size(0):,} items, but {dataset.path} has {dataset.num_users:,} users and "
            f"{dataset.num_items:,} items"
        )
        raise InputError(msg)
    recorded = artifact.config.get("dataset", {}).get("meta_sha256")
    if dataset.path is None or not recorded:
        return None
    actual = dataset_digest(dataset.path)
    if actual == recorded:
        return None
    trained_on = artifact.config.get("dataset", {}).get("path", "?")
    msg = (
        f"{artifact.path}: trained on dataset {trained_on} (meta.json sha256 {recorded[:12]}), but "
        f"{dataset.path} has meta.json sha256 {actual[:12]}"
    )
    if not allow_other:
        raise InputError(msg + "; pass --allow-other-dataset to evaluate it anyway")
    return msg


def load_state_dict(path: Path) -> dict[str, Tensor]:
    """The model weights of an artifact (``weights_only``: no code is unpickled)."""
    return _read_tensors(Path(path) / "model.pt", ())


def _csr(pairs: Tensor, num_users: int) -> tuple[np.ndarray, np.ndarray]:
    users, items = pairs[0].numpy(), pairs[1].numpy()
    order = np.lexsort((items, users))
    indptr = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=num_users), out=indptr[1:])
    return indptr, items[order].astype(np.int64)


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file holding one object (an artifact's, a dataset's or a refresh's record), or a clear error."""
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        msg = f"{path}: not valid JSON: {first_line(exc)}"
        raise InputError(msg) from exc
    if not isinstance(value, dict):
        msg = f"{path}: expected a JSON object"
        raise InputError(msg)
    return value


def read_history(artifact: Path, *, refit: bool = False) -> list[dict[str, Any]]:
    """An artifact's per-epoch training records, or a clear error naming the line.

    Args:
        artifact: The artifact directory.
        refit: The refit's records (``refit.jsonl``) instead of the selection run's (``log.jsonl``).
    """
    path = Path(artifact) / (REFIT_LOG if refit else "log.jsonl")
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        msg = f"{path}: cannot read: {first_line(exc)}"
        raise InputError(msg) from exc
    records = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                msg = f"{path}: line {number}: not valid JSON: {first_line(exc)}"
                raise InputError(msg) from exc
    return records


def _read_tensors(path: Path, keys: tuple[str, ...]) -> dict[str, Tensor]:
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt file; all mean the same to a user
        msg = f"{path}: cannot load tensors: {first_line(exc)}"
        raise InputError(msg) from exc
    if not isinstance(value, dict) or any(not isinstance(value.get(k), Tensor) for k in keys):
        msg = f"{path}: expected a dict of tensors with keys {', '.join(keys)}"
        raise InputError(msg)
    return value


def _plot(history: list[dict[str, Any]], out: Path) -> None:
    """Loss terms and the evaluated metrics per epoch, side by side."""
    from recsys.evaluation.plots import training_curve

    training_curve(history).savefig(out, dpi=80)
