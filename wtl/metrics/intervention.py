"""Does the model need what the map points at? Remove a region, fill it from the cell around it, ask again.

The pointing game says the map's peak lies on the stain; deletion/insertion remove pixels in the
map's own order. Neither says the model *needs* the stain. Here the ground-truth region (the stain
mask, dilated by DILATION_PX to take its halo along) is filled from the cell's own surroundings,
and the explained class's probability is asked again; as a matched control, a region of the same
shape and area elsewhere in the same cell is filled the same way, and so is the map's own top
region of that area. A model that uses the stain loses its probability under the first and keeps
it under the control.

The fill (FILL): harmonic inpainting ("diffusion from the boundary"). The region's pixels are
first filled layer by layer from the outside in, each with the mean of its already-known
neighbours inside the cell, then smoothed by Jacobi iterations of Laplace's equation with the
cell pixels around the region held fixed: a smooth surface that meets the surrounding colour
everywhere at the region's edge (maps.erase.fill_regions, which `single --erase` uses too). Only
cell pixels are sources, so the black background never bleeds in. Pure tensor functions: no files, no plotting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wtl.maps.erase import dilate, fill_regions
from wtl.metrics.stain import cell_mask
from wtl.nets.modes import eval_mode

FILL = "diffusion from the region's boundary (harmonic inpainting from the cell's own surrounding pixels)"
DILATION_PX = 3  # the stain mask is grown by this much (here and in --erase stain): its halo carries its colour too
SMOOTHING_STEPS = 30  # Jacobi iterations after the layer-by-layer fill


def fill_from_surroundings(images: Tensor, regions: Tensor, cells: Tensor | None = None) -> Tensor:
    """(B, 3, H, W) images with each (B, H, W) region filled from the cell pixels around it (FILL).

    `cells` (B, H, W) bool are the pixels that may serve as sources (default: cell_mask of each
    image); region pixels outside the cell are left as they are. A region with no source pixel
    around it at all keeps its pixels.
    """
    if cells is None:
        cells = torch.stack([cell_mask(image) for image in images])
    return fill_regions(images, regions, cells, SMOOTHING_STEPS)


def _centroid(mask: Tensor) -> Tensor:
    points = torch.nonzero(mask).float()
    return points.mean(0) if len(points) else torch.tensor([mask.shape[0] / 2, mask.shape[1] / 2])


def control_region(region: Tensor, cell: Tensor, gap: int = DILATION_PX) -> tuple[Tensor, bool]:
    """A region of the same shape and area inside the same cell, away from `region` (H, W bool).

    The region is moved to every position where all of it lands on cell pixels at least `gap`
    px from the original; of those, the one whose centre is nearest to the original centre
    mirrored through the cell's centre (the far side of the cell). Where it fits nowhere, the
    `area` cell pixels furthest from the region stand in (returned flag False: not a translate).
    """
    area = int(region.sum())
    if area == 0:
        return torch.zeros_like(region), True
    allowed = cell & ~dilate(region[None], gap)[0]
    rows, cols = torch.nonzero(region, as_tuple=True)
    top, left = int(rows.min()), int(cols.min())
    shape = region[top : int(rows.max()) + 1, left : int(cols.max()) + 1].float()
    # count[y, x]: how many of the shape's pixels land on allowed pixels with its corner at (y, x).
    count = F.conv2d(allowed[None, None].float(), shape[None, None])[0, 0]
    valid = count >= area - 0.5
    target = 2 * _centroid(cell) - _centroid(region)
    if bool(valid.any()):
        corners = torch.nonzero(valid).float()
        offset = _centroid(region) - torch.tensor([float(top), float(left)])
        distance = (corners + offset - target).pow(2).sum(1)
        y, x = (int(v) for v in corners[int(distance.argmin())])
        moved = torch.zeros_like(region)
        moved[y : y + shape.shape[0], x : x + shape.shape[1]] = shape > 0
        return moved, True
    # No room for the shape: the allowed pixels nearest the far side, as many as the region has.
    points = torch.nonzero(allowed).float()
    fallback = torch.zeros_like(region)
    if len(points):
        nearest = (points - target).pow(2).sum(1).argsort()[:area]
        chosen = points[nearest].long()
        fallback[chosen[:, 0], chosen[:, 1]] = True
    return fallback, False


def top_region(heatmap: Tensor, cell: Tensor, area: int) -> Tensor:
    """The map's own top `area` pixels among the cell's (H, W bool): what the map says matters most."""
    region = torch.zeros_like(cell)
    if area <= 0:
        return region
    scores = torch.where(cell, heatmap.float(), torch.full_like(heatmap, -math.inf, dtype=torch.float32))
    chosen = scores.flatten().topk(min(area, int(cell.sum()) or area)).indices
    region.view(-1)[chosen] = True
    return region


@dataclass
class Regions:
    """The three regions of an intervention, (B, H, W) bool each, and whether each control is a true translate."""

    truth: Tensor  # the dilated ground truth, within the cell
    control: Tensor
    top: Tensor | None  # the map's top region of the same area (None without a map)
    translated: Tensor  # (B,) bool
    cells: Tensor


def intervention_regions(
    images: Tensor, masks: Tensor, heatmaps: Tensor | None = None, dilation: int = DILATION_PX
) -> Regions:
    """The regions for (B, 3, H, W) images with (B, H, W) ground-truth masks (and the maps for the top region)."""
    cells = torch.stack([cell_mask(image) for image in images.cpu()]).to(masks.device)
    truth = dilate(masks, dilation) & cells
    controls, translated, tops = [], [], []
    for b in range(len(images)):
        control, moved = control_region(truth[b].cpu(), cells[b].cpu(), dilation)
        controls.append(control)
        translated.append(moved)
        if heatmaps is not None:
            tops.append(top_region(heatmaps[b].cpu(), cells[b].cpu(), int(truth[b].sum())))
    device = masks.device
    return Regions(
        truth=truth,
        control=torch.stack(controls).to(device),
        top=torch.stack(tops).to(device) if heatmaps is not None else None,
        translated=torch.tensor(translated),
        cells=cells,
    )


@torch.no_grad()
def probabilities_after(
    network: nn.Module, images: Tensor, regions: Tensor, classes: Tensor, cells: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(probability of each image's class, prediction) after its region is filled from its surroundings, (B,) each."""
    filled = fill_from_surroundings(images, regions, cells)
    with eval_mode(network):
        logits = network(filled)
    return logits.softmax(dim=1).gather(1, classes[:, None]).squeeze(1), logits.argmax(dim=1)
