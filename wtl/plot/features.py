"""Figures of what a channel looks for (wtl.features): filters, feature maps, maximisers beside real patches.

Arrays come channel-first, as the npz stores them, e.g. maximizers (K, 3, H, W) in [0, 1];
tensors on the CPU are accepted as they are. Builders return a Figure; saving it is the caller's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from wtl.plot.style import DIFFERENCE_CMAP, FEATURE_CMAP


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


def mean_filters_figure(kernels: Any, title: str) -> Figure:
    """A later block's kernels averaged over their input channels (N, k, k) in [-1, 1], red positive, blue negative."""
    tiles = np.asarray(kernels, dtype=np.float32)
    if tiles.ndim != 3:
        raise ValueError(f"kernels must be (N, k, k), not {tiles.shape}")
    count = tiles.shape[0]
    columns = min(16, count)
    rows = (count + columns - 1) // columns
    fig = Figure(figsize=(0.8 * columns + 1.2, 0.9 * rows + 0.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    artist = None
    for index, ax in enumerate(axes):
        if index >= count:
            ax.set_axis_off()
            continue
        artist = ax.imshow(tiles[index], cmap=DIFFERENCE_CMAP, vmin=-1.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"{index}", fontsize=6, pad=1)
        _bare(ax)
    if artist is not None:
        fig.colorbar(artist, ax=list(axes), fraction=0.02, pad=0.01, label="weight / its kernel's largest |weight|")
    fig.suptitle(title, fontsize=10)
    return fig


def all_maps_figure(image: Any, maps: Any, title: str, cmap: str = FEATURE_CMAP) -> Figure:
    """The picture, then every channel's activation map (C, h, w) of one block on it, one shared colour scale."""
    picture = _rgb(image)
    activations = np.asarray(maps, dtype=np.float32)
    count = activations.shape[0]
    columns = 16 if count > 64 else 8
    rows = (count + 1 + columns - 1) // columns
    fig = Figure(figsize=(0.95 * columns + 1.0, 1.0 * rows + 0.7), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    axes[0].imshow(picture, interpolation="bilinear")
    axes[0].set_title("picture", fontsize=6, pad=1)
    _bare(axes[0])
    top = float(activations.max()) or 1.0
    artist = None
    for channel, (ax, activation) in enumerate(zip(axes[1:], activations)):
        artist = ax.imshow(activation, cmap=cmap, vmin=0.0, vmax=top, interpolation="nearest")
        ax.set_title(f"{channel}", fontsize=6, pad=1)
        _bare(ax)
    for ax in axes[count + 1 :]:
        ax.set_axis_off()
    if artist is not None:
        fig.colorbar(artist, ax=list(axes), fraction=0.02, pad=0.01, label="activation (after ReLU)")
    fig.suptitle(title, fontsize=10)
    return fig


def dream_figure(original: Any, dreamed: Any, title: str, subtitle: str = "") -> Figure:
    """The picture beside its dream, at the same size."""
    fig = Figure(figsize=(7.0, 3.9), layout="constrained")
    left, right = fig.subplots(1, 2)
    for ax, picture, label in ((left, original, "the picture"), (right, dreamed, subtitle or "dreamed")):
        ax.imshow(_rgb(picture), interpolation="bilinear")
        ax.set_title(label, fontsize=9)
        _bare(ax)
    fig.suptitle(title, fontsize=10)
    return fig


def feature_maps_figure(
    image: Any, maps: Any, channels: Sequence[int], weights: Sequence[float], title: str = "", cmap: str = FEATURE_CMAP
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
            activation, cmap=cmap, vmin=0.0, vmax=top, extent=(0, width, height, 0), interpolation="nearest"
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
