"""Faithfulness of a map: deletion and insertion curves (RISE), average drop and increase in confidence."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

import torch
from torch import Tensor, nn
from torchvision.transforms import functional as TF

from wtl.maps.ops import expand_classes
from wtl.nets.modes import eval_mode

Key = TypeVar("Key", bound=Hashable)

# Where the deletion and insertion curves are sampled: the fraction of the pixels taken, in the map's order.
# Every eighth of the pixels, as on a face whose evidence is spread over it the curves bend everywhere; and
# 1/64 and 1/16 below the first eighth, because on a cell they move within the first few per cent (a
# parasite's stain is about 1 % of the picture: insertion climbs from 0.15 to 0.85 within the first 1/64).
# Against a reference of 125 nodes, on cells and faces, these 11 nodes (9 forward passes per curve between
# the two shared ends) come within 0.007 of the reference's AUC on average for every map, where RISE's 16
# equal steps (15 passes) miss a cell's insertion by 0.022 (docs/faithfulness.md: the measurement, its command).
FRACTIONS = (0.0, 1 / 64, 1 / 16, 1 / 8, 2 / 8, 3 / 8, 4 / 8, 5 / 8, 6 / 8, 7 / 8, 1.0)


def fractions_of(grid: int | Sequence[float] | None = None) -> tuple[float, ...]:
    """The curves' nodes: FRACTIONS (None), `grid` equal steps from 0 to 1 (an int: RISE's uniform grid), or `grid`."""
    if grid is None:
        return FRACTIONS
    if isinstance(grid, int):
        if grid < 1:
            raise ValueError("steps must be at least 1")
        return tuple(step / grid for step in range(grid + 1))
    nodes = tuple(float(f) for f in grid)
    if len(nodes) < 2 or nodes[0] != 0.0 or nodes[-1] != 1.0 or any(b <= a for a, b in zip(nodes, nodes[1:])):
        raise ValueError(f"a grid rises from 0 to 1, not {nodes}")
    return nodes


@torch.no_grad()
def _probability(model: nn.Module, images: Tensor, classes: Tensor) -> Tensor:
    """Softmax probability of each image's class, (B,)."""
    return model(images).softmax(dim=1).gather(1, classes[:, None]).squeeze(1)


def blurred(images: Tensor, sigma: float | None = None) -> Tensor:
    """A heavily Gaussian-blurred copy of (B, 3, H, W) images: 'the pixel removed', keeping its colour."""
    side = min(images.shape[-2:])
    sigma = sigma if sigma is not None else max(1.0, side / 12)
    kernel = 2 * math.ceil(3 * sigma) + 1
    # Reflect padding needs the half kernel below the image side.
    kernel = min(kernel, side - 1 if side % 2 == 0 else side)
    kernel = max(kernel if kernel % 2 == 1 else kernel - 1, 1)
    return TF.gaussian_blur(images, [kernel, kernel], [sigma, sigma])


def _ranks(heatmaps: Tensor) -> Tensor:
    """rank[b, p] = position of pixel p in image b's decreasing-heat order (ties: lower index first)."""
    batch = heatmaps.shape[0]
    order = heatmaps.reshape(batch, -1).argsort(dim=1, descending=True, stable=True)
    positions = torch.arange(order.shape[1], device=order.device).expand(batch, -1)
    return torch.empty_like(order).scatter_(1, order, positions)


@torch.no_grad()
def curves_of_maps(
    model: nn.Module,
    images: Tensor,
    heatmaps: Mapping[Key, Tensor],
    class_index: int | Tensor,
    grid: int | Sequence[float] | None = None,
    blur: float | None = None,
) -> dict[Key, Tensor]:
    """Per map the deletion and insertion curves (2, F, B): the class probability at each node of the grid.

    Pixels are taken in decreasing heatmap order, up to each fraction of `fractions_of(grid)`.
    Deletion replaces them with a blurred copy of the image (Gaussian, sigma `blur` px, default
    side/12); insertion starts from the blurred image and puts the original pixels back in the
    same order. The two ends (the image itself, its blurred copy) are the same for every map and
    are asked once; the maps' pictures of one fraction go through the network together.
    """
    fractions = fractions_of(grid)
    batch, _, height, width = images.shape
    for heatmap in heatmaps.values():
        if heatmap.shape != (batch, height, width):
            raise ValueError(f"heatmaps {tuple(heatmap.shape)} do not match images {tuple(images.shape)}")
    keys = list(heatmaps)
    if not keys:
        return {}
    classes = expand_classes(class_index, batch, device=images.device)
    base = blurred(images, blur)
    ranks = torch.stack([_ranks(heatmaps[key]) for key in keys]).view(len(keys), batch, 1, height, width)
    curves = torch.empty((2, len(keys), len(fractions), batch), dtype=images.dtype, device=images.device)
    pixels = height * width
    with eval_mode(model):
        whole, removed = _probability(model, torch.cat([images, base]), torch.cat([classes, classes])).split(batch)
        for node, fraction in enumerate(fractions):
            count = round(fraction * pixels)
            if count == 0 or count == pixels:  # an end: nothing or everything taken
                start, end = (whole, removed) if count == 0 else (removed, whole)
                curves[0, :, node], curves[1, :, node] = start, end
                continue
            taken = ranks < count  # (V, B, 1, H, W)
            deleted = torch.where(taken, base, images).flatten(0, 1)
            inserted = torch.where(taken, images, base).flatten(0, 1)
            every = torch.cat([classes] * (2 * len(keys)))
            curves[:, :, node] = _probability(model, torch.cat([deleted, inserted]), every).view(2, len(keys), batch)
    return {key: curves[:, k] for k, key in enumerate(keys)}


def deletion_insertion_of_maps(
    model: nn.Module,
    images: Tensor,
    heatmaps: Mapping[Key, Tensor],
    class_index: int | Tensor,
    grid: int | Sequence[float] | None = None,
    blur: float | None = None,
) -> dict[Key, tuple[Tensor, Tensor]]:
    """Per map, per-image deletion and insertion AUCs (B,) each, RISE-style (Petsiuk et al.).

    The area under each curve of curves_of_maps, by the trapezoid over the grid's fractions: a good
    map drops the class probability fast under deletion (low AUC) and raises it fast under
    insertion (high AUC).
    """
    nodes = torch.tensor(fractions_of(grid), dtype=images.dtype, device=images.device)
    curves = curves_of_maps(model, images, heatmaps, class_index, grid, blur)
    areas = {key: torch.trapezoid(curve, nodes, dim=1) for key, curve in curves.items()}
    return {key: (area[0], area[1]) for key, area in areas.items()}


def deletion_insertion(
    model: nn.Module,
    images: Tensor,
    heatmaps: Tensor,
    class_index: int | Tensor,
    grid: int | Sequence[float] | None = None,
    blur: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-image deletion and insertion AUCs (B,) of one map (deletion_insertion_of_maps)."""
    return deletion_insertion_of_maps(model, images, {0: heatmaps}, class_index, grid, blur)[0]


@torch.no_grad()
def drop_and_increase_of_maps(
    model: nn.Module, images: Tensor, heatmaps: Mapping[Key, Tensor], class_index: int | Tensor
) -> dict[Key, tuple[Tensor, Tensor]]:
    """Per map and image: the relative drop max(0, Y - O) / Y in % and whether O > Y (the map raised it).

    Y is the class probability of the image, O of the image multiplied by its map (Chattopadhay
    et al.'s average drop and increase in confidence); Y is asked once for all maps.
    """
    classes = expand_classes(class_index, images.shape[0], device=images.device)
    with eval_mode(model):
        full = _probability(model, images, classes)
        out = {}
        for key, heatmap in heatmaps.items():
            explained = _probability(model, images * heatmap[:, None], classes)
            out[key] = ((full - explained).clamp_min(0) / full.clamp_min(1e-12) * 100, explained > full)
    return out


def drop_and_increase(
    model: nn.Module, images: Tensor, heatmaps: Tensor, class_index: int | Tensor
) -> tuple[Tensor, Tensor]:
    """Per image: the relative drop max(0, Y - O) / Y in % and whether O > Y (drop_and_increase_of_maps)."""
    return drop_and_increase_of_maps(model, images, {0: heatmaps}, class_index)[0]
