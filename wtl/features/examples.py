"""The real images that drive a channel most: their receptive-field patches, found batch by batch."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wtl.features.stages import CHUNK, block_activations, check_channels, device_of
from wtl.nets.blocks import kernel_of

DEFAULT_EXAMPLES = 6


def receptive_field(block: int, kernel: int = 5) -> tuple[int, int, int]:
    """(size, stride, offset) in pixels: unit (i, j) of block b sees rows/cols [stride*i + offset, ... + size).

    Walked layer by layer from one pixel (size 1, stride 1, centre 0): a k x k 'same' conv adds
    (k - 1) * stride to the size; a 2x2 max pool adds 1 * stride, moves the centre by stride / 2
    and doubles the stride. offset = centre - (size - 1) / 2.
    """
    if block < 1:
        raise ValueError(f"block {block} does not exist (blocks count from 1)")
    size, stride, centre = 1, 1, 0.0
    for _ in range(block):
        size += (kernel - 1) * stride  # conv k x k, 'same' padding: the centre stays
        size += stride  # max pool 2x2, stride 2
        centre += stride / 2
        stride *= 2
    return size, stride, int(centre - (size - 1) / 2)


def crop_patches(images: Tensor, positions: Tensor, block: int, kernel: int = 5) -> Tensor:
    """(N, 3, s, s) receptive-field patches of images (N, 3, H, W) at block positions (N, 2) (row, col).

    Parts outside the image are zero (black), as the first conv's zero padding sees them.
    """
    size, stride, offset = receptive_field(block, kernel)
    padded = F.pad(images, (size, size, size, size))
    corners = (stride * positions + offset + size).tolist()  # top-left corners in the padded images
    return torch.stack([padded[i, :, t : t + size, c : c + size] for i, (t, c) in enumerate(corners)])


@dataclass
class Examples:
    """Each channel's strongest real images: their patches and where and how strongly they fire."""

    patches: Tensor  # (K, n, 3, s, s) receptive-field crops around each image's peak
    activations: Tensor  # (K, n) the peak value of A_b[k] in that image, descending
    image_index: Tensor  # (K, n) long: which image (in the order the images came)
    position: Tensor  # (K, n, 2) long: (row, col) of the peak at the block's resolution
    best_mean: Tensor  # (K,) the highest spatial mean of A_b[k] over all images (the maximisation's objective)
    best_mean_index: Tensor  # (K,) long: the image that reaches it


def top_patches(
    network: nn.Module, block: int, channels: Tensor, images: Tensor | Iterable[Tensor], n: int = DEFAULT_EXAMPLES
) -> Examples:
    """For each channel the n images whose peak of A_b[k] is highest (one patch per image), streamed by batch.

    images is one (N, 3, H, W) tensor (scanned in chunks of CHUNK) or an iterable of such batches,
    so that thousands of cells never have to sit in memory at once.
    """
    indices = check_channels(network, block, channels)
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n}")
    k = indices.numel()
    batches: Iterable[Tensor] = (
        (images[s : s + CHUNK] for s in range(0, images.shape[0], CHUNK)) if isinstance(images, Tensor) else images
    )
    best: tuple[Tensor, ...] | None = None  # (values, image_index, position, patches)
    best_mean = torch.full((k,), -math.inf)
    best_mean_index = torch.zeros(k, dtype=torch.long)
    seen = 0
    for batch in batches:
        activation = block_activations(network, batch.to(device_of(network)), block)[:, indices].cpu()
        count, _, _, width = activation.shape
        means = activation.mean(dim=(2, 3))  # (N, K)
        top_mean, where = means.max(dim=0)
        better = top_mean > best_mean
        best_mean = torch.where(better, top_mean, best_mean)
        best_mean_index = torch.where(better, where + seen, best_mean_index)
        peak, flat = activation.flatten(2).max(dim=2)  # (N, K): one peak per image and channel
        take = min(n, count)
        values, image = peak.topk(take, dim=0)  # (take, K)
        spot = flat.gather(0, image)
        position = torch.stack([spot // width, spot % width], dim=-1)  # (take, K, 2)
        crops = crop_patches(batch[image.flatten()].cpu(), position.flatten(0, 1), block, kernel_of(network))
        candidate = (
            values.T,
            (image + seen).T,
            position.transpose(0, 1),
            crops.view(take, k, *crops.shape[1:]).transpose(0, 1),
        )
        best = candidate if best is None else _merge(best, candidate, n)
        seen += count
    if best is None:
        raise ValueError("no images given")
    values, image, position, patches = best
    return Examples(patches, values, image, position, best_mean, best_mean_index)


def _merge(best: tuple[Tensor, ...], candidate: tuple[Tensor, ...], n: int) -> tuple[Tensor, ...]:
    """The n highest per channel of two (K, m, ...) candidate sets, descending."""
    joined = [torch.cat([a, b], dim=1) for a, b in zip(best, candidate)]
    values, order = joined[0].topk(min(n, joined[0].shape[1]), dim=1)
    picked = [values]
    for tensor in joined[1:]:
        index = order.view(*order.shape, *([1] * (tensor.ndim - 2))).expand(-1, -1, *tensor.shape[2:])
        picked.append(tensor.gather(1, index))
    return tuple(picked)
