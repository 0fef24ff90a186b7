"""Edit the picture and classify again: remove a region (the background, the stain, a mask) and compare.

The CAM chapter cuts the background away from a cat and re-classifies it. Here a region of each
picture is removed at the network's input size and the picture explained again:

- background: the black area around a segmented cell (maps.erase.background_mask), painted the
  cell's median colour, as if the cell filled the frame;
- stain: the Giemsa stain mask (metrics.stain.stain_mask) grown by its halo (intervention.DILATION_PX), filled from the
  cytoplasm around it (maps.erase.inpaint, the background lending nothing);
- a mask: a picture file (white, or any non-zero pixel, is removed) resized to the input size
  (nearest), filled from its surroundings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from wtl.checkpoints.loading import LoadedModel
from wtl.errors import ImageError
from wtl.maps.erase import background_mask, dilate, fill_colour, inpaint, median_colour
from wtl.maps.explain import Picture, Result, explain
from wtl.maps.registry import DEFAULT_METHOD
from wtl.metrics.intervention import DILATION_PX
from wtl.metrics.stain import stain_mask

REGIONS = ("background", "stain")  # or the path of a mask file


def read_mask(path: str | Path, size: int) -> Tensor:
    """(size, size) bool from a mask picture: any non-zero pixel (of any channel) is removed."""
    try:
        with Image.open(path) as picture:
            grey = picture.convert("L").resize((size, size), Image.Resampling.NEAREST)
    except (OSError, ValueError) as error:
        raise ImageError(f"{path}: cannot read it as a mask picture ({error})") from None
    return torch.from_numpy(np.asarray(grey) > 0)


def region_mask(image: Tensor, region: str | Tensor) -> Tensor:
    """(H, W) bool: where `region` ('background', 'stain', or a mask tensor) lies in one picture (3, H, W)."""
    if isinstance(region, Tensor):
        if tuple(region.shape) != tuple(image.shape[1:]):
            raise ValueError(f"the mask is {tuple(region.shape)}, the picture {tuple(image.shape[1:])}")
        return region.bool()
    if region == "background":
        return background_mask(image)
    if region == "stain":
        stain = stain_mask(image)
        return dilate(stain, DILATION_PX) & ~background_mask(image) if bool(stain.any()) else stain
    raise ValueError(f"unknown region {region!r} (expected one of {', '.join(REGIONS)}, or a mask)")


def erase_region(image: Tensor, region: str | Tensor) -> tuple[Tensor, Tensor]:
    """(the picture with the region removed, its mask): the fill each region of the module docstring names."""
    mask = region_mask(image, region)
    if isinstance(region, str) and region == "background":
        return fill_colour(image, mask, median_colour(image, ~mask)), mask
    return inpaint(image, mask, known=~background_mask(image)), mask


@dataclass
class Erasure:
    """Pictures explained as they are and with a region removed."""

    region: str  # 'background', 'stain' or the mask file's name
    before: Result
    after: Result  # the edited pictures, explained for the class `before` explained
    masks: Tensor  # (B, S, S) bool: what was removed

    @property
    def changed(self) -> Tensor:
        """(B,) bool: whether removing the region changed the prediction."""
        return self.before.predictions != self.after.predictions

    @property
    def removed_fraction(self) -> Tensor:
        """(B,) the share of each picture that was removed."""
        return self.masks.flatten(1).float().mean(dim=1)


def erase(
    model: LoadedModel,
    pictures: Picture | Sequence[Picture],
    region: str | Path,
    method: str = DEFAULT_METHOD,
    class_index: int | Tensor | None = None,
    batch_size: int = 32,
) -> Erasure:
    """Explain the pictures, remove `region` from each ('background', 'stain' or a mask file), explain them again."""
    before = explain(model, pictures, method, "last", class_index, batch_size=batch_size)
    size = model.image_size
    if str(region) in REGIONS:
        chosen: str | Tensor = str(region)
        label = str(region)
    else:
        chosen, label = read_mask(region, size), Path(region).name
    edited, masks = zip(*(erase_region(image, chosen) for image in before.inputs.images))
    batch = torch.stack(edited).clamp(0.0, 1.0)
    after = explain(model, batch, method, "last", before.class_index, batch_size=batch_size)
    after.inputs.names = list(before.inputs.names)  # the edited pictures keep their files' names
    return Erasure(label, before, after, torch.stack(masks))


def resized_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """A (h, w) bool mask at another size (nearest), e.g. to outline it over the picture as drawn."""
    return F.interpolate(mask.float()[None, None], size=size, mode="nearest")[0, 0] > 0.5
