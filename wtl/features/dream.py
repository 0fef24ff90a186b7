"""Deep Dream (Mordvintsev et al. 2015): a real picture with the evidence of chosen channels, or of a class, amplified.

Unlike the maximisers (maximise.py), which start from noise, the ascent starts from the picture
itself and changes its pixels directly. It runs over octaves: the picture is first shrunk by
octave_scale^(octaves - 1), ascended for `steps` steps, and the detail it gained is carried up
to the next, larger octave, so the amplified patterns grow at several scales. Each step
rolls the picture by a random shift of up to JITTER_PX (the same seed, the same shifts), takes
the gradient of the objective, divides it by its mean absolute value (so `lr` is the mean pixel
change per step) and keeps the pixels in [0, 1]. The picture keeps its size.

Objectives: channels of a block, mean_k mean_xy z_b[k] over the chosen channels k (before the
ReLU, as the maximisers: a channel silent on the picture still gets a gradient); or a class, the
network's logit of the class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wtl.features.stages import (
    block_activations,
    block_count,
    check_block,
    check_channels,
    check_class,
    device_of,
    frozen,
    pre_activations,
)

DEFAULT_OCTAVES = 4
DEFAULT_OCTAVE_SCALE = 1.4
DEFAULT_STEPS = 20  # per octave
DEFAULT_LR = 0.01  # mean pixel change per step, pixels in [0, 1]
JITTER_PX = 4

Objective = Callable[[Tensor], Tensor]  # images (N, 3, H, W) -> (N,) to be raised


@dataclass(frozen=True)
class Ascent:
    """How a picture is dreamed: octaves, steps per octave, the jitter's seed, the octave scale, the step size."""

    octaves: int = DEFAULT_OCTAVES
    steps: int = DEFAULT_STEPS
    seed: int = 0
    octave_scale: float = DEFAULT_OCTAVE_SCALE
    lr: float = DEFAULT_LR  # mean pixel change per step


@dataclass
class Dream:
    """A dreamed picture and how much of the objective it gained."""

    image: Tensor  # (3, H, W) in [0, 1], the picture's own size
    objective_before: float  # the objective on the picture itself
    objective_after: float


def channel_objective(network: nn.Module, block: int, channels: Tensor) -> Objective:
    """mean over the chosen channels of mean_xy z_b[k] (block b's output before its ReLU)."""
    indices = check_channels(network, block, channels).to(device_of(network))

    def objective(images: Tensor) -> Tensor:
        return pre_activations(network, images, block)[-1][:, indices].mean(dim=(1, 2, 3))

    return objective


def class_objective(network: nn.Module, class_index: int) -> Objective:
    """The network's logit of class `class_index`."""
    check_class(network, class_index)

    def objective(images: Tensor) -> Tensor:
        return network(images)[:, class_index]

    return objective


def octave_sizes(height: int, width: int, octaves: int, scale: float, smallest: int) -> list[tuple[int, int]]:
    """The octaves' (height, width), smallest first, the last the picture's own; none below `smallest` px."""
    if octaves < 1 or scale < 1.0:
        raise ValueError(f"octaves must be >= 1 and the octave scale >= 1, not {octaves} and {scale}")
    sizes: list[tuple[int, int]] = []
    for octave in range(octaves - 1, -1, -1):
        factor = scale**octave
        size = (max(smallest, round(height / factor)), max(smallest, round(width / factor)))
        if not sizes or size != sizes[-1]:
            sizes.append(size)
    return sizes


def _resize(image: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(image.shape[-2:]) == size:
        return image
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)


def dream(
    network: nn.Module, image: Tensor, objective: Objective, ascent: Ascent = Ascent(), smallest: int = 16
) -> Dream:
    """Ascend `objective` from the picture (3, H, W) in [0, 1] over octaves; the result has the picture's size.

    Only the pixels change; the network's parameters, gradients and train/eval modes are left as
    they were. The same seed gives the same picture.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"a picture is (3, H, W), not {tuple(image.shape)}")
    if ascent.steps < 0:
        raise ValueError(f"steps must be 0 or more, not {ascent.steps}")
    device = device_of(network)
    original = image.detach().float().to(device)[None].clamp(0.0, 1.0)
    height, width = original.shape[-2:]
    generator = torch.Generator().manual_seed(ascent.seed)
    with frozen(network):
        with torch.no_grad():
            before = float(objective(original)[0])
        detail = torch.zeros_like(original)
        picture = original
        for size in octave_sizes(height, width, ascent.octaves, ascent.octave_scale, smallest):
            base = _resize(original, size)
            picture = (base + _resize(detail, size)).clamp(0.0, 1.0)
            for _ in range(ascent.steps):
                dy, dx = (int(v) for v in torch.randint(-JITTER_PX, JITTER_PX + 1, (2,), generator=generator))
                shifted = torch.roll(picture, (dy, dx), dims=(2, 3)).requires_grad_(True)
                with torch.enable_grad():
                    (gradient,) = torch.autograd.grad(objective(shifted).sum(), shifted)
                gradient = torch.roll(gradient, (-dy, -dx), dims=(2, 3))
                step = ascent.lr * gradient / gradient.abs().mean().clamp_min(1e-12)
                picture = (picture + step).clamp(0.0, 1.0).detach()
            detail = picture - base
        dreamed = _resize(picture, (height, width)).clamp(0.0, 1.0)
        with torch.no_grad():
            after = float(objective(dreamed)[0])
    return Dream(dreamed[0].cpu(), before, after)


def dream_channels(network: nn.Module, image: Tensor, block: int, channels: Tensor, ascent: Ascent = Ascent()) -> Dream:
    """The picture with block `block`'s chosen channels amplified (`dream` with `channel_objective`)."""
    check_block(block, block_count(network))
    smallest = 2**block  # every block halves the picture: below this the block has no pixels left
    return dream(network, image, channel_objective(network, block, channels), ascent, smallest)


def dream_class(network: nn.Module, image: Tensor, class_index: int, ascent: Ascent = Ascent()) -> Dream:
    """The picture with the evidence for a class amplified (`dream` with `class_objective`)."""
    return dream(network, image, class_objective(network, class_index), ascent, 2 ** block_count(network))


def channel_means(network: nn.Module, image: Tensor, block: int, channels: Tensor) -> Tensor:
    """(K,) mean_xy A_b[k] (after the ReLU) of each chosen channel on one picture (3, H, W)."""
    indices = check_channels(network, block, channels)
    activation = block_activations(network, image[None].to(device_of(network)), block)
    return activation[0, indices.to(activation.device)].mean(dim=(1, 2)).cpu()
