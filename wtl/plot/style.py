"""The look of every picture, in one place: colour maps, transparency, outline colour, resolution, title colours."""

from __future__ import annotations

import matplotlib
import numpy as np

CMAP = "jet"  # heatmaps over pictures (the original project's)
ALPHA = 0.5  # the heatmap's opacity over the picture
FEATURE_CMAP = "magma"  # activation maps of single channels, and the spread across models
DIFFERENCE_CMAP = "RdBu_r"  # signed differences (male minus female): red positive, blue negative
DIFFERENCE_ALPHA = 0.6
OUTLINE = np.array([0, 255, 0], dtype=np.uint8)  # a mask's outline: pure green, seen on pink cells and on jet
DPI = 110  # the commands' PNGs
SHEET_DPI = 80  # the report's contact sheets and charts
RIGHT, WRONG = "darkgreen", "firebrick"  # titles of right and wrong predictions


def title_colour(correct: bool | None) -> str:
    """Green for a right prediction, red for a wrong one, black where there is no truth to judge by."""
    return "black" if correct is None else (RIGHT if correct else WRONG)


def colour_map(heat: np.ndarray, cmap: str = CMAP) -> np.ndarray:
    """A [0, 1] (H, W) heatmap as RGB uint8 (H, W, 3) in the colours the figures draw it."""
    rgba = matplotlib.colormaps[cmap](np.clip(heat, 0.0, 1.0))
    return (rgba[..., :3] * 255).round().astype(np.uint8)
