"""Evaluate one split: the model and the reference rows under a named protocol, into a report.

The protocol (:mod:`recsys.data.protocol`) decides what is ranked against what: which splits are masked, which
the baselines and the popularity statistics learn from, and which split the graph filters are tuned on (valid
under honest; test under paper, as the paper protocol picks its best test epoch). The ranking itself is
:mod:`recsys.evaluation.ranking` (chunked full ranking), the reference rows are
:mod:`recsys.evaluation.baselines` and the graph filters of :mod:`recsys.evaluation.filters`, the segment
and bias measures :mod:`recsys.evaluation.segments`, the embedding geometry
:mod:`recsys.evaluation.geometry`; this module runs every row and fills the report
(:mod:`recsys.evaluation.report`).

The graph filters (``gf-cf``, ``chebycf``, ``bspm`` and ``graph-filter``, the best of them) are fitted on the
protocol's training data and tuned on its selection split, once for all the filter rows of a report; then
each is applied to ``filter_pairs``: the same training data, or train ∪ valid under ``honest`` (refitted with
the hyperparameters chosen on valid, as for a model retrained on train ∪ valid before it is served).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
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
    from recsys.evaluation.filters.spectral import ItemGraph
    from recsys.evaluation.filters.tuning import FilterConfig, Selection

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
    graph_filter: FilterConfig | None = None,
    filter_pairs: str | None = None,
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
        seed: Seed of the graph filters' randomized SVD and user sample.
        model_name: Name of the model's row.
        graph_filter: The graph filters' basis, grids and search (default:
            :class:`recsys.evaluation.filters.tuning.FilterConfig` with ``seed``).
        filter_pairs: What the graph filters are applied to once tuned: ``train`` or ``train+valid``
            (:data:`FILTER_PAIRS`); default: the protocol's training data. ``train+valid`` under ``honest``
            tunes on valid with the filter fitted on train, then refits it on train ∪ valid.

    Returns:
        The report: protocol, split, user counts, the model's row and the baseline rows.

    Raises:
        InputError: bad split/protocol/cut-off/baseline name/filter pairs, or embeddings that do not match
            the dataset.
    """
    protocol = parse_protocol(protocol)
    excluded = excluded_splits(split, protocol)
    applied = filter_splits(filter_pairs, protocol, split)
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
    filters = _Filters(dataset, protocol, applied, baselines, graph_filter, seed)
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
            result, found = filters.rank(name, gt, masked, shared)
            details.update(found)
            # The shared fit and search count in every filter row: each costs that much asked for alone.
            start = time.perf_counter() - found["seconds"]
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


FILTER_PAIRS: dict[str, tuple[str, ...]] = {"train": ("train",), "train+valid": ("train", "valid")}
"""What the graph filters can be applied to once tuned (``filter_pairs``), by name."""


def filter_splits(filter_pairs: str | None, protocol: Protocol, split: str) -> tuple[str, ...]:
    """The splits the graph filters are applied to: ``filter_pairs``'s, or the protocol's training splits.

    Raises:
        InputError: an unknown name, fewer splits than the protocol trains on (``train`` under ``paper``),
            or the evaluated split among them.
    """
    trained = training_splits(protocol)
    if filter_pairs is None:
        return trained
    if filter_pairs not in FILTER_PAIRS:
        msg = f"unknown filter pairs {filter_pairs!r}; expected one of {', '.join(FILTER_PAIRS)}"
        raise InputError(msg)
    splits = FILTER_PAIRS[filter_pairs]
    if not set(trained) <= set(splits):
        msg = (
            f"filter pairs {filter_pairs!r}: the {protocol.value} protocol fits the filters on "
            f"{' ∪ '.join(trained)} already; expected {'+'.join(trained)}"
        )
        raise InputError(msg)
    if split in splits:
        msg = f"filter pairs {filter_pairs!r} hold the evaluated split {split!r}; expected train"
        raise InputError(msg)
    return splits


class _Filters:
    """The graph-filter rows of one report: one fit and one search for all of them, done when first asked.

    Args:
        dataset: The dataset.
        protocol: The protocol: the filters are fitted on its training splits, tuned on its selection split.
        applied: The splits the tuned filters are applied to (a refit when they differ from the fitted ones).
        rows: The report's baseline rows; the filters of the filter rows among them are tuned.
        config: The basis, grids and search; default: ``FilterConfig(seed=seed)``.
        seed: Seed of the randomized SVD and the user sample.
    """

    def __init__(
        self,
        dataset: Dataset,
        protocol: Protocol,
        applied: tuple[str, ...],
        rows: Sequence[str],
        config: FilterConfig | None,
        seed: int,
    ) -> None:
        self.dataset, self.protocol, self.applied = dataset, protocol, applied
        self.rows, self.config, self.seed = rows, config, seed
        self.graph: ItemGraph | None = None
        self.selection: Selection | None = None
        self.phases: dict[str, float] = {}

    def _prepare(self) -> None:
        """Fit the item graph on the training splits, tune every filter needed, refit if asked."""
        from recsys.evaluation.filters.tuning import BEST, FAMILIES, FilterConfig, build_graph, select

        cfg = self.config or FilterConfig(seed=self.seed)
        families = [name for name in FAMILIES if name in self.rows or BEST in self.rows]
        data, protocol = self.dataset, self.protocol
        fitted = training_splits(protocol)
        start = time.perf_counter()
        graph = build_graph(data.pairs(fitted), data.num_users, data.num_items, cfg)
        built = time.perf_counter()
        tune = selection_split(protocol)
        self.selection = select(
            graph, families, data.split(tune), data.pairs(excluded_splits(tune, protocol)), cfg
        )
        selected = time.perf_counter()
        if self.applied != fitted:  # tuned with the filters fitted on train; applied to train ∪ valid
            del graph
            graph = build_graph(data.pairs(self.applied), data.num_users, data.num_items, cfg)
        self.graph = graph
        self.phases = {
            "build_seconds": built - start,
            "select_seconds": selected - built,
            "refit_seconds": time.perf_counter() - selected,
        }

    def rank(
        self, name: str, truth: GroundTruth, exclude: ChunkedPairs, shared: dict[str, Any]
    ) -> tuple[RankingResult, dict[str, Any]]:
        """Rank the evaluated split with the filter of row ``name``; its details (``seconds``: its cost)."""
        from recsys.evaluation.filters.terms import FilterScorer
        from recsys.evaluation.filters.tuning import BEST, FAMILIES

        if self.graph is None:
            self._prepare()
        assert self.graph is not None and self.selection is not None
        selection, graph = self.selection, self.graph
        choice = selection.best() if name == BEST else selection.choices[name]
        start = time.perf_counter()
        scorer = FilterScorer(graph, FAMILIES[choice.family].terms(graph, choice.settings))
        result = full_ranking(
            scorer,
            truth,
            num_users=self.dataset.num_users,
            num_items=self.dataset.num_items,
            exclude=exclude,
            **shared,
        )
        phases = {**self.phases, "rank_seconds": time.perf_counter() - start}
        applied = " ∪ ".join(self.applied)
        tune = selection_split(self.protocol)
        label = choice.settings.label()
        description = f"{FAMILIES[choice.family].DESCRIPTION}; {label}"
        if name == BEST:
            others = ", ".join(f"{c.family} {c.value:.4f}" for c in selection.choices.values())
            description = f"the best graph filter on {tune} ({others}): {choice.family}, {label}"
        details: dict[str, Any] = {
            "description": f"{description}; applied to {applied}",
            "filter": choice.family,
            "settings": asdict(choice.settings),
            "label": label,
            "applied_to": applied,
            "refit": self.applied != training_splits(self.protocol),
            "rank": graph.rank,
            "selected_on": tune,
            "selection_users": selection.num_users,
            "selection_metric": selection.metric,
            "selection_value": choice.value,
            "candidates": selection.candidates,
            "grid": choice.grid,
            "filters": {
                c.family: {"label": c.settings.label(), "value": c.value} for c in selection.choices.values()
            },
            **phases,
            "seconds": sum(phases.values()),
        }
        details["summary"] = (
            f"{name}: {choice.family} ({label}), chosen on {tune} ({selection.num_users:,} users, "
            f"{selection.metric} {choice.value:.4f}, {len(choice.grid)} grid points), applied to {applied}; "
            f"built {phases['build_seconds']:.1f} s, tuned {phases['select_seconds']:.1f} s, "
            + (f"refitted {phases['refit_seconds']:.1f} s, " if details["refit"] else "")
            + f"ranked {phases['rank_seconds']:.1f} s"
        )
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
    # A split the model learned (a refit's) has no honest figures: refuse it, naming the held-out splits.
    excluded_splits(kwargs.get("split", "test"), protocol, artifact.refit)
    if artifact.refit != "none":  # the filters then see the pairs the model learned, as the row says
        kwargs.setdefault("filter_pairs", "+".join(artifact.trained_splits))
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
