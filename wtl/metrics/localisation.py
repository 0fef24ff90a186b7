"""The pointing game: does a map's peak fall on (or near) the ground-truth region?"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# The pointing game's tolerances: 15 px follows Zhang et al. (at 128 px a cell's parasite
# is ~10-20 px across); 8 px asks for the spot itself, 0 px "the peak lies inside the stain".
POINTING_TOLERANCES = (15.0, 8.0, 4.0, 0.0)


def peak_distance(heatmap: Tensor, mask: Tensor) -> float | None:
    """Euclidean distance in px from the heatmap's maximum (the first, if tied) to the nearest mask pixel.

    0 when the peak lies inside the mask; None for an empty mask (nothing to point at).
    """
    if heatmap.shape != mask.shape or heatmap.ndim != 2:
        raise ValueError(f"heatmap {tuple(heatmap.shape)} and mask {tuple(mask.shape)} must be the same (H, W)")
    points = torch.nonzero(mask).float()
    if len(points) == 0:
        return None
    width = heatmap.shape[1]
    peak = int(heatmap.flatten().argmax())
    where = torch.tensor([peak // width, peak % width], dtype=torch.float32, device=points.device)
    return float((points - where).pow(2).sum(dim=1).min().sqrt())


def peak_distances(heatmaps: Tensor, masks: Tensor) -> Tensor:
    """peak_distance of each of (B, H, W) heatmaps to its (B, H, W) mask: (B,) float, NaN where a mask is empty."""
    if heatmaps.shape != masks.shape or heatmaps.ndim != 3:
        raise ValueError(f"heatmaps {tuple(heatmaps.shape)} and masks {tuple(masks.shape)} must be the same (B, H, W)")
    distances = [peak_distance(h, m) for h, m in zip(heatmaps, masks)]
    return torch.tensor([math.nan if d is None else d for d in distances], dtype=torch.float64)


def within(distances: Tensor, tolerance_px: float) -> Tensor:
    """Which distances (in px) count as hits at `tolerance_px`: d <= t, compared as whole px^2 (NaN never hits).

    Peak-to-pixel distances are square roots of whole numbers, so comparing d^2 rounded with t^2
    makes 5.0 px count as within 5 px exactly, whatever the float rounding of the root.
    """
    return (distances.double() ** 2).round() <= tolerance_px**2


def hit_rate(distances: Tensor, tolerance_px: float) -> float | None:
    """The pointing game's score: the share of the measured distances (NaN: no ground truth) within tolerance_px.

    None when nothing was measured. This is what evaluate reports per method and view.
    """
    measured = distances[~distances.isnan()]
    return float(within(measured, tolerance_px).double().mean()) if len(measured) else None


def pointing_hit(heatmap: Tensor, mask: Tensor, tolerance_px: float) -> bool | None:
    """Whether one (H, W) heatmap's maximum lies within tolerance_px of a mask pixel; None for an empty mask.

    The pointing game of a single picture: hit_rate of its one peak distance.
    """
    rate = hit_rate(peak_distances(heatmap[None], mask[None]), tolerance_px)
    return None if rate is None else rate == 1.0
