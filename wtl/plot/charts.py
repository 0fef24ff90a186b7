"""Figures of the evaluation's numbers: matplotlib's object API only, never pyplot.

Builders return a `matplotlib.figure.Figure`; saving it is the caller's business, so nothing
here needs a display or touches a file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from wtl.evaluation.compare import Comparison
from wtl.evaluation.result import EvaluationResult
from wtl.metrics.bootstrap import unit_count
from wtl.plot.style import FEATURE_CMAP, LOOK, Look, whisker_lengths

Bar = tuple[str, str, str]  # (the figure's key in evaluate's JSON, label, colour)
POINTING_BARS: tuple[Bar, ...] = (
    ("pointing_15px", "pointing game 15 px", "#2b6cb0"),
    ("pointing_8px", "pointing game 8 px", "#90cdf4"),
    ("pointing_4px", "pointing game 4 px", "#bee3f8"),
    ("pointing_0px", "peak inside the mask", "#e2e8f0"),
)
AUC_BARS: tuple[Bar, ...] = (
    ("deletion_auc", "deletion AUC (lower is better)", "#c53030"),
    ("insertion_auc", "insertion AUC", "#38a169"),
)
Row = tuple[str, str, str]  # (label on the axis, method, view)


def _rows(result: EvaluationResult) -> list[Row]:
    """(label, method, view) per method and view, in the evaluation's order; the fused view named by its rule."""
    rows = []
    for method, view, _ in result.views():
        label = method if view == "last" else f"{method}\n{view}"
        rows.append((f"{label} ({result.fusion_rule})" if view == "fused" else label, method, view))
    return rows


def _figure(result: EvaluationResult, row: Row, key: str) -> tuple[float, Any] | None:
    """(value, 95 % interval or None) of one bar: the mean of its per-image values; None where none was measured."""
    _, method, view = row
    values = result.methods[method][view].per_image(key)
    measured = values[~np.isnan(values)]
    return (float(measured.mean()), result.ci(method, view, key)) if len(measured) else None


def _grouped_bars(ax: Any, result: EvaluationResult, rows: Sequence[Row], bars: Sequence[Bar]) -> None:
    """One group of bars per row, one bar per figure with its 95 % interval; an unmeasured one is left out, not 0."""
    positions = np.arange(len(rows))
    width = 0.8 / len(bars)
    for i, (key, label, colour) in enumerate(bars):
        shown = [(p, f) for p, row in zip(positions, rows) if (f := _figure(result, row, key)) is not None]
        if not shown:
            continue
        xs = np.asarray([p for p, _ in shown]) + (i - (len(bars) - 1) / 2) * width
        ys = np.asarray([value for _, (value, _) in shown])
        errors = whisker_lengths(ys, [ci for _, (_, ci) in shown])
        drawn = ax.bar(xs, ys, width, yerr=errors, label=label, color=colour, capsize=2, error_kw={"elinewidth": 0.8})
        ax.bar_label(drawn, fmt="%.2f", fontsize=7, padding=1)  # above the whisker, which bar_label knows of
    ax.set_xticks(positions, [label for label, _, _ in rows], fontsize=8)
    ax.set_ylim(0, 1.12)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: bars reach the top on cells


def _measured(result: EvaluationResult, rows: Sequence[Row], bars: Sequence[Bar]) -> bool:
    """Whether any bar of the panel has a value (faces without --masks/--boxes have no pointing game)."""
    # The per-image values alone: no bootstrap just to learn whether there is a bar to draw.
    views = [result.methods[method][view] for _, method, view in rows]
    return any(not np.isnan(scores.per_image(key)).all() for scores in views for key, _, _ in bars)


def metrics_chart(result: EvaluationResult, title: str = "") -> Figure:
    """Bars with 95 % intervals: the pointing game at 15, 8, 4 and 0 px (where measured), deletion and insertion AUC."""
    rows = _rows(result)
    if not rows:
        raise ValueError("the evaluation holds no heatmap method to chart")
    pointing = _measured(result, rows, POINTING_BARS)
    fig = Figure(figsize=(max(6.0, 1.4 * len(rows) + 2.0) + 1.8, 7.0 if pointing else 4.0), layout="constrained")
    axes = fig.subplots(2 if pointing else 1, 1, squeeze=False)[:, 0]
    if pointing:
        counted = max((scores.counted for _, _, scores in result.views()), default=0)
        counted_what = "stained cells" if result.truth is None else "pictures with ground truth"
        axes[0].set_title(f"does the map's peak fall on {result.truth_name}? ({counted} {counted_what})", fontsize=10)
        axes[0].set_ylabel("hit rate")
        _grouped_bars(axes[0], result, rows, POINTING_BARS)
    faithful = max((scores.faithful_images for _, _, scores in result.views()), default=0)
    axes[-1].set_title(f"deleting / inserting pixels in the map's order ({faithful} images)", fontsize=10)
    axes[-1].set_ylabel("area under the probability curve")
    if _measured(result, rows, AUC_BARS):
        _grouped_bars(axes[-1], result, rows, AUC_BARS)
    else:  # --faithful-images 0
        axes[-1].text(0.5, 0.5, "not measured (--faithful-images 0)", transform=axes[-1].transAxes, ha="center")
    report = result.classification
    described = result.resampler.describe()
    heading = title or f"heatmaps explaining {result.explained_class}"
    heading += f"  (accuracy {100 * report.accuracy:.1f}% on {report.images} images)"
    fig.suptitle(heading, fontsize=11)
    resampled = unit_count(described["units"], described["unit"])
    note = f"whiskers: 95 % bootstrap intervals over {resampled}"
    if not pointing:
        note += "; no pointing game: no ground truth (stain masks, or --masks / --boxes / --points)"
    fig.supxlabel(note, fontsize=8, color="#4a5568")
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
        f"{pair}: rho {_two(figures['spearman'], figures['spearman_ci95'])}, "
        f"top-10% IoU {_two(figures['top10_iou'], figures['top10_iou_ci95'])}"
        for pair, figures in ((pair, scores.to_json()) for pair, scores in comparison.pairs.items())
    )
    heading = title or f"{comparison.method} maps of {comparison.images} images"
    if pairs and comparison.bootstrap:
        pairs += f"\n(95 % intervals over {unit_count(comparison.bootstrap['units'], comparison.bootstrap['unit'])})"
    fig.suptitle(f"{heading}\n{pairs}" if pairs else heading, fontsize=10)
    return fig


def _two(value: float | None, bounds: Sequence[float] | None = None) -> str:
    """A figure to two decimals, with its 95 % interval in brackets where there is one."""
    if value is None:
        return "n/a"
    return f"{value:.2f}" + (f" [{bounds[0]:.2f}, {bounds[1]:.2f}]" if bounds else "")
