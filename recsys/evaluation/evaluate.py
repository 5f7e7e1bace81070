"""Evaluate one split: the model and the reference rows under a named protocol, into a report.

The protocol (:mod:`recsys.data.protocol`) decides what is ranked against what: which splits are masked, which
the baselines and the popularity statistics learn from, and which split the graph filter is tuned on (valid
under honest; test under paper, as the paper protocol picks its best test epoch). The ranking itself is
:mod:`recsys.evaluation.ranking` (chunked full ranking), the reference rows are
:mod:`recsys.evaluation.baselines` and :mod:`recsys.evaluation.graph_filter`, the segment and bias measures
:mod:`recsys.evaluation.segments`, the embedding geometry :mod:`recsys.evaluation.geometry`; this module runs
every row and fills the report (:mod:`recsys.evaluation.report`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from recsys.artifact import check_dataset, embedding_problems, load_artifact_model
from recsys.data.dataset import Dataset, load_dataset
from recsys.data.protocol import Protocol, excluded_splits, parse_protocol, selection_split, training_splits
from recsys.errors import InputError
from recsys.evaluation.baselines import (
    BASELINES,
    DEFAULT_BASELINES,
    expected_random,
    popular_lists,
    popularity_order,
)
from recsys.evaluation.geometry import embedding_geometry
from recsys.evaluation.metrics import DEFAULT_KS, check_ks
from recsys.evaluation.ranking import GroundTruth, ListMeasure, RankingResult, full_ranking
from recsys.evaluation.report import EvaluationReport, ReportRow
from recsys.evaluation.segments import define_segments
from recsys.inference.scoring import EmbeddingScorer
from recsys.inference.topk import ChunkedPairs, excluded_pairs

if TYPE_CHECKING:
    from recsys.evaluation.graph_filter import GraphFilterConfig

logger = logging.getLogger(__name__)


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

    Masks the items of :func:`~recsys.data.protocol.excluded_splits`; the baselines, popularity and the
    segments use the training data of the protocol (:func:`~recsys.data.protocol.training_splits`: train under
    ``honest``, train ∪ valid under ``paper``).

    Args:
        dataset: The dataset (see :func:`recsys.data.dataset.load_dataset`).
        user_emb: User embeddings, shape ``(num_users, d)``; ``None`` to evaluate only the baselines.
        item_emb: Item embeddings, shape ``(num_items, d)``.
        split: ``valid`` or ``test``.
        protocol: ``honest`` or ``paper``.
        ks: Cut-offs.
        baselines: Names from :data:`recsys.evaluation.baselines.BASELINES`, in the order of the rows.
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
    protocol = parse_protocol(protocol)
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
        problems = embedding_problems(
            user_emb, item_emb, dataset.num_users, dataset.num_items, "the dataset's"
        )
        if problems:
            msg = "; ".join(problems) + " (was the model trained on another dataset?)"
            raise InputError(msg)
        device = device if device is not None else user_emb.device
        user_emb, item_emb = user_emb.to(device), item_emb.to(device)
    device = torch.device(device if device is not None else "cpu")
    cpu = torch.device("cpu")

    truth = dataset.split(split)
    exclude = dataset.pairs(excluded)
    training = dataset.pairs(training_splits(protocol))
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
    from recsys.evaluation.graph_filter import (
        GraphFilter,
        GraphFilterConfig,
    )  # here: only this row needs the module

    cfg = config or GraphFilterConfig(seed=seed)
    start = time.perf_counter()
    gf = GraphFilter(training, dataset.num_users, dataset.num_items, cfg)
    tune = selection_split(protocol)
    chosen = gf.select(dataset.split(tune), dataset.pairs(excluded_splits(tune, protocol)))
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
        artifact_dir: The artifact (validated by :func:`recsys.artifact.load_artifact_model`: the checks of
            serving's :func:`~recsys.artifact.load_artifact`, without reading the id maps it ranks no ids of).
        dataset_dir: The dataset directory.
        protocol: The protocol; default: the one the artifact was trained under.
        allow_other_dataset: Turn a dataset digest mismatch into a logged warning.
        device: Where to score the model.
        **kwargs: Passed on to :func:`evaluate_split` (split, ks, baselines, batch_size, seed, ...).

    Raises:
        InputError: a bad artifact, a dataset that does not match it, or a bad option.
    """
    artifact = load_artifact_model(Path(artifact_dir))
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
