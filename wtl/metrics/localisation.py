"""Maps against a ground-truth mask: the pointing game, relevance mass and relevance rank.

The pointing game (Zhang et al. 2018) asks whether the map's peak falls on (or near) the mask;
relevance mass and relevance rank (Arras, Osman and Samek, "CLEVR-XAI: a benchmark dataset for
the ground truth evaluation of neural network explanations", Information Fusion 2022; also in
Quantus as RelevanceMassAccuracy and RelevanceRankAccuracy) ask how much of the map lies inside it.
All take the maps as they are drawn: (B, H, W) at the input's size, min-max normalised per image.
"""

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


def relevance_mass(heatmaps: Tensor, masks: Tensor) -> Tensor:
    """Relevance mass accuracy per image: the share of the map's positive mass that lies inside the mask.

    mass = sum_{p in mask} R+_p / sum_p R+_p with R+ = max(R, 0) (Arras et al. 2022). On a drawn
    map (min-max normalised, so R >= 0 and its minimum is 0) 1 means all of it is inside. (B,)
    float64; NaN where the mask is empty or the map is zero everywhere.
    """
    _check(heatmaps, masks)
    positive = heatmaps.double().clamp_min(0).flatten(1)
    inside = (positive * masks.flatten(1)).sum(1)
    total = positive.sum(1)
    mass = inside / torch.where(total > 0, total, torch.ones_like(total))
    return torch.where((total > 0) & masks.flatten(1).any(1), mass, torch.full_like(mass, math.nan))


def relevance_rank(heatmaps: Tensor, masks: Tensor) -> Tensor:
    """Relevance rank accuracy per image: of the K = |mask| pixels the map ranks highest, the share inside the mask.

    rank = |top_K(R) & mask| / K (Arras et al. 2022); ties in R are broken by pixel order, first
    first (a stable sort), so a constant map scores the share of the first K pixels in the mask.
    (B,) float64; NaN where the mask is empty.
    """
    _check(heatmaps, masks)
    flat_masks = masks.flatten(1)
    sizes = flat_masks.sum(1)
    order = torch.sort(heatmaps.double().flatten(1), dim=1, descending=True, stable=True).indices
    ranked = flat_masks.gather(1, order).double()  # mask membership of the pixels, highest relevance first
    positions = torch.arange(ranked.shape[1], device=ranked.device)[None, :]
    hits = (ranked * (positions < sizes[:, None])).sum(1)
    rank = hits / sizes.clamp_min(1)
    return torch.where(sizes > 0, rank, torch.full_like(rank, math.nan))


def _check(heatmaps: Tensor, masks: Tensor) -> None:
    if heatmaps.shape != masks.shape or heatmaps.ndim != 3:
        raise ValueError(f"heatmaps {tuple(heatmaps.shape)} and masks {tuple(masks.shape)} must be the same (B, H, W)")
