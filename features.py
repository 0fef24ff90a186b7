"""What a channel looks for: filters, feature maps, activation maximisation and real examples, as pure tensors.

No files, no plotting, no prompts. Blocks are numbered 1..4; every block of both networks is
Conv 5x5 'same' -> MaxPool 2 -> BatchNorm -> ReLU, so block b's output z_b (after BN, before
ReLU) and A_b = ReLU(z_b) are computed here stage by stage, stopping after the block asked for.

Channels for a class: through the block's own head (W @ T_b for NetworkMultiLoss, the classifier
for a Network's block 4) a channel's weight is w[c, k]; a Network's blocks 1-3 have no head, so a
channel's weight there is its Grad-CAM weight, mean_xy dS_c/dA_k, averaged over the given images.

Activation maximisation (Olah et al. 2017, as Lucid/Lucent do it): the K images are one batch
parameterised by their 2-D Fourier spectrum, scaled by 1/f so that every frequency band starts
with equal energy, mapped through a fixed colour-decorrelation matrix and a sigmoid (pixels
stay in [0, 1]); every Adam step sees a fresh random jitter / scale / rotation of each image.
The objective is the channel's spatial mean of z_b (before the ReLU): a channel that is zero
everywhere at the start still gets a gradient, and since ReLU(z) >= z, a positive objective
means a positive activation. The activations reported are those of A_b (after the ReLU).

Receptive field: in pixels, a unit at row i of block b sees rows [stride * i + offset, + size),
with stride 2^b, size 6, 16, 36, 76 and offset -2, -6, -14, -30 for b = 1..4 (receptive_field).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import cams
from gradcams import eval_mode
from model_network import Network, NetworkMultiLoss

AnyNetwork = Network | NetworkMultiLoss

BLOCKS = (1, 2, 3, 4)
# 96 Adam steps at 0.08 beat the best of the 5,000 real cells on every block-3 and block-4 channel
# of the bundled model (by 1.6x or more), at about 0.17 s a step for K = 8 at 128 px on one CPU core.
DEFAULT_STEPS = 96
DEFAULT_LR = 0.08
DEFAULT_EXAMPLES = 6
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
CHUNK = 64  # images per forward pass when scanning many images


# --------------------------------------------------------------------------- stages and checks


def block_stages(network: AnyNetwork) -> list[nn.Sequential]:
    """The four blocks as Sequential(conv, pool, bn) (the ReLU applied by the caller); eval-mode dropout is skipped."""
    if isinstance(network, Network):
        features = network.features
        downs = [features[i] for i in (0, 2, 4)]
        # A Down's seq is (conv, pool, bn, relu); block 4 is spelled out at features[6..9].
        stages = [nn.Sequential(*[down.get_submodule(f"seq.{j}") for j in range(3)]) for down in downs]
        return [*stages, nn.Sequential(features[6], features[7], features[8])]
    if isinstance(network, NetworkMultiLoss):
        n = network
        return [
            nn.Sequential(n.conv1, n.pool1, n.bn1),
            nn.Sequential(n.conv2, n.pool2, n.bn2),
            nn.Sequential(n.conv3, n.pool3, n.bn3),
            nn.Sequential(n.conv4, n.pool4, n.bn4),
        ]
    raise TypeError(f"{type(network).__name__} is not one of Where to look's networks")


def check_block(block: int) -> None:
    """ValueError unless block is one of 1..4."""
    if block not in BLOCKS:
        raise ValueError(f"block {block} does not exist (expected 1..4)")


def channel_count(network: AnyNetwork, block: int) -> int:
    """Number of channels of a block's output."""
    check_block(block)
    bn = block_stages(network)[block - 1][2]
    assert isinstance(bn, nn.BatchNorm2d)
    return bn.num_features


def classifier_linear(network: AnyNetwork) -> nn.Linear:
    """The classifier's final Linear layer (after Flatten and Dropout), shared by every head."""
    layer = network.classifier[-1]
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"the classifier ends in {type(layer).__name__}, not a Linear layer")
    return layer


def class_count(network: AnyNetwork) -> int:
    """Number of classes of the network's classifier."""
    return classifier_linear(network).out_features


def check_class(network: AnyNetwork, class_index: int) -> None:
    """ValueError unless class_index is one of the network's classes."""
    count = class_count(network)
    if not 0 <= class_index < count:
        raise ValueError(f"class index {class_index} does not exist (expected 0..{count - 1})")


def check_channels(network: AnyNetwork, block: int, channels: Tensor) -> Tensor:
    """The channel indices as a 1-D long tensor; ValueError when one is outside the block."""
    count = channel_count(network, block)
    indices = torch.as_tensor(channels, dtype=torch.long).reshape(-1)
    if indices.numel() == 0:
        raise ValueError("no channels given")
    outside = indices[(indices < 0) | (indices >= count)]
    if outside.numel():
        raise ValueError(f"channel {int(outside[0])} does not exist in block {block} (expected 0..{count - 1})")
    return indices


def _device(network: nn.Module) -> torch.device:
    return next(network.parameters()).device


@contextmanager
def frozen(network: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and requires_grad=False on every parameter inside the block; both restored afterwards."""
    flags = [(p, p.requires_grad) for p in network.parameters()]
    with eval_mode(network):
        try:
            for p, _ in flags:
                p.requires_grad_(False)
            yield network
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)


def pre_activations(network: AnyNetwork, images: Tensor, last_block: int) -> list[Tensor]:
    """[z_1, ..., z_last]: each block's BN output before its ReLU; z_{b+1} is computed from ReLU(z_b)."""
    check_block(last_block)
    outputs = []
    # channels_last: on CPU it halves a conv/pool block's forward + backward time (max pool above all).
    x = images.contiguous(memory_format=torch.channels_last)
    for stage in block_stages(network)[:last_block]:
        z = stage(x)
        outputs.append(z)
        x = F.relu(z)
    return outputs


def block_activations(network: AnyNetwork, images: Tensor, block: int) -> Tensor:
    """A_b = ReLU(z_b) of a batch (B, C_b, h, w), in eval mode, without autograd."""
    with frozen(network), torch.no_grad():
        return F.relu(pre_activations(network, images, block)[-1])


def block_head(network: AnyNetwork, block: int) -> tuple[Tensor, Tensor] | None:
    """(W (C, K_b), bias (C,)) mapping the block's pooled features to logits, or None where it has no head."""
    check_block(block)
    classifier = classifier_linear(network)
    if isinstance(network, NetworkMultiLoss):
        weight, bias = cams.head_weights(classifier, network.transforms()[block - 1])
    elif block == 4:
        weight, bias = cams.head_weights(classifier)
    else:
        return None
    return weight.detach(), bias.detach()


# --------------------------------------------------------------------------- which channels


def gradcam_channel_weights(network: AnyNetwork, block: int, class_index: int, images: Tensor) -> Tensor:
    """(K_b,) Grad-CAM weights mean_xy dS_c/dA_k, averaged over the images (chunks of CHUNK)."""
    check_class(network, class_index)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError("images must be a non-empty (N, 3, H, W) batch")
    stages = block_stages(network)
    parameter = next(network.parameters())
    total = torch.zeros(channel_count(network, block), device=parameter.device, dtype=parameter.dtype)
    with frozen(network):
        for start in range(0, images.shape[0], CHUNK):
            batch = images[start : start + CHUNK].to(_device(network))
            with torch.no_grad():
                activation = F.relu(pre_activations(network, batch, block)[-1])
            activation.requires_grad_(True)
            with torch.enable_grad():
                x = activation
                for stage in stages[block:]:
                    x = F.relu(stage(x))
                logits = network.classifier(network.gap(x))
                # Image b's score depends on image b alone: one backward for the whole chunk.
                (gradient,) = torch.autograd.grad(logits[:, class_index].sum(), activation)
            total += gradient.mean(dim=(2, 3)).sum(dim=0)
    return total / images.shape[0]


def class_channels(
    network: AnyNetwork, block: int, class_index: int, k: int, images: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(channels (K,) long, weights (K,)): the top-k weights for the class through the block's head, else Grad-CAM's."""
    check_block(block)
    check_class(network, class_index)
    count = channel_count(network, block)
    if not 1 <= k <= count:
        raise ValueError(f"{k} channels asked for, block {block} has 1..{count}")
    head = block_head(network, block)
    if head is not None:
        weights = head[0][class_index]
    elif images is None:
        raise ValueError(f"block {block} of a Network has no head: give images to rank its channels by Grad-CAM")
    else:
        weights = gradcam_channel_weights(network, block, class_index, images)
    values, channels = weights.topk(k)
    return channels.cpu(), values.cpu()


# --------------------------------------------------------------------------- filters and feature maps


def filters(network: AnyNetwork) -> Tensor:
    """Block 1's kernels (32, 3, 5, 5), each min-max scaled to [0, 1] on its own (colours kept relative)."""
    conv = block_stages(network)[0][0]
    assert isinstance(conv, nn.Conv2d)
    return cams.normalize(conv.weight.detach().float().cpu())


def feature_maps(network: AnyNetwork, block: int, channels: Tensor, image: Tensor) -> Tensor:
    """(K, h, w): the chosen channels of A_b for one image (3, H, W) or (1, 3, H, W)."""
    indices = check_channels(network, block, channels)
    batch = image if image.ndim == 4 else image.unsqueeze(0)
    if batch.shape[0] != 1:
        raise ValueError("feature_maps takes one image")
    return block_activations(network, batch.to(_device(network)), block)[0, indices.to(_device(network))].cpu()


def channel_means(network: AnyNetwork, block: int, images: Tensor, channels: Tensor | None = None) -> Tensor:
    """(N, K): the spatial mean of A_b per image and channel (the maximisation's objective after ReLU)."""
    indices = None if channels is None else check_channels(network, block, channels)
    means = []
    for start in range(0, images.shape[0], CHUNK):
        activation = block_activations(network, images[start : start + CHUNK].to(_device(network)), block)
        mean = activation.mean(dim=(2, 3)).cpu()
        means.append(mean if indices is None else mean[:, indices])
    return torch.cat(means)


# --------------------------------------------------------------------------- the Fourier image


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
    network: AnyNetwork,
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
    check_block(last_block)
    device = _device(network)
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
    network: AnyNetwork,
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
    rows = torch.arange(indices.numel(), device=_device(network))
    picked = indices.to(_device(network))

    def objective(z: list[Tensor]) -> Tensor:
        return z[-1][rows, picked].mean(dim=(1, 2))

    images = ascend(network, indices.numel(), block, objective, steps, seed, size, lr)
    activation = block_activations(network, images, block)[rows, picked].mean(dim=(1, 2))
    return images.cpu(), activation.cpu()


def head_blocks(network: AnyNetwork) -> tuple[int, ...]:
    """The blocks that have a class head: 1..4 for NetworkMultiLoss, 4 for Network."""
    return BLOCKS if isinstance(network, NetworkMultiLoss) else (4,)


def maximize_class(
    network: AnyNetwork,
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
        check_block(block)
        if block not in head_blocks(network):
            raise ValueError(f"block {block} of a Network has no class head (only block 4 has)")
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


# --------------------------------------------------------------------------- real examples


def receptive_field(block: int) -> tuple[int, int, int]:
    """(size, stride, offset) in pixels: unit (i, j) of block b sees rows/cols [stride*i + offset, ... + size).

    Walked layer by layer from one pixel (size 1, stride 1, centre 0): a 5x5 'same' conv adds
    4 * stride to the size; a 2x2 max pool adds 1 * stride, moves the centre by stride / 2 and
    doubles the stride. offset = centre - (size - 1) / 2.
    """
    check_block(block)
    size, stride, centre = 1, 1, 0.0
    for _ in range(block):
        size += 4 * stride  # conv 5x5, padding 2: the centre stays
        size += stride  # max pool 2x2, stride 2
        centre += stride / 2
        stride *= 2
    return size, stride, int(centre - (size - 1) / 2)


def crop_patches(images: Tensor, positions: Tensor, block: int) -> Tensor:
    """(N, 3, s, s) receptive-field patches of images (N, 3, H, W) at block positions (N, 2) (row, col).

    Parts outside the image are zero (black), as the first conv's zero padding sees them.
    """
    size, stride, offset = receptive_field(block)
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
    network: AnyNetwork, block: int, channels: Tensor, images: Tensor | Iterable[Tensor], n: int = DEFAULT_EXAMPLES
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
        activation = block_activations(network, batch.to(_device(network)), block)[:, indices].cpu()
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
        crops = crop_patches(batch[image.flatten()].cpu(), position.flatten(0, 1), block)
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


# --------------------------------------------------------------------------- the whole view


@dataclass
class ChannelView:
    """The features view of one block and class: chosen channels, their maximizers and real examples."""

    block: int
    class_index: int
    channels: Tensor  # (K,) long, by descending weight
    weights: Tensor  # (K,) head weight, or mean Grad-CAM weight for a Network's blocks 1-3
    maximizers: Tensor  # (K, 3, H, W) in [0, 1]
    activations: Tensor  # (K,) each maximizer's own mean of A_b[k]
    examples: Examples | None  # the strongest real patches, where images were given

    def arrays(self) -> dict[str, np.ndarray]:
        """The npz's arrays by key; with examples also examples, example_activations, best_real_activations.

        best_real_activations (K,) is the highest mean of A_b[k] over the images, to set against activations.
        """
        arrays = {
            "channels": self.channels.numpy(),
            "weights": self.weights.numpy(),
            "maximizers": self.maximizers.numpy(),
            "activations": self.activations.numpy(),
        }
        if self.examples is not None:
            arrays["examples"] = self.examples.patches.numpy()
            arrays["example_activations"] = self.examples.activations.numpy()
            arrays["best_real_activations"] = self.examples.best_mean.numpy()
        return arrays


def channel_view(
    network: AnyNetwork,
    block: int,
    class_index: int,
    k: int,
    rank_images: Tensor | None = None,
    example_images: Tensor | Iterable[Tensor] | None = None,
    n: int = DEFAULT_EXAMPLES,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    size: int = 128,
    lr: float = DEFAULT_LR,
) -> ChannelView:
    """class_channels (ranked over rank_images where the block has no head), maximize_channels, top_patches.

    example_images may be the same tensor as rank_images, or an iterable of batches for a large folder.
    """
    channels, weights = class_channels(network, block, class_index, k, rank_images)
    maximizers, activations = maximize_channels(network, block, channels, steps, seed, size, lr)
    examples = None if example_images is None else top_patches(network, block, channels, example_images, n)
    return ChannelView(block, class_index, channels, weights, maximizers, activations, examples)
