"""Training-time augmentation as pure batch functions: (B, 3, H, W) float images in, same shape out.

Each function draws its randomness from torch's generator (or the one it is given),
so a seeded epoch draws the same augmentations on every run, resumes included.
Working on the whole batch tensor at once costs next to nothing beside a training step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from wtl.data.registry import AUGMENTATIONS

Augment = Callable[[torch.Tensor], torch.Tensor]

# What each --augment choice means; "auto" picks by data set in `for_dataset`.
CHOICES = AUGMENTATIONS


def _coin(n: int, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """(n, 1, 1, 1) bool: heads with probability 1/2 for each image."""
    return (torch.rand((n, 1, 1, 1), generator=generator) < 0.5).to(device)


def dihedral(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random flips and 90-degree turns per image (the 8 symmetries of a square).

    A blood cell has no 'up': every turn or mirror image of it is just as real, so
    this multiplies the data eightfold without inventing anything.
    """
    n = images.shape[0]
    images = torch.where(_coin(n, images.device, generator), images.flip(-1), images)
    images = torch.where(_coin(n, images.device, generator), images.flip(-2), images)
    if images.shape[-1] == images.shape[-2]:
        images = torch.where(_coin(n, images.device, generator), images.transpose(-1, -2), images)
    return images


def horizontal_flip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2 (a face has an up, but no preferred side)."""
    return torch.where(_coin(images.shape[0], images.device, generator), images.flip(-1), images)


def random_affine(
    images: torch.Tensor,
    scale: tuple[float, float] = (1.0, 1.15),
    shift: float = 0.06,
    degrees: float = 8.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Zoom in by a factor in `scale`, shift by up to `shift` of the side and turn by up to `degrees`, per image.

    One `affine_grid` + `grid_sample` for the batch (bilinear, border pixels repeated),
    i.e. a small random crop-and-resize of the aligned picture: the network learns the
    face, not the exact pixel where the alignment put it.
    """
    n = images.shape[0]
    u = torch.rand((n, 4), generator=generator, dtype=torch.float64)
    zoom = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    angle = (2 * u[:, 1] - 1) * math.radians(degrees)
    dx, dy = (2 * u[:, 2] - 1) * 2 * shift, (2 * u[:, 3] - 1) * 2 * shift  # grid units span 2 per side
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, dx], 1), torch.stack([sin, cos, dy], 1)], 1)
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def colour_jitter(
    images: torch.Tensor,
    brightness: float = 0.2,
    contrast: float = 0.2,
    saturation: float = 0.2,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Scale brightness, contrast (around the image mean) and saturation (around its grey) by 1 ± each amount.

    x' = clamp(grey + s (c (b x - m) + m - grey)), with b, c, s drawn per image:
    photos differ in exposure and white balance, which says nothing about the person.
    """
    n = images.shape[0]
    u = (2 * torch.rand((3, n, 1, 1, 1), generator=generator) - 1).to(images)
    b, c, s = 1 + brightness * u[0], 1 + contrast * u[1], 1 + saturation * u[2]
    images = images * b
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean) * c + mean
    grey = (0.299 * images[:, 0:1] + 0.587 * images[:, 1:2] + 0.114 * images[:, 2:3]).expand_as(images)
    return ((images - grey) * s + grey).clamp(0.0, 1.0)


def faces(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The face recipe: horizontal flip, a small zoom/shift/turn, and colour jitter."""
    images = horizontal_flip(images, generator)
    images = random_affine(images, generator=generator)
    return colour_jitter(images, generator=generator)


def for_dataset(choice: str, dataset: str) -> Augment | None:
    """The augmentation for an --augment choice; 'auto' is flips for gender, dihedral for cells.

    Faces have an up, so no turns; small crops, scales and colour jitter ('faces') did not
    raise validation accuracy on the shared CelebA faces (README), so 'auto' leaves them out.
    """
    if choice == "auto":
        choice = "flip" if dataset == "gender" else "dihedral"
    table: dict[str, Augment | None] = {
        "dihedral": dihedral,
        "flip": horizontal_flip,
        "faces": faces,
        "none": None,
    }
    if choice not in table:
        raise ValueError(f"unknown augmentation {choice!r} (expected one of {', '.join(CHOICES)})")
    return table[choice]
