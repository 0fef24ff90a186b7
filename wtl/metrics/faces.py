"""Regions of the aligned CelebA face, and how much of an averaged map falls into each.

CelebA's aligned crops (178 x 218) put the eyes, nose and mouth of every face at
nearly the same pixels, so fixed boxes on the network's grid are fair regions for
the Gender100 maps. The boxes were read off the mean of the 5,000 shared training
faces, centre-cropped to 178 x 178 and resized to 128 x 128 (the bundled gender
model's input); they are given on that 128 grid as (top, bottom, left, right), half
open. A pixel belongs to the first region (in REGIONS' order) whose box holds it;
what no box holds is background.
"""

from __future__ import annotations

import torch

GRID = 128
# CelebA's aligned pictures and the centred square that 'center-crop' keeps of them.
CELEBA_WIDTH, CELEBA_HEIGHT = 178, 218
REGIONS: dict[str, list[tuple[int, int, int, int]]] = {
    "eyes": [(56, 74, 36, 92)],  # both eyes and brows
    "nose": [(74, 92, 52, 76)],
    "mouth": [(92, 104, 46, 82)],
    "cheeks/jaw/chin": [(74, 104, 34, 52), (74, 104, 76, 94), (104, 118, 40, 88)],
    "forehead": [(34, 56, 40, 88)],
    "hair": [(8, 34, 28, 100), (34, 104, 20, 40), (34, 104, 88, 108)],
    "neck": [(118, 128, 40, 88)],
}
BACKGROUND = "background"


def to_squashed(row: float) -> float:
    """A row of the centre-cropped 128 grid as a row of the whole picture squashed to 128."""
    top = (CELEBA_HEIGHT - CELEBA_WIDTH) / 2
    return (row * CELEBA_WIDTH / GRID + top) * GRID / CELEBA_HEIGHT


def region_masks(size: int = GRID, preprocess: str = "center-crop") -> dict[str, torch.Tensor]:
    """(size, size) bool masks of every region and the background; they cover the grid exactly once.

    For a model whose input squashed the whole 178 x 218 picture, the boxes' rows are moved
    to where the same face parts lie in the squashed picture.
    """
    taken = torch.zeros((size, size), dtype=torch.bool)
    masks: dict[str, torch.Tensor] = {}
    scale = size / GRID
    for name, boxes in REGIONS.items():
        mask = torch.zeros_like(taken)
        for top, bottom, left, right in boxes:
            first, last = (to_squashed(top), to_squashed(bottom)) if preprocess == "squash" else (top, bottom)
            rows = slice(round(first * scale), round(last * scale))
            mask[rows, round(left * scale) : round(right * scale)] = True
        masks[name] = mask & ~taken
        taken |= mask
    masks[BACKGROUND] = ~taken
    return masks


def region_shares(heatmap: torch.Tensor, masks: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Per region: `share` = sum of the map inside / sum of the whole map, `area` = the region's share of
    the pixels, and `density` = share / area (above 1: the map dwells there more than on an average pixel)."""
    heat = heatmap.double().clamp_min(0)
    total = float(heat.sum()) or 1.0
    pixels = heat.numel()
    shares: dict[str, dict[str, float]] = {}
    for name, mask in masks.items():
        share = float(heat[mask].sum()) / total
        area = float(mask.sum()) / pixels
        shares[name] = {"share": share, "area": area, "density": share / area if area else 0.0}
    return shares


def region_masses(heatmaps: torch.Tensor, masks: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """((N, R) each map's sum inside each region, in `masks`' order; (N,) its sum over the picture).

    Negative evidence counts 0, as in `region_shares`. The mean map's share of region r is
    sum_i masses[i, r] / sum_i totals[i] (averaging is linear), so a bootstrap that resamples
    the maps' units resamples these sums, and `region_shares` of the mean map is their ratio.
    """
    heat = heatmaps.double().clamp_min(0)
    masses = torch.stack([heat[:, mask].sum(dim=1) for mask in masks.values()], dim=1)
    return masses, heat.flatten(1).sum(dim=1)
