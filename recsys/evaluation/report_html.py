"""``recsys report``: one self-contained HTML page on an evaluated artifact.

The page holds the metric table against the baselines, the training curve (``log.jsonl``), recall by segment,
the popularity of the recommended items against the catalogue's, the embedding geometry and how every number
was obtained. Charts are inline SVG and the style sheet is inline: the file opens offline and can be mailed.
:func:`render_html` is a pure function of the report; :func:`write_html_report` reads the artifact's log and
config and writes the page atomically.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsys.atomic import atomic_write_text
from recsys.data.protocol import TEST_SPLIT, selection_split
from recsys.errors import InputError
from recsys.evaluation.metrics import METRIC_NAMES
from recsys.evaluation.plots import popularity_histogram, segment_bars, to_svg, training_curve
from recsys.evaluation.report import EvaluationReport
from recsys.evaluation.segments import ITEM_SEGMENTS, USER_SEGMENTS, threshold_label

CHARTS = ("chart-training-curve", "chart-segments", "chart-popularity")
"""Element ids of the page's figures (the rendering test checks each is drawn)."""

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1100px; color: #1d1d1f; line-height: 1.45; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; } h2 { font-size: 1.2rem; margin-top: 2.2rem; }
.lead { color: #444; }
table { border-collapse: collapse; margin: 0.6rem 0; font-variant-numeric: tabular-nums; }
th, td { padding: 0.25rem 0.6rem; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child, .name { text-align: left; }
tbody th { vertical-align: top; text-align: left; font-weight: 600; }
thead th { border-bottom: 2px solid #999; font-weight: 600; }
tr.model td { background: #eef5ff; }
td.best { font-weight: 700; }
figure { margin: 0.8rem 0; } figure svg { width: 100%; height: auto; display: block; }
figcaption, .note { color: #555; font-size: 0.9rem; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 0.25rem 1rem; }
dt { font-weight: 600; } dd { margin: 0; }
"""


def render_html(
    report: EvaluationReport,
    *,
    history: Sequence[Mapping[str, Any]] = (),
    artifact_config: Mapping[str, Any] | None = None,
) -> str:
    """The page as a string.

    Args:
        report: An evaluation with segments (:func:`recsys.evaluation.evaluate.evaluate_split`).
        history: The artifact's per-epoch records (``log.jsonl``).
        artifact_config: The artifact's ``config.json``.
    """
    config = dict(artifact_config or {})
    k = report.main_k
    title = f"{report.model.name if report.model else 'baselines'} on {_name(report.dataset)}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>recsys report: {_e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="lead">{_e(_lead(report, k))}</p>',
        '<section><h2>Metrics against the baselines</h2><table id="metric-table">',
        _metric_table(report),
        "</table>",
        '<p class="note">Best value of each column in bold. Full ranking of all '
        f"{_int(report.data.get('num_items'))} items for each of the {report.num_users:,} users with ground "
        f"truth in {report.split}, "
        f"{' + '.join(report.excluded)} items masked.</p></section>",
        "<section><h2>Training curve</h2>",
        _figure(CHARTS[0], training_curve(history), _curve_caption(history, config)),
        "</section>",
        f"<section><h2>Where it wins or loses: recall@{k} by segment</h2>",
        _figure(
            CHARTS[1],
            segment_bars([(row.name, row.segments or {}) for row in report.rows], k),
            threshold_label(report.segments["thresholds"]) if report.segments else "",
        ),
        _segment_table(report, k),
        "</section>",
        f"<section><h2>Popularity bias at {k}</h2>",
        _figure(
            CHARTS[2],
            popularity_histogram(
                report.item_popularity.numpy() if report.item_popularity is not None else np.zeros(0),
                {
                    row.name: row.exposure[report.ks.index(k)].numpy()
                    for row in report.rows
                    if row.exposure is not None
                },
                k,
            ),
            "Share of catalogue items, and share of each row's recommendation slots, per popularity bin. "
            "A curve to the right of the grey area favours popular items.",
        ),
        _bias_table(report, k),
        "</section>",
        _geometry(report),
        "<section><h2>How these numbers were obtained</h2><dl>",
        _method(report, config),
        "</dl></section></body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_html_report(report: EvaluationReport, out: Path | str) -> Path:
    """Render ``report`` with its artifact's training log and config, and write the page atomically."""
    history: list[dict[str, Any]] = []
    config: dict[str, Any] = {}
    if report.artifact is not None:
        artifact = Path(report.artifact)
        log = artifact / "log.jsonl"
        try:
            if log.is_file():
                history = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            config = json.loads((artifact / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            msg = f"{artifact}: cannot read the training log or config: {exc}"
            raise InputError(msg) from exc
    return atomic_write_text(Path(out), render_html(report, history=history, artifact_config=config))


def _metric_table(report: EvaluationReport) -> str:
    names = (*METRIC_NAMES, "coverage")
    head = (
        "<thead><tr><th>K</th><th>row</th>"
        + "".join(f"<th>{n}</th>" for n in names)
        + "<th>seconds</th></tr>"
    )
    body = []
    for k in report.ks:
        columns = [f"{name}@{k}" for name in names]
        best = {c: max(row.metrics.get(c, -math.inf) for row in report.rows) for c in columns}
        body.append("<tbody>")
        for j, row in enumerate(report.rows):
            cells = "".join(_cell(row.metrics.get(c), best[c]) for c in columns)
            css = ' class="model"' if row is report.model else ""
            first = f'<th rowspan="{len(report.rows)}">@{k}</th>' if j == 0 else ""
            name = f'<td class="name">{_e(row.name)}</td>'
            body.append(f"<tr{css}>{first}{name}{cells}<td>{row.seconds:.2f}</td></tr>")
        body.append("</tbody>")
    return head + "</thead>" + "".join(body)


def _segment_table(report: EvaluationReport, k: int) -> str:
    sizes = report.segments or {}
    head = ["row"]
    head += [f"{s} users ({sizes.get('users', {}).get(s, {}).get('users', 0):,})" for s in USER_SEGMENTS]
    head += [f"{s} items ({sizes.get('items', {}).get(s, {}).get('items', 0):,})" for s in ITEM_SEGMENTS]
    lines = [
        '<table id="segment-table"><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead>"
    ]
    lines.append("<tbody>")
    for row in report.rows:
        seg = row.segments or {"users": {}, "items": {}}
        values = [seg["users"].get(s, {}).get(f"recall@{k}") for s in USER_SEGMENTS]
        values += [seg["items"].get(s, {}).get(f"recall@{k}") for s in ITEM_SEGMENTS]
        lines.append(f"<tr><td>{_e(row.name)}</td>" + "".join(_cell(v) for v in values) + "</tr>")
    lines.append("</tbody></table>")
    return "".join(lines)


def _bias_table(report: EvaluationReport, k: int) -> str:
    columns = [
        (f"popularity@{k}", "mean popularity of recommended items", 1),
        (f"gini@{k}", "Gini of item exposure", 4),
        (f"tail_share@{k}", "tail items' share of slots", 4),
        (f"coverage@{k}", "catalogue coverage", 4),
    ]
    head = "<tr><th>row</th>" + "".join(f"<th>{_e(label)}</th>" for _, label, _ in columns) + "</tr>"
    body = "".join(
        f"<tr><td>{_e(row.name)}</td>"
        + "".join(_cell(row.metrics.get(key), digits=d) for key, _, d in columns)
        + "</tr>"
        for row in report.rows
    )
    return f'<table id="bias-table"><thead>{head}</thead><tbody>{body}</tbody></table>'


def _geometry(report: EvaluationReport) -> str:
    if report.embedding is None:
        return ""
    e = report.embedding
    return (
        "<section><h2>Embedding geometry</h2>"
        f"<p>Alignment {e['alignment']:.4f} (mean squared distance of normalised user and item embeddings "
        f"over the {report.split} pairs; lower is closer), uniformity {e['uniformity_users']:.4f} (users) "
        f"and {e['uniformity_items']:.4f} (items) (log mean Gaussian potential between normalised "
        "embeddings; lower is more evenly spread), as defined by Wang and Isola (ICML 2020).</p></section>"
    )


def _method(report: EvaluationReport, config: Mapping[str, Any]) -> str:
    data = report.data
    counts = data.get("interactions", {})
    items = [
        ("protocol", _protocol_text(report)),
        ("split", f"{report.split}; masked: {' + '.join(report.excluded)}"),
        (
            "data",
            f"{_int(data.get('num_users'))} users, {_int(data.get('num_items'))} items; interactions: "
            + ", ".join(f"{name} {n:,}" for name, n in counts.items()),
        ),
        ("users evaluated", f"{report.num_users:,} (skipped without ground truth: {report.num_skipped:,})"),
        ("cut-offs", ", ".join(str(k) for k in report.ks)),
    ]
    if report.segments:
        items.append(("segments", threshold_label(report.segments["thresholds"])))
    for row in report.baselines:
        text = row.details.get("description", "")
        if "selection_value" in row.details:  # a graph filter: which one, its settings, how it was chosen
            d = row.details
            text += (
                f"; chosen on {d['selected_on']} ({d['selection_users']:,} users, {d['selection_metric']} "
                f"{d['selection_value']:.4f}) from {len(d['grid'])} grid points"
            )
        items.append((f"baseline {row.name}", f"{text}; {row.seconds:.2f} s"))
    if config:
        trained = config.get("config", {})
        items.append(
            (
                "artifact",
                f"{report.artifact} (id {config.get('artifact_id', '?')}, {config.get('model', '?')}, "
                f"d = {config.get('embedding_dim', '?')}, trained {config.get('trained_at', '?')} under the "
                f"{trained.get('protocol', '?')} protocol)",
            )
        )
        items.append(("parent", _lineage(config.get("parent"))))
    items.append(("dataset", str(report.dataset)))
    items.append(("evaluated", report.created))
    return "".join(f"<dt>{_e(term)}</dt><dd>{_e(text)}</dd>" for term, text in items)


def _lineage(parent: Any) -> str:
    """Where a warm-started artifact came from (``config.json`` ``parent``), or that it started cold."""
    if not isinstance(parent, Mapping):
        return "none: trained from a random initialisation"
    digest = str(parent.get("dataset_sha256") or "?")[:12]
    return (
        f"warm-started from {parent.get('artifact_id', '?')} ({parent.get('path', '?')}, trained "
        f"{parent.get('trained_at', '?')} on a dataset with meta.json sha256 {digest})"
    )


def _protocol_text(report: EvaluationReport) -> str:
    training = " + ".join(report.data.get("training_splits", []))
    name, selected = report.protocol.value, selection_split(report.protocol)
    if selected == TEST_SPLIT:  # the model was picked on the split it reports
        return (
            f"{name}: trained on {training}, best test epoch reported (optimistic; for published comparisons)"
        )
    return f"{name}: trained on {training}, selected on {selected}, {report.split} reported once"


def _lead(report: EvaluationReport, k: int) -> str:
    key = f"recall@{k}"
    parts = [f"{row.name} {row.metrics.get(key, math.nan):.4f}" for row in report.rows]
    return f"{key} on {report.split} ({report.protocol.value} protocol): " + ", ".join(parts) + "."


def _figure(element_id: str, fig: Any, caption: str) -> str:
    return f'<figure id="{element_id}">{to_svg(fig)}<figcaption>{_e(caption)}</figcaption></figure>'


def _curve_caption(history: Sequence[Mapping[str, Any]], config: Mapping[str, Any]) -> str:
    if not history:
        return "No training log (log.jsonl) in the artifact."
    model = config.get("model", "the model")
    return f"{len(history)} epochs of {model}: losses (left), selection-split metrics (right)."


def _cell(value: float | None, best: float | None = None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "<td>–</td>"
    css = ' class="best"' if best is not None and value == best else ""
    return f"<td{css}>{value:.{digits}f}</td>"


def _name(path: str | None) -> str:
    return path or "a dataset"


def _int(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "?"


def _e(text: str) -> str:
    return html.escape(str(text))
