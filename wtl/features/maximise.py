"""Activation maximisation (Olah et al. 2017, as Lucid/Lucent do it): images that a channel or a class responds to.

The K images are one batch parameterised by their 2-D Fourier spectrum, scaled by 1/f so that
every frequency band starts with equal energy, mapped through a fixed colour-decorrelation matrix
and a sigmoid (pixels stay in [0, 1]); every Adam step sees a fresh random jitter / scale /
rotation of each image. The objective is the channel's spatial mean of z_b (before the ReLU): a
channel that is zero everywhere at the start still gets a gradient, and since ReLU(z) >= z, a
positive objective means a positive activation. The activations reported are those of A_b.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wtl.features.stages import (
    block_activations,
    block_count,
    block_head,
    check_block,
    check_channels,
    check_class,
    device_of,
    frozen,
    head_blocks,
    pre_activations,
)

# 96 Adam steps at 0.08 beat the best of the 5,000 real cells on every block-3 and block-4 channel
# of the bundled model (by 1.6x or more), at about 0.17 s a step for K = 8 at 128 px on one CPU core.
DEFAULT_STEPS = 96
DEFAULT_LR = 0.08
# Lucid's colour correlation (the square root of natural images' RGB covariance), columns scaled
# so the largest has norm 1: a unit step in the decorrelated space is a natural colour change.
_COLOUR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOUR_CORRELATION = _COLOUR_SQRT / _COLOUR_SQRT.norm(dim=0).max()
# Random transforms per step: translation in pixels, scale factor range, rotation in degrees.
JITTER_PX = 8
SCALE_RANGE = (0.9, 1.1)
ROTATE_DEGREES = 10.0
# The spectrum starts as N(0, INIT_SD^2); the rendered image (before the sigmoid) is divided by
# SPECTRUM_DIVISOR as Lucid does, which keeps the colours from saturating early.
INIT_SD = 0.01
SPECTRUM_DECAY = 1.0  # the power of 1/f
SPECTRUM_DIVISOR = 4.0


def spectrum_scale(height: int, width: int, decay: float = 1.0) -> Tensor:
    """(H, W//2+1) factors 1 / max(f, 1/max(H, W))^decay of rfft2's frequencies f (cycles per pixel)."""
    fy = torch.fft.fftfreq(height)[:, None]
    fx = torch.fft.rfftfreq(width)[None, :]
    frequency = torch.sqrt(fx * fx + fy * fy)
    return 1.0 / frequency.clamp(min=1.0 / max(height, width)) ** decay


def render(spectrum: Tensor, scale: Tensor, size: tuple[int, int]) -> Tensor:
    """Images (B, 3, H, W) in (0, 1): sigmoid(irfft2(M @ spectrum * scale / SPECTRUM_DIVISOR)), M = COLOUR_CORRELATION.

    spectrum is (B, 3, H, W//2+1, 2) (real, imaginary). Mixing the colours commutes with the
    per-frequency scale and the inverse FFT (all linear), so it runs on the half spectrum.
    """
    colour = COLOUR_CORRELATION.to(spectrum.device, spectrum.dtype)
    mixed = torch.matmul(colour, spectrum.reshape(spectrum.shape[0], 3, -1)).view_as(spectrum)
    coefficients = torch.view_as_complex(mixed) * (scale / SPECTRUM_DIVISOR)
    return torch.sigmoid(torch.fft.irfft2(coefficients, s=size, norm="ortho"))


def random_affine(count: int, size: tuple[int, int], generator: torch.Generator) -> Tensor:
    """(count, 2, 3) affine_grid matrices: a rotation of +-ROTATE_DEGREES, scale in SCALE_RANGE, +-JITTER_PX shift."""
    draw = torch.rand((count, 4), generator=generator)
    angle = (2 * draw[:, 0] - 1) * math.radians(ROTATE_DEGREES)
    low, high = SCALE_RANGE
    # affine_grid maps output to input coordinates: sampling a 1/s-sized window zooms in by s.
    inverse_scale = 1.0 / (low + (high - low) * draw[:, 1])
    shift = (2 * draw[:, 2:] - 1) * JITTER_PX * 2 / torch.tensor([size[1], size[0]], dtype=torch.float32)
    cos, sin = torch.cos(angle) * inverse_scale, torch.sin(angle) * inverse_scale
    return torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)


def transform(images: Tensor, theta: Tensor) -> Tensor:
    """The images resampled through affine matrices (bilinear, reflecting at the borders, same size)."""
    grid = F.affine_grid(theta.to(images.device, images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


Objective = Callable[[list[Tensor]], Tensor]


def ascend(
    network: nn.Module,
    count: int,
    last_block: int,
    objective: Objective,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    size: int = 128,
    lr: float = DEFAULT_LR,
    transforms: bool = True,
) -> Tensor:
    """(count, 3, size, size) images in [0, 1] maximising objective([z_1..z_last]) -> (count,), by Adam on the spectrum.

    The same seed gives the same images: the start and every step's transforms come from one
    generator seeded with it. Only blocks 1..last_block run; no parameter gets a gradient.
    """
    if steps < 0:
        raise ValueError(f"steps must be 0 or more, not {steps}")
    check_block(last_block, block_count(network))
    device = device_of(network)
    shape = (size, size)
    generator = torch.Generator().manual_seed(seed)
    scale = spectrum_scale(*shape, decay=SPECTRUM_DECAY).to(device)
    start = torch.randn((count, 3, size, size // 2 + 1, 2), generator=generator) * INIT_SD
    spectrum = start.to(device).requires_grad_(True)
    # fused: one kernel for Adam's update instead of one per arithmetic step (CPU and CUDA).
    optimizer = torch.optim.Adam([spectrum], lr=lr, fused=True)
    with frozen(network):
        for _ in range(steps):
            with torch.enable_grad():
                images = render(spectrum, scale, shape)
                if transforms:
                    images = transform(images, random_affine(count, shape, generator))
                score = objective(pre_activations(network, images, last_block))
                # Gradient ascent: Adam minimises, so it gets the gradient of -score.
                (gradient,) = torch.autograd.grad(-score.sum(), spectrum)
            spectrum.grad = gradient
            optimizer.step()
            spectrum.grad = None
        with torch.no_grad():
            return render(spectrum.detach(), scale, shape)


def maximize_channels(
    network: nn.Module,
    block: int,
    channels: Tensor,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    size: int = 128,
    lr: float = DEFAULT_LR,
) -> tuple[Tensor, Tensor]:
    """(maximizers (K, 3, size, size) in [0, 1], activations (K,)): one image per channel, optimised as one batch.

    The ascent maximises mean_xy z_b[k] (before the ReLU, so no channel is stuck at zero);
    activations are each maximizer's own mean_xy ReLU(z_b)[k], in eval mode, untransformed.
    """
    indices = check_channels(network, block, channels)
    rows = torch.arange(indices.numel(), device=device_of(network))
    picked = indices.to(device_of(network))

    def objective(z: list[Tensor]) -> Tensor:
        return z[-1][rows, picked].mean(dim=(1, 2))

    images = ascend(network, indices.numel(), block, objective, steps, seed, size, lr)
    activation = block_activations(network, images, block)[rows, picked].mean(dim=(1, 2))
    return images.cpu(), activation.cpu()


def maximize_class(
    network: nn.Module,
    class_index: int,
    blocks: Iterable[int] | None = None,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    size: int = 128,
    lr: float = DEFAULT_LR,
) -> tuple[Tensor, Tensor]:
    """(images (B, 3, size, size), logits (B,)): per block (default: head_blocks) an image maximising its class logit.

    Image j maximises W_j[c] . mean_xy ReLU(z_{b_j}) + bias_j[c]; all B images are one batch
    through blocks 1..max(blocks). logits are each final image's own block-head logit.
    """
    check_class(network, class_index)
    chosen = tuple(head_blocks(network) if blocks is None else blocks)
    if not chosen:
        raise ValueError("no blocks given")
    for block in chosen:
        check_block(block, block_count(network))
        if block not in head_blocks(network):
            raise ValueError(f"block {block} of a Network has no class head (only block {block_count(network)} has)")
    heads = {b: block_head(network, b) for b in set(chosen)}

    def logits(z: list[Tensor]) -> Tensor:
        scores = []
        for j, block in enumerate(chosen):
            head = heads[block]
            assert head is not None
            pooled = F.relu(z[block - 1][j]).mean(dim=(1, 2))
            scores.append(pooled @ head[0][class_index].to(pooled) + head[1][class_index].to(pooled))
        return torch.stack(scores)

    images = ascend(network, len(chosen), max(chosen), logits, steps, seed, size, lr)
    with frozen(network), torch.no_grad():
        final = logits(pre_activations(network, images, max(chosen)))
    return images.cpu(), final.cpu()
