"""The charts of an artifact and its report, as matplotlib figures (no pyplot, so no global state).

Each function returns a :class:`matplotlib.figure.Figure`; the caller saves it (``curve.png`` in the artifact)
or inlines it (:func:`to_svg`, the HTML report). Nothing here computes a metric.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from recsys.evaluation.segments import ITEM_SEGMENTS, USER_SEGMENTS


def training_curve(history: Sequence[Mapping[str, Any]]) -> Figure:
    """Loss terms and the evaluated metrics per epoch, side by side (the records of ``log.jsonl``)."""
    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    for term in ("loss", "bpr", "cl"):
        if any(r.get(term) for r in history):
            left.plot(epochs, [r.get(term, np.nan) for r in history], label=term, marker=".")
    left.set(xlabel="epoch", ylabel="training loss", title="losses")
    if left.lines:
        left.legend()
    for split in ("valid", "test"):
        points = [(r["epoch"], r[split]) for r in history if split in r]
        for metric in ("recall@20", "ndcg@20"):
            if points and metric in points[0][1]:
                right.plot(
                    [e for e, _ in points],
                    [m[metric] for _, m in points],
                    label=f"{split} {metric}",
                    marker=".",
                )
    right.set(xlabel="epoch", title="evaluation")
    if right.lines:
        right.legend()
    fig.tight_layout()
    return fig


def segment_bars(rows: Sequence[tuple[str, Mapping[str, Any]]], k: int) -> Figure:
    """Recall@K of each row by user-activity segment and by item-popularity segment, as grouped bars.

    Args:
        rows: ``(name, segments)`` per row, ``segments`` as in a report row.
        k: The cut-off shown.
    """
    fig = Figure(figsize=(10, 3.8))
    panels = fig.subplots(1, 2)
    width = 0.8 / max(len(rows), 1)
    for ax, side, names in zip(panels, ("users", "items"), (USER_SEGMENTS, ITEM_SEGMENTS), strict=True):
        x = np.arange(len(names))
        for j, (name, segments) in enumerate(rows):
            values = [segments[side][s][f"recall@{k}"] for s in names]
            ax.bar(x + (j - (len(rows) - 1) / 2) * width, values, width, label=name)
        ax.set_xticks(x, [f"{s}\n({rows[0][1][side][s]['users']:,} users)" for s in names] if rows else names)
        title = "user activity" if side == "users" else "item popularity (recall on the segment's items)"
        ax.set(ylabel=f"recall@{k}", title=f"by {title}")
    if rows:
        fig.legend(*panels[0].get_legend_handles_labels(), loc="upper center", ncols=len(rows), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    return fig


def popularity_histogram(item_popularity: np.ndarray, exposures: Mapping[str, np.ndarray], k: int) -> Figure:
    """Training popularity of the recommended items (share of top-K slots) against the catalogue's items.

    Args:
        item_popularity: Training interactions per item, ``(num_items,)``.
        exposures: Per row, how many top-K lists each item is in, ``(num_items,)``.
        k: The cut-off shown.
    """
    pop = np.asarray(item_popularity, dtype=np.float64)
    top = max(float(pop.max()) if pop.size else 1.0, 1.0)
    edges = np.unique(np.concatenate([[0.0, 1.0], np.geomspace(1.0, top + 1.0, 25)]))
    fig = Figure(figsize=(10, 3.8))
    ax = fig.subplots()
    catalogue = np.histogram(pop, bins=edges)[0] / max(pop.size, 1)
    ax.stairs(catalogue, edges, fill=True, alpha=0.25, color="grey", label="catalogue (share of items)")
    for name, exposure in exposures.items():
        weights = np.asarray(exposure, dtype=np.float64)
        share = np.histogram(pop, bins=edges, weights=weights)[0] / max(float(weights.sum()), 1e-300)
        ax.stairs(share, edges, label=f"{name} (share of top-{k} slots)", linewidth=1.5)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set(
        xlabel="item popularity (training interactions, log scale)",
        ylabel="share",
        title=f"popularity of recommended items at {k} vs the catalogue",
    )
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def to_svg(fig: Figure) -> str:
    """The figure as an inline ``<svg>`` element (no XML prolog or DOCTYPE)."""
    buffer = io.StringIO()
    # Deterministic element ids, and text kept as text (smaller, and selectable in the page).
    with matplotlib.rc_context({"svg.hashsalt": "recsys", "svg.fonttype": "none"}):
        fig.savefig(buffer, format="svg")
    text = buffer.getvalue()
    return re.sub(r"^.*?(?=<svg)", "", text, flags=re.S)
