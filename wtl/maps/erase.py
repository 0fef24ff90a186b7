"""Removing a region of a picture: the black background around a segmented cell, and two fills, as pure tensor maths.

Pictures are (3, H, W) float in [0, 1]; masks (H, W) bool, True where the picture is removed.
`fill_colour` paints the region one colour (the cell's median, for the background);
`inpaint` fills it from its surroundings: a harmonic fill, each removed pixel repeatedly the
mean of its 4 neighbours, the known pixels held fixed (the discrete Laplace equation,
solved by Jacobi steps), so a removed stain takes the colour of the cytoplasm around it.
Both `erase` (single --erase) and the intervention tests fill regions with these functions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# A pixel whose brightest channel is at most this is black background (stain_mask's cell threshold).
BLACK = 0.15
INPAINT_STEPS = 200  # Jacobi steps: a removed region up to ~30 px across settles (error < 1/255)


def _as_float(image: Tensor) -> Tensor:
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"a picture is (3, H, W), not {tuple(image.shape)}")
    return image.float() / 255.0 if image.dtype == torch.uint8 else image.float()


def dilate(mask: Tensor, pixels: int = 1) -> Tensor:
    """The mask grown by `pixels` in every direction (a (2p+1) x (2p+1) square)."""
    if pixels <= 0:
        return mask.clone()
    grown = F.max_pool2d(mask.float()[None, None], 2 * pixels + 1, stride=1, padding=pixels)
    return grown[0, 0] > 0


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


def inpaint(image: Tensor, mask: Tensor, known: Tensor | None = None, steps: int = INPAINT_STEPS) -> Tensor:
    """The masked pixels filled from their surroundings: x_p = mean of p's 4 neighbours, repeated `steps` times.

    Pixels outside `mask` stay fixed. `known` (default: everything outside the mask) says which
    pixels may lend their colour: a neighbour that is neither known nor masked (the black
    background, say) is left out of the mean. The fill starts at the median colour of the known pixels.
    """
    picture = _as_float(image)
    known = ~mask if known is None else known & ~mask
    if not bool(mask.any()) or not bool(known.any()):
        return picture.clone()
    filled = fill_colour(picture, mask, median_colour(picture, known))
    usable = (known | mask).float()[None, None]
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]).to(picture)[None, None]
    count = F.conv2d(usable, kernel, padding=1).clamp_min(1.0)
    inside = mask[None]
    for _ in range(steps):
        total = F.conv2d((filled * usable[0])[:, None], kernel, padding=1)[:, 0]
        filled = torch.where(inside, total / count[0], filled)
    return filled
