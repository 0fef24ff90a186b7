"""Matplotlib figures only: images and heatmaps in, PNG files out.

Figures are built with matplotlib's object API (no pyplot), so rendering never
needs a display and never blocks; `show_files` opens saved PNGs only when asked
and only where a display exists.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from wtl.metrics import faces as face_regions
from wtl.plot.style import DIFFERENCE_ALPHA, DIFFERENCE_CMAP, DPI, LOOK, Look, greyscale, title_colour, whisker_lengths


def overlay(ax: Axes, image: np.ndarray, heat: np.ndarray | None, title: str = "", look: Look = LOOK) -> AxesImage:
    """Draw an RGB image and, stretched exactly over it, a heatmap in the look's colours (jet at alpha 0.5).

    The heatmap lives at the network's square input resolution; giving it the
    image's own extent stretches it back over the original picture, which is
    shown at its true aspect ratio, so nothing is distorted and the two align.
    """
    height, width = image.shape[:2]
    picture = greyscale(image) if look.grey else image
    # Cells are often smaller than the panel: smooth the upscaling instead of showing blocks.
    artist = ax.imshow(picture, extent=(0, width, height, 0), interpolation="bilinear")
    if heat is not None:
        artist = ax.imshow(
            heat,
            cmap=look.cmap,
            alpha=look.opacity(heat),
            vmin=look.vmin,
            vmax=look.vmax,
            extent=(0, width, height, 0),
            interpolation="bilinear",
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
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def single_figure(image: np.ndarray, heat: np.ndarray, title: str, caption: str = "", look: Look = LOOK) -> Figure:
    """Original next to its CAM overlay, titled with class and probability."""
    fig = Figure(figsize=(7.2, 3.9), layout="constrained")
    left, right = fig.subplots(1, 2)
    overlay(left, image, None, "original")
    artist = overlay(right, image, heat, title, look)
    fig.colorbar(artist, ax=right, fraction=0.046, pad=0.02, label=look.label)
    if caption:
        fig.suptitle(caption, fontsize=9)
    return fig


_BAR_END = re.compile(r"end = ±?\S+")


def _bar_end(look: Look) -> str:
    """A shared-scale colour bar's own end, e.g. 'end ±85.4' (0..x for a map that is never negative)."""
    return f"end ±{look.vmax:.3g}" if look.vmin < 0 else f"0 to {look.vmax:.3g}"


def blocks_figure(
    image: np.ndarray,
    mean_heats: Sequence[np.ndarray],
    cam_heats: Sequence[np.ndarray],
    block_titles: Sequence[str],
    suptitle: str,
    fused: np.ndarray | None = None,
    fused_title: str = "fused",
    look: Look = LOOK,
    block_looks: Sequence[Look] | None = None,
    block_names: Sequence[str] | None = None,
) -> Figure:
    """Every-block view: top row the mean activation per block, bottom row each block's map, first their fusion.

    With `block_looks` (one per block: the shared scale, which differs by block) each map gets its own
    colour bar; the mean activations and the fused map keep `look` (per image, no units). `block_names`
    name the blocks in the top row (default 'block 1'...; a torchvision network's stages: 'layer1'...).
    """
    fig = Figure(figsize=(13.5, 6.9 if block_looks else 6.2), layout="constrained")
    axes = fig.subplots(2, 1 + len(cam_heats))
    overlay(axes[0][0], image, None, "original")
    if fused is None:
        axes[1][0].set_axis_off()
    else:
        artist = overlay(axes[1][0], image, fused, fused_title, look)
        if block_looks:
            fig.colorbar(artist, ax=axes[1][0], location="bottom", fraction=0.05, pad=0.02, label="per image")
    looks = list(block_looks) if block_looks else [look] * len(cam_heats)
    for i, (mean_heat, cam_heat, title, own) in enumerate(zip(mean_heats, cam_heats, block_titles, looks), start=1):
        name = block_names[i - 1] if block_names else f"block {i}"
        overlay(axes[0][i], image, mean_heat, f"{name}: mean activation", look)
        artist = overlay(axes[1][i], image, cam_heat, title, own)
        if block_looks:
            bar = fig.colorbar(artist, ax=axes[1][i], location="bottom", fraction=0.05, pad=0.02)
            # Each bar names only its own end; what the bars mean is said once below (long labels overlap).
            bar.set_label(_bar_end(own), fontsize=7)
            bar.ax.tick_params(labelsize=7)
    if not block_looks:
        fig.colorbar(artist, ax=list(axes[:, -1]), fraction=0.046, pad=0.02, label=look.label)
    else:
        fig.supxlabel(
            _BAR_END.sub("each bar ends at its block's", block_looks[-1].label.replace("\n", " ")), fontsize=8
        )
    fig.suptitle(suptitle, fontsize=12)
    return fig


def contact_sheet(
    images: Sequence[np.ndarray],
    heats: Sequence[np.ndarray],
    titles: Sequence[str],
    correct: Sequence[bool | None],
    look: Look = LOOK,
    colorbar: bool = False,
) -> Figure:
    """A grid of overlays; titles green where the prediction is right, red where wrong (one colour bar if asked)."""
    count = len(images)
    columns = min(5, count)
    rows = (count + columns - 1) // columns
    fig = Figure(figsize=(2.6 * columns, 2.9 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax, image, heat, title, ok in zip(axes, images, heats, titles, correct):
        artist = overlay(ax, image, heat, title, look)
        ax.title.set_color(title_colour(ok))
    for ax in axes[count:]:
        ax.set_axis_off()
    if colorbar and count:
        fig.colorbar(artist, ax=list(axes), fraction=0.02, pad=0.01, label=look.label)
    return fig


def gender100_figure(
    faces: Sequence[np.ndarray], heats: Sequence[np.ndarray], titles: Sequence[str], suptitle: str, look: Look = LOOK
) -> Figure:
    """The averaged maps side by side, each over the mean face of the images that made it."""
    fig = Figure(figsize=(4.2 * len(heats) + 0.8, 4.8), layout="constrained")
    axes = fig.subplots(1, len(heats))
    for ax, face, heat, title in zip(np.atleast_1d(axes), faces, heats, titles):
        artist = overlay(ax, face, heat, title, look)
    fig.colorbar(artist, ax=list(np.atleast_1d(axes)), fraction=0.046, pad=0.02, label=f"mean {look.label}")
    fig.suptitle(suptitle, fontsize=11)
    return fig


def blend_figure(
    face: np.ndarray, blended: np.ndarray, difference: np.ndarray, title: str, look: Look = LOOK
) -> Figure:
    """OverlayMaleFemale: the blended map over the mean face, and male minus female over the same face."""
    fig = Figure(figsize=(9.6, 4.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    artist = overlay(left, face, blended, "both maps blended over the mean face", look)
    fig.colorbar(artist, ax=left, fraction=0.046, pad=0.02, label=f"mean {look.label}")
    height, width = face.shape[:2]
    right.imshow(greyscale(face) if look.grey else face, extent=(0, width, height, 0), interpolation="bilinear")
    limit = float(np.abs(difference).max()) or 1.0
    artist = right.imshow(
        difference,
        cmap=DIFFERENCE_CMAP,
        vmin=-limit,
        vmax=limit,
        alpha=DIFFERENCE_ALPHA,
        extent=(0, width, height, 0),
        interpolation="bilinear",
    )
    right.set_title("male minus female (red: more male)", fontsize=10)
    right.set_xticks([])
    right.set_yticks([])
    fig.colorbar(artist, ax=right, fraction=0.046, pad=0.02)
    fig.suptitle(title, fontsize=11)
    return fig


def regions_figure(
    faces: dict[str, np.ndarray], shares: dict[str, dict[str, dict[str, Any]]], size: int, preprocess: str
) -> Figure:
    """The face regions outlined on the mean face, and each gender's map density per region as bars."""
    masks = face_regions.region_masks(size, preprocess)
    fig = Figure(figsize=(11.5, 4.8), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1, 1.4])
    mean_face = np.mean(list(faces.values()), axis=0)
    height, width = mean_face.shape[:2]
    left.imshow(mean_face, extent=(0, width, height, 0), interpolation="bilinear")
    colours = ["tab:red", "tab:orange", "gold", "tab:green", "tab:cyan", "tab:blue", "tab:purple", "white"]
    for (name, mask), colour in zip(masks.items(), colours):
        if name == face_regions.BACKGROUND:
            continue
        grid = mask.numpy().astype(float)
        extent = (0, width, height, 0)
        left.contour(grid, levels=[0.5], colors=[colour], linewidths=1.2, extent=extent, origin="upper")
        # Labelled at the middle of the region's first box (a U-shaped region's centroid lies outside it).
        top, bottom, start, end = face_regions.REGIONS[name][0]
        row = (top + bottom) / 2
        row = face_regions.to_squashed(row) if preprocess == "squash" else row
        left.text(
            (start + end) / 2 * width / face_regions.GRID,
            row * height / face_regions.GRID,
            name,
            color=colour,
            fontsize=7,
            ha="center",
            va="center",
            fontweight="bold",
            path_effects=[patheffects.withStroke(linewidth=2, foreground="black")],  # readable on skin and hair
        )
    left.set_title("face regions on the mean face", fontsize=10)
    left.set_xticks([])
    left.set_yticks([])
    names = list(masks)
    positions = np.arange(len(names))
    genders = list(shares)
    bar = 0.8 / len(genders)
    for index, (gender, colour) in enumerate(zip(genders, ["tab:red", "tab:blue"])):
        densities = np.asarray([shares[gender][name]["density"] for name in names])
        errors = whisker_lengths(densities, [shares[gender][name].get("density_ci95") for name in names])
        rows = positions + (index - (len(genders) - 1) / 2) * bar
        right.barh(
            rows, densities, bar, xerr=errors, label=gender, color=colour, capsize=2, error_kw={"elinewidth": 0.8}
        )
    right.axvline(1.0, color="grey", linewidth=0.8, linestyle="--")
    right.set_yticks(positions, names)
    right.invert_yaxis()
    whiskers = any(figures.get("density_ci95") for regions in shares.values() for figures in regions.values())
    right.set_xlabel(
        "density of the averaged map (share / area; 1 = an average pixel)"
        + ("\nwhiskers: 95 % intervals resampling the people whose faces were averaged" if whiskers else "")
    )
    right.legend(title="map of the test faces of", fontsize=8)
    right.set_title("where each gender's averaged map lies", fontsize=10)
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
