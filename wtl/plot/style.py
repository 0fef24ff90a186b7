"""The look of every picture, in one place: colour maps, transparency, outline colour, resolution, title colours."""

from __future__ import annotations

from dataclasses import dataclass, replace

import matplotlib
import numpy as np

CMAP = "jet"  # heatmaps over pictures (the original project's)
ALPHA = 0.5  # the heatmap's opacity over the picture
FEATURE_CMAP = "magma"  # activation maps of single channels, and the spread across models
DIFFERENCE_CMAP = "RdBu_r"  # signed differences (male minus female): red positive, blue negative
# The shared scale (--scale model): signed evidence red for the class, blue against it; unsigned maps in reds.
EVIDENCE_CMAP = "RdBu_r"
SHARED_CMAP = "Reds"
# Under the shared scale the map's opacity grows with |value|: no evidence leaves the picture as it is.
# The opacity at the colour bar's end is FADE_ALPHA (or --alpha where it is higher); FADE_GAMMA < 1 keeps
# weak evidence visible.
FADE_ALPHA = 0.85
FADE_GAMMA = 0.6
DIFFERENCE_ALPHA = 0.6
OUTLINE = np.array([0, 255, 0], dtype=np.uint8)  # a mask's outline: pure green, seen on pink cells and on jet
DPI = 110  # the commands' PNGs
SHEET_DPI = 80  # the report's contact sheets and charts
RIGHT, WRONG = "darkgreen", "firebrick"  # titles of right and wrong predictions


def title_colour(correct: bool | None) -> str:
    """Green for a right prediction, red for a wrong one, black where there is no truth to judge by."""
    return "black" if correct is None else (RIGHT if correct else WRONG)


def colour_map(heat: np.ndarray, cmap: str = CMAP, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """An (H, W) heatmap as RGB uint8 (H, W, 3) in the colours the figures draw it (vmin..vmax spans the map)."""
    span = (vmax - vmin) or 1.0
    rgba = matplotlib.colormaps[cmap](np.clip((heat - vmin) / span, 0.0, 1.0))
    return (rgba[..., :3] * 255).round().astype(np.uint8)


@dataclass(frozen=True)
class Look:
    """How a heatmap is laid over a picture: its colour map and opacity, its value range, the picture in grey."""

    cmap: str = CMAP
    alpha: float = ALPHA
    grey: bool = False  # the picture under the map in greyscale (the CAM chapter's Reds over grey)
    vmin: float = 0.0  # the map's values at the two ends of the colour bar
    vmax: float = 1.0
    label: str = "relative evidence"  # the colour bar's label
    fade: bool = False  # opacity grows with |value| (the shared scale), instead of one alpha everywhere

    def labelled(self, label: str) -> Look:
        """The same look with another colour-bar label."""
        return replace(self, label=label)

    def opacity(self, heat: np.ndarray) -> float | np.ndarray:
        """The heatmap's opacity: `alpha` everywhere, or with `fade` per pixel (|value| / the bar's end) ** gamma."""
        if not self.fade:
            return self.alpha
        end = max(abs(self.vmin), abs(self.vmax)) or 1.0
        strength = np.clip(np.abs(np.asarray(heat, dtype=float)) / end, 0.0, 1.0) ** FADE_GAMMA
        return max(self.alpha, FADE_ALPHA) * strength


def shared_look(base: Look, scale: float, signed: bool, label: str, cmap: str | None = None) -> Look:
    """The look of a map drawn on a model's shared scale: +-scale (signed) or 0..scale, fading, labelled.

    `cmap` is the user's --cmap where given; else a diverging map for signed evidence, reds otherwise.
    """
    chosen = cmap or (EVIDENCE_CMAP if signed else SHARED_CMAP)
    return replace(base, cmap=chosen, vmin=-scale if signed else 0.0, vmax=scale, label=label, fade=True)


LOOK = Look()


def check_look(cmap: str, alpha: float) -> str | None:
    """Why a --cmap / --alpha pair cannot be drawn (one line), or None when it can."""
    if cmap not in matplotlib.colormaps:
        return f"--cmap {cmap}: not a matplotlib colour map (e.g. jet, viridis, magma, inferno, Reds, RdBu_r)"
    if not 0.0 <= alpha <= 1.0:
        return f"--alpha {alpha}: the opacity must be between 0 and 1"
    return None


def greyscale(picture: np.ndarray) -> np.ndarray:
    """An RGB picture (uint8 or float) as grey RGB of the same type (ITU-R 601 luma)."""
    grey = picture[..., 0] * 0.299 + picture[..., 1] * 0.587 + picture[..., 2] * 0.114
    grey = np.repeat(grey[..., None], 3, axis=-1)
    return grey.round().astype(picture.dtype) if picture.dtype == np.uint8 else grey.astype(picture.dtype)


def whisker_lengths(values: np.ndarray, bounds: list) -> np.ndarray:
    """(2, N) distances below and above each value to its interval, as matplotlib's yerr/xerr take them.

    An undefined interval (None: one unit, or none resampled) gets no whisker rather than a wrong one.
    """
    spans = [b if b is not None else (v, v) for v, b in zip(values, bounds)]
    return np.abs(np.asarray(spans, dtype=float).T - np.asarray(values, dtype=float))
