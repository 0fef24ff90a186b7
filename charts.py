"""Figures of the evaluation's numbers (evaluation.py): matplotlib's object API only, never pyplot.

Builders return a `matplotlib.figure.Figure`; saving it (render.save) is the caller's business,
so nothing here needs a display or touches a file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

CMAP = "jet"

# (metric key, label, colour): one bar per metric in each method/view group.
POINTING_BARS = (("pointing_15px", "pointing game 15 px", "#2b6cb0"), ("pointing_8px", "pointing game 8 px", "#90cdf4"))
AUC_BARS = (
    ("deletion_auc", "deletion AUC (lower is better)", "#c53030"),
    ("insertion_auc", "insertion AUC", "#38a169"),
)


def _rows(result: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(label, metrics) per method and view, in the evaluation's order."""
    rows = []
    for method, views in result["methods"].items():
        for view, metrics in views.items():
            rows.append((method if view == "last" else f"{method}\n{view}", metrics))
    return rows


def _grouped_bars(ax: Any, rows: Sequence[tuple[str, Mapping[str, Any]]], bars: Sequence[tuple[str, str, str]]) -> None:
    """One group of bars per row, one bar per metric; a missing value (None) is left out, not drawn as 0."""
    positions = np.arange(len(rows))
    width = 0.8 / len(bars)
    for i, (key, label, colour) in enumerate(bars):
        values = [metrics.get(key) for _, metrics in rows]
        shown = [(p, v) for p, v in zip(positions, values) if v is not None]
        if shown:
            xs, ys = zip(*shown)
            drawn = ax.bar(np.asarray(xs) + (i - (len(bars) - 1) / 2) * width, ys, width, label=label, color=colour)
            ax.bar_label(drawn, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(positions, [label for label, _ in rows], fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")


def metrics_chart(result: Mapping[str, Any], title: str = "") -> Figure:
    """Bars of an evaluation: pointing game at 15 and 8 px (top), deletion and insertion AUC (bottom)."""
    rows = _rows(result)
    if not rows:
        raise ValueError("the evaluation holds no heatmap method to chart")
    fig = Figure(figsize=(max(6.0, 1.1 * len(rows) + 2.0), 7.0), layout="constrained")
    top, bottom = fig.subplots(2, 1)
    _grouped_bars(top, rows, POINTING_BARS)
    counted = max((metrics.get("pointing_counted", 0) for _, metrics in rows), default=0)
    top.set_ylabel("hit rate")
    top.set_title(f"does the map's peak fall on the stain? ({counted} stained cells)", fontsize=10)
    _grouped_bars(bottom, rows, AUC_BARS)
    bottom.set_ylabel("area under the probability curve")
    bottom.set_title("deleting / inserting pixels in the map's order", fontsize=10)
    report = result.get("classification", {})
    heading = title or f"heatmaps explaining {result.get('explained_class', '?')}"
    if "accuracy" in report:
        heading += f"  (accuracy {100 * report['accuracy']:.1f}% on {report['images']} images)"
    fig.suptitle(heading, fontsize=11)
    return fig


def _two(value: float | None) -> str:
    """Two decimals, or 'n/a' where a number is undefined."""
    return "n/a" if value is None else f"{value:.2f}"


def compare_figure(comparison: Mapping[str, Any], title: str = "") -> Figure:
    """Per class a row: each model's average map, then their pixel-wise std; pair numbers in the title.

    `comparison` is what evaluation.compare_models returns ({'numbers', 'maps', 'std'}).
    """
    maps: Mapping[str, Mapping[str, np.ndarray]] = comparison["maps"]
    std: Mapping[str, np.ndarray] = comparison["std"]
    models = list(maps)
    classes = list(std)
    if not models or not classes:
        raise ValueError("the comparison holds no maps to draw")
    columns = len(models) + 1
    fig = Figure(figsize=(2.8 * columns + 0.8, 2.9 * len(classes) + 0.9), layout="constrained")
    axes = fig.subplots(len(classes), columns, squeeze=False)
    for row, name in enumerate(classes):
        for column, model in enumerate(models):
            ax = axes[row][column]
            image = ax.imshow(maps[model][name], cmap=CMAP, vmin=0.0, vmax=1.0)
            ax.set_title(f"{model}\n{name}: average map", fontsize=9)
        ax = axes[row][-1]
        spread = ax.imshow(std[name], cmap="magma", vmin=0.0)
        ax.set_title(f"{name}: std across models", fontsize=9)
        fig.colorbar(spread, ax=ax, fraction=0.046, pad=0.02)
    fig.colorbar(image, ax=list(axes[:, -2]), fraction=0.046, pad=0.02, label="mean relative evidence")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    numbers = comparison.get("numbers", {})
    pairs = "; ".join(
        f"{pair}: rho {v['spearman']:.2f}, top-10% IoU {v['top10_iou']:.2f}"
        for pair, v in numbers.get("pairs", {}).items()
    )
    heading = title or f"{numbers.get('method', '')} maps of {numbers.get('images', '?')} images"
    fig.suptitle(f"{heading}\n{pairs}" if pairs else heading, fontsize=10)
    return fig
