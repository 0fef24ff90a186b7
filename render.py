"""Matplotlib figures only: images and heatmaps in, PNG files out.

Figures are built with matplotlib's object API (no pyplot), so rendering never
needs a display and never blocks; `show_files` opens saved PNGs only when asked
and only where a display exists.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

CMAP = "jet"
ALPHA = 0.5


def overlay(ax, image: np.ndarray, heat: np.ndarray | None, title: str = "", alpha: float = ALPHA) -> object:
    """Draw an RGB image and, stretched exactly over it, a [0, 1] heatmap (jet, alpha 0.5).

    The heatmap lives at the network's square input resolution; giving it the
    image's own extent stretches it back over the original picture, which is
    shown at its true aspect ratio, so nothing is distorted and the two align.
    """
    height, width = image.shape[:2]
    # Cells are often smaller than the panel: smooth the upscaling instead of showing blocks.
    ax.imshow(image, extent=(0, width, height, 0), interpolation="bilinear")
    artist = None
    if heat is not None:
        artist = ax.imshow(
            heat, cmap=CMAP, alpha=alpha, vmin=0.0, vmax=1.0, extent=(0, width, height, 0), interpolation="bilinear"
        )
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    return artist


def save(fig: Figure, path: Path) -> Path:
    """Write a figure as PNG (creating the folder) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def single_figure(image: np.ndarray, heat: np.ndarray, title: str, caption: str = "") -> Figure:
    """Original next to its CAM overlay, titled with class and probability."""
    fig = Figure(figsize=(7.2, 3.9), layout="constrained")
    left, right = fig.subplots(1, 2)
    overlay(left, image, None, "original")
    artist = overlay(right, image, heat, title)
    fig.colorbar(artist, ax=right, fraction=0.046, pad=0.02, label="relative evidence")
    if caption:
        fig.suptitle(caption, fontsize=9)
    return fig


def blocks_figure(
    image: np.ndarray,
    mean_heats: Sequence[np.ndarray],
    cam_heats: Sequence[np.ndarray],
    block_titles: Sequence[str],
    suptitle: str,
    fused: np.ndarray | None = None,
) -> Figure:
    """Every-block view: top row the mean activation per block, bottom row each block's exact CAM."""
    fig = Figure(figsize=(13.5, 6.2), layout="constrained")
    axes = fig.subplots(2, 1 + len(cam_heats))
    overlay(axes[0][0], image, None, "original")
    if fused is None:
        axes[1][0].set_axis_off()
    else:
        overlay(axes[1][0], image, fused, "fused: max over blocks")
    for i, (mean_heat, cam_heat, title) in enumerate(zip(mean_heats, cam_heats, block_titles), start=1):
        overlay(axes[0][i], image, mean_heat, f"block {i}: mean activation")
        artist = overlay(axes[1][i], image, cam_heat, title)
    fig.colorbar(artist, ax=list(axes[:, -1]), fraction=0.046, pad=0.02, label="relative evidence")
    fig.suptitle(suptitle, fontsize=12)
    return fig


def contact_sheet(
    images: Sequence[np.ndarray], heats: Sequence[np.ndarray], titles: Sequence[str], correct: Sequence[bool | None]
) -> Figure:
    """A grid of overlays; titles green where the prediction is right, red where wrong."""
    count = len(images)
    columns = min(5, count)
    rows = (count + columns - 1) // columns
    fig = Figure(figsize=(2.6 * columns, 2.9 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax, image, heat, title, ok in zip(axes, images, heats, titles, correct):
        overlay(ax, image, heat, title)
        if ok is not None:
            ax.title.set_color("darkgreen" if ok else "firebrick")
    for ax in axes[count:]:
        ax.set_axis_off()
    return fig


def gender100_figure(
    faces: Sequence[np.ndarray], heats: Sequence[np.ndarray], titles: Sequence[str], suptitle: str
) -> Figure:
    """The averaged maps side by side, each over the mean face of the images that made it."""
    fig = Figure(figsize=(4.2 * len(heats) + 0.8, 4.8), layout="constrained")
    axes = fig.subplots(1, len(heats))
    for ax, face, heat, title in zip(np.atleast_1d(axes), faces, heats, titles):
        artist = overlay(ax, face, heat, title)
    fig.colorbar(artist, ax=list(np.atleast_1d(axes)), fraction=0.046, pad=0.02, label="mean relative evidence")
    fig.suptitle(suptitle, fontsize=11)
    return fig


def blend_figure(blended: np.ndarray, title: str, difference: np.ndarray | None = None, face=None) -> Figure:
    """OverlayMaleFemale: the blend of two maps, and (when maps are known) male minus female."""
    panels = 1 if difference is None else 2
    fig = Figure(figsize=(4.6 * panels, 4.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, panels))
    axes[0].imshow(blended)
    axes[0].set_title(title, fontsize=10)
    axes[0].set_axis_off()
    if difference is not None:
        height, width = difference.shape
        if face is not None:
            axes[1].imshow(face, extent=(0, width, height, 0))
        limit = float(np.abs(difference).max()) or 1.0
        artist = axes[1].imshow(
            difference, cmap="RdBu_r", vmin=-limit, vmax=limit, alpha=0.6, extent=(0, width, height, 0)
        )
        axes[1].set_title("male minus female (red: more male)", fontsize=10)
        axes[1].set_axis_off()
        fig.colorbar(artist, ax=axes[1], fraction=0.046, pad=0.02)
    return fig


def display_available() -> bool:
    """True where a window can open (always on Windows/macOS; X11 or Wayland on Linux)."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def show_files(paths: Sequence[Path]) -> bool:
    """Open saved PNGs in windows; returns False (and opens nothing) without a display."""
    if not paths or not display_available():
        return False
    import matplotlib.pyplot as plt  # only here: importing pyplot picks a GUI backend

    for path in paths:
        fig = plt.figure(figsize=(9, 5))
        plt.imshow(plt.imread(path))
        plt.axis("off")
        fig.canvas.manager.set_window_title(path.name) if fig.canvas.manager else None
    plt.show()
    return True
