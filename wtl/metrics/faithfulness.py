"""Faithfulness of a map: deletion and insertion curves (RISE), average drop and increase in confidence."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.transforms import functional as TF

from wtl.maps.ops import expand_classes
from wtl.nets.modes import eval_mode


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


@torch.no_grad()
def deletion_insertion(
    model: nn.Module,
    images: Tensor,
    heatmaps: Tensor,
    class_index: int | Tensor,
    steps: int = 16,
    blur: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-image deletion and insertion AUCs (B,), RISE-style (Petsiuk et al.).

    Pixels are taken in decreasing heatmap order, `steps` equal chunks at a time.
    Deletion replaces them with a blurred copy of the image (Gaussian, sigma `blur`
    px, default side/12) and tracks the class probability: a good map drops it fast
    (low AUC). Insertion starts from the blurred image and puts the original pixels
    back in the same order: a good map raises it fast (high AUC). Both AUCs are the
    trapezoid over the fraction of pixels 0, 1/steps, ..., 1.
    """
    if steps < 1:
        raise ValueError("steps must be at least 1")
    batch, _, height, width = images.shape
    if heatmaps.shape != (batch, height, width):
        raise ValueError(f"heatmaps {tuple(heatmaps.shape)} do not match images {tuple(images.shape)}")
    classes = expand_classes(class_index, batch, device=images.device)
    base = blurred(images, blur)
    pixels = height * width
    # rank[b, p] = position of pixel p in image b's decreasing-heat order (ties: lower index first).
    order = heatmaps.reshape(batch, pixels).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(pixels, device=order.device).expand(batch, -1))
    curves = torch.empty((2, steps + 1, batch), dtype=images.dtype, device=images.device)
    with eval_mode(model):
        for step in range(steps + 1):
            count = round(step * pixels / steps)
            taken = (rank < count).view(batch, 1, height, width)
            deleted = torch.where(taken, base, images)
            inserted = torch.where(taken, images, base)
            # Both curves in one forward pass.
            both = _probability(model, torch.cat([deleted, inserted]), torch.cat([classes, classes]))
            curves[0, step], curves[1, step] = both[:batch], both[batch:]
    fractions = torch.linspace(0.0, 1.0, steps + 1, device=images.device)
    auc = torch.trapezoid(curves, fractions, dim=1)
    return auc[0], auc[1]


@torch.no_grad()
def drop_and_increase(
    model: nn.Module, images: Tensor, heatmaps: Tensor, class_index: int | Tensor
) -> tuple[Tensor, Tensor]:
    """Per image: the relative drop max(0, Y - O) / Y in % and whether O > Y (the explanation map raised it)."""
    classes = expand_classes(class_index, images.shape[0], device=images.device)
    with eval_mode(model):
        full = _probability(model, images, classes)
        explained = _probability(model, images * heatmaps[:, None], classes)
    drop = (full - explained).clamp_min(0) / full.clamp_min(1e-12) * 100
    return drop, explained > full
