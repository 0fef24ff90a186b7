"""Removing a region of a picture: the black background around a segmented cell, and two fills, as pure tensor maths.

Pictures are (3, H, W) float in [0, 1]; masks (H, W) bool, True where the picture is removed.
`fill_colour` paints the region one colour (the cell's median, for the background);
`fill_regions` (and `inpaint`, for one picture) fills it from its surroundings: layer by layer
from the outside in, each removed pixel next to known ones takes their mean, then Jacobi steps
make each removed pixel the mean of its 4 neighbours, the known pixels held fixed (the discrete
Laplace equation: a harmonic fill), so a removed stain takes the colour of the cytoplasm around it.
Both `erase` (single --erase) and the intervention test (metrics.intervention) fill with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# A pixel whose brightest channel is at most this is black background (stain_mask's cell threshold).
BLACK = 0.15
INPAINT_STEPS = 200  # Jacobi steps: a removed region up to ~30 px across settles (error < 1/255)
_CROSS = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
_SQUARE = torch.ones(3, 3)


def _as_float(image: Tensor) -> Tensor:
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"a picture is (3, H, W), not {tuple(image.shape)}")
    return image.float() / 255.0 if image.dtype == torch.uint8 else image.float()


def dilate(mask: Tensor, pixels: int = 1) -> Tensor:
    """The mask (H, W) or masks (B, H, W) grown by `pixels` in every direction (a (2p+1) x (2p+1) square)."""
    if pixels <= 0:
        return mask.clone()
    batch = mask.float().reshape(-1, 1, *mask.shape[-2:])
    grown = F.max_pool2d(batch, 2 * pixels + 1, stride=1, padding=pixels)
    return (grown > 0).reshape(mask.shape)


def background_mask(image: Tensor, level: float = BLACK, grow: int = 1) -> Tensor:
    """(H, W) bool: the black area around a segmented cell, i.e. dark pixels joined to the picture's border.

    A pixel is dark when its brightest channel is at most `level`; the region is grown from the
    dark border pixels through dark neighbours (8-connected), so a dark spot inside the cell (a
    parasite) is not background. `grow` more pixels take the dim, anti-aliased rim of the cell too.
    An empty mask means the picture has no black surround (a face, a photo).
    """
    dark = _as_float(image).amax(dim=0) <= level
    region = torch.zeros_like(dark)
    region[0, :], region[-1, :], region[:, 0], region[:, -1] = dark[0, :], dark[-1, :], dark[:, 0], dark[:, -1]
    while True:
        grown = dilate(region) & dark
        if bool(torch.equal(grown, region)):
            break
        region = grown
    return dilate(region, grow) if bool(region.any()) else region


def median_colour(image: Tensor, region: Tensor) -> Tensor:
    """(3,) the per-channel median of the picture's pixels in `region` (of the whole picture if it is empty)."""
    pixels = _as_float(image).flatten(1)
    chosen = pixels[:, region.flatten()] if bool(region.any()) else pixels
    return chosen.median(dim=1).values


def fill_colour(image: Tensor, mask: Tensor, colour: Tensor) -> Tensor:
    """The picture with every masked pixel set to `colour` (3,)."""
    picture = _as_float(image).clone()
    picture[:, mask] = colour.to(picture)[:, None]
    return picture


def _neighbour_sum(values: Tensor, kernel: Tensor) -> Tensor:
    """Per channel the sum of each pixel's neighbours under `kernel` (3 x 3), zero outside the image."""
    channels = values.shape[1]
    weight = kernel.to(values)[None, None].expand(channels, 1, 3, 3)
    return F.conv2d(values, weight, padding=1, groups=channels)


def fill_regions(images: Tensor, regions: Tensor, sources: Tensor, steps: int = INPAINT_STEPS) -> Tensor:
    """(B, 3, H, W) pictures with each (B, H, W) region filled from the `sources` pixels around it.

    Region pixels outside `sources` are left as they are; so is a region with no source pixel
    around it at all. First layer by layer from the outside in (each hole pixel next to filled or
    known ones takes their mean), then `steps` Jacobi steps of x_p = mean of p's 4 neighbours
    within the sources, the known pixels held fixed.
    """
    if regions.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"regions {tuple(regions.shape)} do not match images {tuple(images.shape)}")
    holes = (regions & sources)[:, None]
    known = (sources[:, None] & ~holes).float()
    # Colour and "known" travel as one 4-channel tensor: one convolution per step for both.
    state = torch.cat([images * known, known], dim=1)
    remaining = holes.clone()
    for _ in range(max(images.shape[-2:])):
        if not bool(remaining.any()):
            break
        sums = _neighbour_sum(state, _SQUARE)
        reached = remaining & (sums[:, 3:] > 0)
        if not bool(reached.any()):
            break
        update = torch.cat([sums[:, :3] / sums[:, 3:].clamp_min(1.0), torch.ones_like(sums[:, 3:])], dim=1)
        state = torch.where(reached, update, state)
        remaining &= ~reached
    filled = state[:, :3]
    inside = (sources[:, None] & ~remaining).float()
    neighbours = _neighbour_sum(inside, _CROSS).clamp_min(1.0)
    settled = holes & ~remaining
    for _ in range(steps):
        average = _neighbour_sum(filled * inside, _CROSS) / neighbours
        filled = torch.where(settled, average, filled)
    return torch.where(settled, filled, images)


def inpaint(image: Tensor, mask: Tensor, known: Tensor | None = None, steps: int = INPAINT_STEPS) -> Tensor:
    """One picture's masked pixels filled from their surroundings (fill_regions), `steps` Jacobi steps.

    Pixels outside `mask` stay fixed. `known` (default: everything outside the mask) says which
    pixels may lend their colour: a neighbour that is neither known nor masked (the black
    background, say) is left out of the mean.
    """
    picture = _as_float(image)
    known = ~mask if known is None else known & ~mask
    return fill_regions(picture[None], mask[None], (known | mask)[None], steps)[0]
