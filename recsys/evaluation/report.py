"""The evaluation report: its rows, its JSON (``eval_<split>.json``) and its plain-text table.

:func:`recsys.evaluation.evaluate.evaluate_split` fills it; ``recsys evaluate`` prints :func:`format_report`
and writes :func:`write_report`, and :mod:`recsys.evaluation.report_html` renders the same object as a page.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from recsys.atomic import atomic_write_text
from recsys.data.protocol import Protocol
from recsys.evaluation.metrics import METRIC_NAMES
from recsys.evaluation.segments import ITEM_SEGMENTS, USER_SEGMENTS, threshold_label

REPORT_FORMAT_VERSION = 2


@dataclass(frozen=True)
class ReportRow:
    """One row of a report: a scorer's metrics.

    Args:
        name: The model's name, or a baseline's (``popular``, ``random``, ``graph-filter``).
        metrics: ``{"recall@20": ..., "gini@20": ...}``.
        seconds: Wall time of the row, end to end (a baseline's fitting and tuning included).
        segments: Metrics by user and item segment (see :mod:`recsys.evaluation.segments`).
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
        protocol: ``honest`` or ``paper`` (see :mod:`recsys.data.protocol`).
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

    def __str__(self) -> str:
        """The plain-text table ``recsys evaluate`` prints (:func:`format_report`)."""
        return format_report(self)

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
