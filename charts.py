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
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper right")
    else:  # e.g. the pointing game of a face model: there is no stain to point at
        ax.text(0.5, 0.5, "not measured for this model", transform=ax.transAxes, ha="center", color="grey")


def metrics_chart(result: Mapping[str, Any], title: str = "") -> Figure:
    """Bars of an evaluation: pointing game at 15, 8, 4 and 0 px (top), deletion and insertion AUC (bottom).

    The fused view is labelled with its rule (result['fusion_rule']) where the evaluation names one.
    """
    rule = result.get("fusion_rule")
    rows = [(f"{label} ({rule})" if rule and label.endswith("\nfused") else label, m) for label, m in _rows(result)]
    if not rows:
        raise ValueError("the evaluation holds no heatmap method to chart")
    # Results saved before the 4 px tolerance existed have no pointing_4px: its bar is then left out.
    pointing = (
        *POINTING_BARS,
        ("pointing_4px", "pointing game 4 px", "#bee3f8"),
        ("pointing_0px", "peak inside the stain", "#e2e8f0"),
    )
    fig = Figure(figsize=(max(6.0, 1.4 * len(rows) + 2.0), 7.0), layout="constrained")
    top, bottom = fig.subplots(2, 1)
    _grouped_bars(top, rows, pointing)
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


# ----- features figures
# What a channel looks for (features.py): arrays come channel-first, as the npz stores them,
# e.g. maximizers (K, 3, H, W) in [0, 1]; tensors on the CPU are accepted as they are.

FEATURE_CMAP = "magma"


def _rgb(image: Any) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) for imshow; an (H, W, 3) array passes unchanged."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    return np.clip(array, 0.0, 1.0)


def _bare(ax: Any) -> None:
    """No ticks, no frame labels: a picture panel."""
    ax.set_xticks([])
    ax.set_yticks([])


def filters_figure(kernels: Any, title: str = "block 1 filters") -> Figure:
    """Block 1's RGB kernels (N, 3, 5, 5), each already scaled to [0, 1], as a grid of colour tiles."""
    tiles = np.asarray(kernels, dtype=np.float32)
    if tiles.ndim != 4 or tiles.shape[1] != 3:
        raise ValueError(f"kernels must be (N, 3, k, k), not {tiles.shape}")
    count = tiles.shape[0]
    columns = min(8, count)
    rows = (count + columns - 1) // columns
    fig = Figure(figsize=(1.25 * columns + 0.4, 1.35 * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for index, ax in enumerate(axes):
        if index >= count:
            ax.set_axis_off()
            continue
        ax.imshow(_rgb(tiles[index]), interpolation="nearest")
        ax.set_title(f"{index}", fontsize=8)
        _bare(ax)
    fig.suptitle(f"{title} (each kernel scaled to its own min..max)", fontsize=10)
    return fig


def feature_maps_figure(
    image: Any, maps: Any, channels: Sequence[int], weights: Sequence[float], title: str = ""
) -> Figure:
    """The image, then each chosen channel's activation map (K, h, w) over it, titled with its weight.

    All maps share one colour scale (0 to the largest activation), so a weak channel looks weak.
    """
    picture = _rgb(image)
    activations = np.asarray(maps, dtype=np.float32)
    count = activations.shape[0]
    columns = min(5, count + 1)
    rows = (count + 1 + columns - 1) // columns
    fig = Figure(figsize=(2.5 * columns + 0.8, 2.6 * rows + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    axes[0].imshow(picture, interpolation="bilinear")
    axes[0].set_title("image", fontsize=9)
    _bare(axes[0])
    top = float(activations.max()) or 1.0
    height, width = picture.shape[:2]
    artist = None
    for ax, activation, channel, weight in zip(axes[1:], activations, channels, weights):
        # The map at block resolution, stretched over the image it was computed from.
        artist = ax.imshow(
            activation, cmap=FEATURE_CMAP, vmin=0.0, vmax=top, extent=(0, width, height, 0), interpolation="nearest"
        )
        peak = float(activation.max())
        ax.set_title(f"channel {int(channel)}\nweight {float(weight):+.3g}, max {peak:.2f}", fontsize=8)
        _bare(ax)
    for ax in axes[count + 1 :]:
        ax.set_axis_off()
    if artist is not None:
        fig.colorbar(artist, ax=list(axes[1 : count + 1]), fraction=0.03, pad=0.02, label="activation (after ReLU)")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def channel_sheet(
    maximizers: Any,
    activations: Sequence[float],
    examples: Any,
    example_activations: Any,
    channels: Sequence[int],
    weights: Sequence[float],
    best_real: Sequence[float] | None = None,
    title: str = "",
) -> Figure:
    """Microscope-style: per channel a row, its synthetic maximizer then its n strongest real patches.

    The row's label gives the channel, its weight, and the maximizer's mean activation against
    the best mean a real image reaches (best_real; the same objective); each patch is titled
    with the channel's peak activation in it.
    """
    synthetic = np.asarray(maximizers, dtype=np.float32)
    patches = np.asarray(examples, dtype=np.float32)
    peaks = np.asarray(example_activations, dtype=np.float32)
    count, per_row = patches.shape[:2]
    if synthetic.shape[0] != count:
        raise ValueError(f"{synthetic.shape[0]} maximizers for {count} channels of examples")
    # The maximizer gets a column twice as wide as a patch.
    fig = Figure(figsize=(2.4 + 1.25 * per_row, 2.0 * count + 0.6), layout="constrained")
    grid = fig.add_gridspec(count, per_row + 2)
    for row in range(count):
        ax = fig.add_subplot(grid[row, :2])
        ax.imshow(_rgb(synthetic[row]), interpolation="bilinear")
        _bare(ax)
        versus = "" if best_real is None else f" vs best real {float(best_real[row]):.2f}"
        ax.set_title(f"synthetic: mean {float(activations[row]):.2f}{versus}", fontsize=8)
        ax.set_ylabel(f"channel {int(channels[row])}\nweight {float(weights[row]):+.3g}", fontsize=9)
        for column in range(per_row):
            ax = fig.add_subplot(grid[row, column + 2])
            ax.imshow(_rgb(patches[row, column]), interpolation="nearest")
            ax.set_title(f"peak {float(peaks[row, column]):.2f}", fontsize=7)
            _bare(ax)
    fig.suptitle(title or "what each channel looks for: synthetic maximizer and strongest real patches", fontsize=10)
    return fig


def class_maximizer_figure(images: Any, logits: Sequence[float], blocks: Sequence[int], class_name: str) -> Figure:
    """One image per block head (B, 3, H, W), each maximising the class logit through that head."""
    pictures = np.asarray(images, dtype=np.float32)
    count = pictures.shape[0]
    fig = Figure(figsize=(3.0 * count + 0.4, 3.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, count, squeeze=False)).ravel()
    for ax, picture, logit, block in zip(axes, pictures, logits, blocks):
        ax.imshow(_rgb(picture), interpolation="bilinear")
        ax.set_title(f"block {int(block)} head\nlogit {float(logit):.2f}", fontsize=9)
        _bare(ax)
    fig.suptitle(f"images maximising {class_name}", fontsize=10)
    return fig
