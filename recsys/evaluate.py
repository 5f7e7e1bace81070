"""Evaluate one split: the model and the reference rows under a named protocol, as a table and JSON.

The ranking itself is :mod:`recsys.ranking` (chunked full ranking), the reference rows are
:mod:`recsys.baselines`, the segment and bias measures :mod:`recsys.segments` and the embedding geometry
:mod:`recsys.geometry`. This module decides *what* is ranked against *what* (the protocol), runs every row
and writes the report.

Protocols (named in every report):

* ``honest`` (default): the model is selected on valid and test is reported once. Evaluating valid
  excludes train; evaluating test excludes train and valid.
* ``paper``: the SimGCL/XSimGCL papers' protocol as run by SELFRec: train on train ∪ valid and report the
  best test epoch. Test excludes train ∪ valid (the training data); valid cannot be evaluated, as it is
  training data. Numbers under this protocol are optimistic and only for comparing with published ones.

The baselines learn from the protocol's training splits only, and the graph filter is tuned on its selection
split (valid under honest; test under paper, as the paper protocol picks its best test epoch).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from recsys.artifact import check_dataset, load_artifact
from recsys.atomic import atomic_write_text
from recsys.baselines import (
    BASELINES,
    DEFAULT_BASELINES,
    GraphFilter,
    GraphFilterConfig,
    expected_random,
    popular_lists,
    popularity_order,
)
from recsys.dataset import Dataset, load_dataset
from recsys.errors import InputError
from recsys.geometry import embedding_geometry
from recsys.metrics import DEFAULT_KS, METRIC_NAMES, check_ks
from recsys.ranking import (
    ChunkedPairs,
    EmbeddingScorer,
    GroundTruth,
    ListMeasure,
    RankingResult,
    evaluate_embeddings,
    excluded_pairs,
    full_ranking,
)
from recsys.segments import ITEM_SEGMENTS, USER_SEGMENTS, define_segments, threshold_label

logger = logging.getLogger(__name__)

REPORT_FORMAT_VERSION = 2
__all__ = [  # evaluate_embeddings is training's entry point; it lives in recsys.ranking
    "EvaluationReport",
    "Protocol",
    "ReportRow",
    "evaluate_artifact",
    "evaluate_embeddings",
    "evaluate_split",
    "excluded_splits",
    "format_report",
    "selection_split",
    "training_splits",
    "write_report",
]


class Protocol(StrEnum):
    """Evaluation protocol; see the module docstring."""

    HONEST = "honest"
    PAPER = "paper"


def excluded_splits(split: str, protocol: Protocol | str = Protocol.HONEST) -> tuple[str, ...]:
    """The splits whose items are masked (never recommended) when ``split`` is evaluated.

    ============  ==================  ====================
    split         honest              paper
    ============  ==================  ====================
    ``valid``     train               (not allowed)
    ``test``      train, valid        train, valid
    ============  ==================  ====================

    Raises:
        InputError: unknown split or protocol, or ``valid`` under ``paper`` (valid is training data there).
    """
    protocol = _protocol(protocol)
    if split == "valid":
        if protocol is Protocol.PAPER:
            msg = "the paper protocol trains on train ∪ valid, so it can only evaluate split 'test'"
            raise InputError(msg)
        return ("train",)
    if split == "test":
        return ("train", "valid")
    msg = f"cannot evaluate split {split!r}; expected 'valid' or 'test'"
    raise InputError(msg)


def training_splits(protocol: Protocol | str = Protocol.HONEST) -> tuple[str, ...]:
    """The splits a model is trained on under ``protocol`` (also the baselines' and popularity's data)."""
    return ("train",) if _protocol(protocol) is Protocol.HONEST else ("train", "valid")


def _protocol(protocol: Protocol | str) -> Protocol:
    try:
        return Protocol(protocol)
    except ValueError:
        msg = f"unknown protocol {protocol!r}; expected one of {', '.join(p.value for p in Protocol)}"
        raise InputError(msg) from None


def selection_split(protocol: Protocol | str = Protocol.HONEST) -> str:
    """The split hyperparameters are chosen on: valid (honest), or test (paper: its best test epoch)."""
    return "valid" if _protocol(protocol) is Protocol.HONEST else "test"


# --------------------------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class ReportRow:
    """One row of a report: a scorer's metrics.

    Args:
        name: The model's name, or a baseline's (``popular``, ``random``, ``graph-filter``).
        metrics: ``{"recall@20": ..., "gini@20": ...}``.
        seconds: Wall time of the row, end to end (a baseline's fitting and tuning included).
        segments: Metrics by user and item segment (see :mod:`recsys.segments`).
        details: How the row was obtained (e.g. the graph filter's selected hyperparameters).
        exposure: ``(len(ks), num_items)`` lists each item appears in (not written to JSON).
    """

    name: str
    metrics: dict[str, float]
    seconds: float
    segments: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    exposure: Tensor | None = None

    def to_dict(self) -> dict[str, Any]:
        """The row as written to JSON."""
        return {
            "name": self.name,
            "metrics": self.metrics,
            "seconds": self.seconds,
            "segments": self.segments,
            "details": self.details,
        }


@dataclass(frozen=True)
class EvaluationReport:
    """Metrics of a model and the baselines on one split under one protocol.

    Args:
        protocol: ``honest`` or ``paper`` (see the module docstring).
        split: The evaluated split, ``valid`` or ``test``.
        ks: Cut-offs.
        num_users: Users evaluated (with ground truth in ``split``).
        num_skipped: Users without ground truth in ``split``.
        model: The model's row, or ``None`` when only baselines were evaluated.
        baselines: Reference rows.
        excluded: The splits whose items were masked.
        dataset: The dataset directory, if known.
        artifact: The artifact directory, if known.
        segments: How the segments were defined (thresholds, sizes).
        embedding: The model's embedding geometry (alignment on the split's pairs, uniformity).
        data: Counts: users, items, interactions per split, the training splits.
        item_popularity: Training interactions per item (not written to JSON; for charts).
    """

    protocol: Protocol
    split: str
    ks: tuple[int, ...]
    num_users: int
    num_skipped: int
    model: ReportRow | None = None
    baselines: tuple[ReportRow, ...] = ()
    excluded: tuple[str, ...] = ()
    dataset: str | None = None
    artifact: str | None = None
    segments: dict[str, Any] | None = None
    embedding: dict[str, float] | None = None
    data: dict[str, Any] = field(default_factory=dict)
    item_popularity: Tensor | None = None
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    @property
    def rows(self) -> tuple[ReportRow, ...]:
        """The model row (if any) followed by the baselines."""
        return ((self.model,) if self.model is not None else ()) + self.baselines

    @property
    def metrics(self) -> dict[str, float]:
        """The model's metrics (empty without a model)."""
        return dict(self.model.metrics) if self.model is not None else {}

    @property
    def seconds(self) -> float:
        """Total evaluation time of all rows."""
        return sum(row.seconds for row in self.rows)

    @property
    def main_k(self) -> int:
        """The cut-off the segment tables show: 20 when evaluated, else the largest."""
        return 20 if 20 in self.ks else self.ks[-1]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the content of ``eval_<split>.json``)."""
        return {
            "format_version": REPORT_FORMAT_VERSION,
            "protocol": self.protocol.value,
            "split": self.split,
            "excluded": list(self.excluded),
            "ks": list(self.ks),
            "num_users": self.num_users,
            "num_skipped": self.num_skipped,
            "metrics": self.metrics,
            "seconds": self.seconds,
            "model": None if self.model is None else self.model.to_dict(),
            "baselines": {row.name: row.to_dict() for row in self.baselines},
            "segments": self.segments,
            "embedding": self.embedding,
            "data": self.data,
            "dataset": self.dataset,
            "artifact": self.artifact,
            "created": self.created,
        }


def evaluate_split(
    dataset: Dataset,
    user_emb: Tensor | None = None,
    item_emb: Tensor | None = None,
    *,
    split: str = "test",
    protocol: Protocol | str = Protocol.HONEST,
    ks: Sequence[int] = DEFAULT_KS,
    baselines: Sequence[str] = DEFAULT_BASELINES,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    model_name: str = "model",
    graph_filter: GraphFilterConfig | None = None,
) -> EvaluationReport:
    """Evaluate embeddings (and/or the baselines) on one split of a dataset under a protocol.

    Masks the items of :func:`excluded_splits`; the baselines, popularity and the segments use the training
    data of the protocol (:func:`training_splits`: train under ``honest``, train ∪ valid under ``paper``).

    Args:
        dataset: The dataset (see :func:`recsys.dataset.load_dataset`).
        user_emb: User embeddings, shape ``(num_users, d)``; ``None`` to evaluate only the baselines.
        item_emb: Item embeddings, shape ``(num_items, d)``.
        split: ``valid`` or ``test``.
        protocol: ``honest`` or ``paper``.
        ks: Cut-offs.
        baselines: Names from :data:`recsys.baselines.BASELINES`, in the order of the rows.
        batch_size: Users per chunk (default: by memory budget).
        device: Device of the model's scores (the embeddings' device by default); baselines run on CPU.
        seed: Seed of the graph filter's randomized SVD and user sample.
        model_name: Name of the model's row.
        graph_filter: The graph filter's hyperparameters and grid (default: :class:`GraphFilterConfig`).

    Returns:
        The report: protocol, split, user counts, the model's row and the baseline rows.

    Raises:
        InputError: bad split/protocol/cut-off/baseline name, or embeddings that do not match the dataset.
    """
    protocol = _protocol(protocol)
    excluded = excluded_splits(split, protocol)
    try:
        ks = check_ks(ks)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    unknown = [name for name in baselines if name not in BASELINES]
    if unknown:
        msg = f"unknown baseline(s) {', '.join(unknown)}; expected some of {', '.join(BASELINES)}"
        raise InputError(msg)
    if (user_emb is None) != (item_emb is None):
        msg = "give both user and item embeddings, or neither"
        raise InputError(msg)
    if user_emb is not None and item_emb is not None:
        _check_shapes(user_emb, item_emb, dataset)
        device = device if device is not None else user_emb.device
        user_emb, item_emb = user_emb.to(device), item_emb.to(device)
    device = torch.device(device if device is not None else "cpu")
    cpu = torch.device("cpu")

    truth = dataset.split(split)
    exclude = torch.cat([dataset.split(name) for name in excluded], dim=1)
    training = torch.cat([dataset.split(name) for name in training_splits(protocol)], dim=1)
    popularity = torch.bincount(training[1], minlength=dataset.num_items)
    segments = define_segments(training, dataset.num_users, dataset.num_items)
    shared: dict[str, Any] = {"ks": ks, "item_popularity": popularity, "segments": segments}

    def row(
        name: str, result: RankingResult, seconds: float, details: dict[str, Any] | None = None
    ) -> ReportRow:
        k = 20 if 20 in ks else ks[-1]
        recall, ndcg = result.metrics[f"recall@{k}"], result.metrics[f"ndcg@{k}"]
        logger.info(
            "%s on %s (%s): recall@%d %.4f, ndcg@%d %.4f in %.2f s",
            name,
            split,
            protocol.value,
            k,
            recall,
            k,
            ndcg,
            seconds,
        )
        return ReportRow(name, result.metrics, seconds, result.segments, details or {}, result.exposure)

    # The evaluated users, their relevant and their masked items, prepared once for the rows ranked on CPU.
    gt = GroundTruth(truth, dataset.num_users, dataset.num_items, cpu)
    masked = excluded_pairs(exclude, gt.users, dataset.num_users, dataset.num_items)
    model: ReportRow | None = None
    embedding = None
    if user_emb is not None and item_emb is not None:
        start = time.perf_counter()
        result = full_ranking(
            EmbeddingScorer(user_emb, item_emb),
            gt if device == cpu else truth,
            num_users=dataset.num_users,
            num_items=dataset.num_items,
            exclude=masked if device == cpu else exclude,
            batch_size=batch_size,
            **shared,
        )
        model = row(model_name, result, time.perf_counter() - start)
        embedding = embedding_geometry(user_emb, item_emb, truth, seed=seed)
    rows = []
    for name in baselines:
        start = time.perf_counter()
        details: dict[str, Any] = {"description": BASELINES[name]}
        if name == "popular":
            measure = ListMeasure(gt, ks, item_popularity=popularity, segments=segments)
            order = popularity_order(training, dataset.num_items)
            for chunk in popular_lists(order, gt.users, ks[-1], num_users=dataset.num_users, exclude=masked):
                measure.update(*chunk)
            result = measure.result()
        elif name == "random":
            result = expected_random(gt, masked, ks, item_popularity=popularity, segments=segments)
        else:
            result, found = _graph_filter(dataset, protocol, gt, masked, training, graph_filter, seed, shared)
            details.update(found)
        rows.append(row(name, result, time.perf_counter() - start, details))
    return EvaluationReport(
        protocol=protocol,
        split=split,
        ks=ks,
        num_users=len(gt),
        num_skipped=dataset.num_users - len(gt),
        model=model,
        baselines=tuple(rows),
        excluded=excluded,
        dataset=str(dataset.path) if dataset.path is not None else None,
        segments=segments.describe(),
        embedding=embedding,
        data=_counts(dataset, protocol),
        item_popularity=popularity,
    )


def _graph_filter(
    dataset: Dataset,
    protocol: Protocol,
    truth: GroundTruth,
    exclude: ChunkedPairs,
    training: Tensor,
    config: GraphFilterConfig | None,
    seed: int,
    shared: dict[str, Any],
) -> tuple[RankingResult, dict[str, Any]]:
    """Fit the graph filter on the training data, tune it on the selection split, rank the evaluated split."""
    cfg = config or GraphFilterConfig(seed=seed)
    start = time.perf_counter()
    gf = GraphFilter(training, dataset.num_users, dataset.num_items, cfg)
    tune = selection_split(protocol)
    tune_exclude = torch.cat([dataset.split(name) for name in excluded_splits(tune, protocol)], dim=1)
    chosen = gf.select(dataset.split(tune), tune_exclude)
    selected = time.perf_counter()
    result = full_ranking(
        gf.scorer(chosen.ideal_weight, chosen.popularity_exponent),
        truth,
        num_users=dataset.num_users,
        num_items=dataset.num_items,
        exclude=exclude,
        **shared,
    )
    details = {
        "rank": gf.rank,
        "ideal_weight": chosen.ideal_weight,
        "popularity_exponent": chosen.popularity_exponent,
        "selected_on": tune,
        "selection_users": chosen.num_users,
        "selection_metric": chosen.metric,
        "selection_value": chosen.value,
        "grid": chosen.grid,
        "build_seconds": gf.seconds,
        "select_seconds": selected - start - gf.seconds,
        "rank_seconds": time.perf_counter() - selected,
    }
    return result, details


def _check_shapes(user_emb: Tensor, item_emb: Tensor, dataset: Dataset) -> None:
    for name, emb, rows in (("user", user_emb, dataset.num_users), ("item", item_emb, dataset.num_items)):
        if emb.dim() != 2 or not emb.is_floating_point() or emb.size(0) != rows:
            msg = (
                f"{name} embeddings of shape {tuple(emb.shape)} ({emb.dtype}) do not fit the dataset's "
                f"{rows:,} {name}s (was the model trained on another dataset?)"
            )
            raise InputError(msg)
    if user_emb.size(1) != item_emb.size(1):
        msg = f"user and item embeddings differ in dimension ({user_emb.size(1)} vs {item_emb.size(1)})"
        raise InputError(msg)


def _counts(dataset: Dataset, protocol: Protocol) -> dict[str, Any]:
    return {
        "num_users": dataset.num_users,
        "num_items": dataset.num_items,
        "interactions": {name: int(dataset.split(name).size(1)) for name in ("train", "valid", "test")},
        "training_splits": list(training_splits(protocol)),
    }


def evaluate_artifact(
    artifact_dir: Path | str,
    dataset_dir: Path | str,
    *,
    protocol: Protocol | str | None = None,
    allow_other_dataset: bool = False,
    device: torch.device | str = "cpu",
    **kwargs: Any,
) -> EvaluationReport:
    """Load an artifact as serving does, check it was trained on the dataset, and :func:`evaluate_split` it.

    Args:
        artifact_dir: The artifact (validated by :func:`recsys.artifact.load_artifact`).
        dataset_dir: The dataset directory.
        protocol: The protocol; default: the one the artifact was trained under.
        allow_other_dataset: Turn a dataset digest mismatch into a logged warning.
        device: Where to score the model.
        **kwargs: Passed on to :func:`evaluate_split` (split, ks, baselines, batch_size, seed, ...).

    Raises:
        InputError: a bad artifact, a dataset that does not match it, or a bad option.
    """
    artifact = load_artifact(Path(artifact_dir))
    dataset = load_dataset(Path(dataset_dir))
    warning = check_dataset(artifact, dataset, allow_other=allow_other_dataset)
    if warning:
        logger.warning("warning: %s", warning)
    if protocol is None:
        protocol = artifact.protocol
    report = evaluate_split(
        dataset,
        artifact.user_emb,
        artifact.item_emb,
        protocol=protocol,
        device=device,
        model_name=artifact.model_name,
        **kwargs,
    )
    return replace(report, artifact=str(artifact_dir))


def write_report(report: EvaluationReport, path: Path | str) -> Path:
    """Write ``report.to_dict()`` as JSON, atomically.

    Returns:
        The path written.
    """
    return atomic_write_text(Path(path), json.dumps(report.to_dict(), indent=2) + "\n")


def format_report(report: EvaluationReport, digits: int = 4) -> str:
    """A plain-text table: a header line, one block per K, then segments, bias and how rows were obtained.

    Columns of each K block: ``recall@K ndcg@K precision@K hit@K mrr@K coverage@K``. The segment block (at
    :attr:`EvaluationReport.main_k`) shows recall by user segment and by item segment, the mean popularity
    of the recommended items, the Gini of item exposure and the tail items' share of the slots.

    Returns:
        The table, without a trailing newline.
    """
    header = (
        f"protocol {report.protocol.value} | split {report.split} "
        f"(excluding {' + '.join(report.excluded) or 'nothing'}) | "
        f"users evaluated {report.num_users:,} | skipped (no ground truth) {report.num_skipped:,}"
    )
    rows = report.rows
    if not rows:
        return header + "\n(nothing evaluated)"
    width = max(len("model"), *(len(row.name) for row in rows))
    lines = [header]
    for k in report.ks:
        columns = [f"{name}@{k}" for name in (*METRIC_NAMES, "coverage")]
        cells = [[_num(row.metrics.get(c), digits) for c in columns] for row in rows]
        lines += ["", *_table(columns, [row.name for row in rows], cells, width)]
    k = report.main_k
    if all(row.segments for row in rows):
        columns = [*USER_SEGMENTS, *ITEM_SEGMENTS, f"popularity@{k}", f"gini@{k}", f"tail_share@{k}"]
        cells = []
        for row in rows:
            segments = row.segments or {}
            values = [segments["users"][name][f"recall@{k}"] for name in USER_SEGMENTS]
            values += [segments["items"][name][f"recall@{k}"] for name in ITEM_SEGMENTS]
            values += [
                row.metrics.get(f"{name}@{k}", math.nan) for name in ("popularity", "gini", "tail_share")
            ]
            decimals = [digits] * 6 + [1, digits, digits]
            cells.append([_num(v, d) for v, d in zip(values, decimals, strict=True)])
        lines += ["", f"recall@{k} by user and item segment; popularity bias at {k}:"]
        lines += _table(columns, [row.name for row in rows], cells, width)
        if report.segments is not None:
            lines.append(threshold_label(report.segments["thresholds"]))
    if report.embedding is not None:
        e = report.embedding
        lines.append(
            f"embedding geometry: alignment {e['alignment']:.4f} (on the {report.split} pairs), uniformity "
            f"users {e['uniformity_users']:.4f}, items {e['uniformity_items']:.4f}"
        )
    for row in rows:
        if "ideal_weight" in row.details:
            d = row.details
            lines.append(
                f"{row.name}: rank {d['rank']}, alpha {d['ideal_weight']:g}, gamma "
                f"{d['popularity_exponent']:g} selected on {d['selected_on']} ({d['selection_users']:,} "
                f"users, {d['selection_metric']} {d['selection_value']:.4f}); built "
                f"{d['build_seconds']:.1f} s, tuned {d['select_seconds']:.1f} s, ranked "
                f"{d['rank_seconds']:.1f} s"
            )
    lines.append("seconds: " + ", ".join(f"{row.name} {row.seconds:.2f}" for row in rows))
    return "\n".join(lines)


def _table(
    columns: Sequence[str], names: Sequence[str], cells: Sequence[Sequence[str]], width: int
) -> list[str]:
    """A header line and one line per row, each column right-aligned to its widest entry (at least 8)."""
    cols = [max(8, len(c), *(len(row[j]) for row in cells)) for j, c in enumerate(columns)]
    lines = [" ".join([" " * width, *(c.rjust(w) for c, w in zip(columns, cols, strict=True))])]
    for name, row in zip(names, cells, strict=True):
        lines.append(" ".join([name.ljust(width), *(c.rjust(w) for c, w in zip(row, cols, strict=True))]))
    return lines


def _num(value: float | None, digits: int) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.{digits}f}"
