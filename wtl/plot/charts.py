"""Figures of the evaluation's numbers: matplotlib's object API only, never pyplot.

Builders return a `matplotlib.figure.Figure`; saving it is the caller's business, so nothing
here needs a display or touches a file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from wtl.evaluation.compare import Comparison
from wtl.evaluation.result import EvaluationResult, ViewScores
from wtl.plot.style import FEATURE_CMAP, LOOK, Look

Bar = tuple[Callable[[ViewScores], float | None], str, str]  # (the figure of a view, label, colour)
POINTING_BARS: tuple[Bar, ...] = (
    (lambda s: s.pointing(15), "pointing game 15 px", "#2b6cb0"),
    (lambda s: s.pointing(8), "pointing game 8 px", "#90cdf4"),
    (lambda s: s.pointing(4), "pointing game 4 px", "#bee3f8"),
    (lambda s: s.pointing(0), "peak inside the mask", "#e2e8f0"),
)
AUC_BARS: tuple[Bar, ...] = (
    (lambda s: s.mean("deletion_auc"), "deletion AUC (lower is better)", "#c53030"),
    (lambda s: s.mean("insertion_auc"), "insertion AUC", "#38a169"),
)


def _rows(result: EvaluationResult) -> list[tuple[str, ViewScores]]:
    """(label, scores) per method and view, in the evaluation's order; the fused view named by its rule."""
    rows = []
    for method, view, scores in result.views():
        label = method if view == "last" else f"{method}\n{view}"
        rows.append((f"{label} ({result.fusion_rule})" if view == "fused" else label, scores))
    return rows


def _grouped_bars(ax: Any, rows: Sequence[tuple[str, ViewScores]], bars: Sequence[Bar]) -> None:
    """One group of bars per row, one bar per figure; a missing value (None) is left out, not drawn as 0."""
    positions = np.arange(len(rows))
    width = 0.8 / len(bars)
    for i, (figure, label, colour) in enumerate(bars):
        shown = [(p, v) for p, (_, scores) in zip(positions, rows) if (v := figure(scores)) is not None]
        if shown:
            xs, ys = zip(*shown)
            drawn = ax.bar(np.asarray(xs) + (i - (len(bars) - 1) / 2) * width, ys, width, label=label, color=colour)
            ax.bar_label(drawn, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(positions, [label for label, _ in rows], fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.grid(axis="y", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper right")
    else:  # e.g. the pointing game of a face model: there is no stain to point at
        ax.text(0.5, 0.5, "not measured for this model", transform=ax.transAxes, ha="center", color="grey")


def metrics_chart(result: EvaluationResult, title: str = "") -> Figure:
    """Bars of an evaluation: pointing game at 15, 8, 4 and 0 px (top), deletion and insertion AUC (bottom)."""
    rows = _rows(result)
    if not rows:
        raise ValueError("the evaluation holds no heatmap method to chart")
    fig = Figure(figsize=(max(6.0, 1.4 * len(rows) + 2.0), 7.0), layout="constrained")
    top, bottom = fig.subplots(2, 1)
    _grouped_bars(top, rows, POINTING_BARS)
    counted = max((scores.counted for _, scores in rows), default=0)
    top.set_ylabel("hit rate")
    counted_what = "stained cells" if result.truth is None else "pictures with ground truth"
    top.set_title(f"does the map's peak fall on {result.truth_name}? ({counted} {counted_what})", fontsize=10)
    _grouped_bars(bottom, rows, AUC_BARS)
    bottom.set_ylabel("area under the probability curve")
    bottom.set_title("deleting / inserting pixels in the map's order", fontsize=10)
    report = result.classification
    heading = title or f"heatmaps explaining {result.explained_class}"
    heading += f"  (accuracy {100 * report.accuracy:.1f}% on {report.images} images)"
    fig.suptitle(heading, fontsize=11)
    return fig


def compare_figure(comparison: Comparison, title: str = "", look: Look = LOOK) -> Figure:
    """Per class a row: each model's average map, then their pixel-wise std; pair numbers in the title."""
    models = list(comparison.maps)
    classes = list(comparison.std)
    if not models or not classes:
        raise ValueError("the comparison holds no maps to draw")
    columns = len(models) + 1
    fig = Figure(figsize=(2.8 * columns + 0.8, 2.9 * len(classes) + 0.9), layout="constrained")
    axes = fig.subplots(len(classes), columns, squeeze=False)
    for row, name in enumerate(classes):
        for column, model in enumerate(models):
            ax = axes[row][column]
            image = ax.imshow(comparison.maps[model][name], cmap=look.cmap, vmin=0.0, vmax=1.0)
            ax.set_title(f"{model}\n{name}: average map", fontsize=9)
        ax = axes[row][-1]
        spread = ax.imshow(comparison.std[name], cmap=FEATURE_CMAP, vmin=0.0)
        ax.set_title(f"{name}: std across models", fontsize=9)
        fig.colorbar(spread, ax=ax, fraction=0.046, pad=0.02)
    fig.colorbar(image, ax=list(axes[:, -2]), fraction=0.046, pad=0.02, label=f"mean {look.label}")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    pairs = "; ".join(
        f"{pair}: rho {_two(scores.mean_spearman())}, top-10% IoU {_two(scores.to_json()['top10_iou'])}"
        for pair, scores in comparison.pairs.items()
    )
    heading = title or f"{comparison.method} maps of {comparison.images} images"
    fig.suptitle(f"{heading}\n{pairs}" if pairs else heading, fontsize=10)
    return fig


def _two(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
