"""Which channels carry a class's evidence in a block: their weights through the block's head, else Grad-CAM's.

Through the block's own head (W @ T_b for NetworkMultiLoss, the classifier for a Network's last
block) a channel's weight is w[c, k]; a Network's other blocks have no head, so a channel's
weight there is its Grad-CAM weight, mean_xy dS_c/dA_k, averaged over the given images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wtl.features.stages import (
    CHUNK,
    block_head,
    block_stages,
    channel_count,
    check_block,
    check_channels,
    check_class,
    device_of,
    frozen,
    pre_activations,
)
from wtl.nets import blocks as net_blocks


def gradcam_channel_weights(network: nn.Module, block: int, class_index: int, images: Tensor) -> Tensor:
    """(K_b,) Grad-CAM weights mean_xy dS_c/dA_k, averaged over the images (chunks of CHUNK)."""
    check_class(network, class_index)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError("images must be a non-empty (N, 3, H, W) batch")
    stages = block_stages(network)
    parameter = next(network.parameters())
    total = torch.zeros(channel_count(network, block), device=parameter.device, dtype=parameter.dtype)
    with frozen(network):
        for start in range(0, images.shape[0], CHUNK):
            batch = images[start : start + CHUNK].to(device_of(network))
            with torch.no_grad():
                activation = F.relu(pre_activations(network, batch, block)[-1])
            activation.requires_grad_(True)
            with torch.enable_grad():
                x = activation
                for stage in stages[block:]:
                    x = F.relu(stage(x))
                logits = net_blocks.head(network, x)
                # Image b's score depends on image b alone: one backward for the whole chunk.
                (gradient,) = torch.autograd.grad(logits[:, class_index].sum(), activation)
            total += gradient.mean(dim=(2, 3)).sum(dim=0)
    return total / images.shape[0]


def channel_weights(network: nn.Module, block: int, class_index: int, images: Tensor | None = None) -> Tensor:
    """(K_b,) every channel's weight for the class: through the block's head, else its mean Grad-CAM weight."""
    check_block(block, len(block_stages(network)))
    check_class(network, class_index)
    head = block_head(network, block)
    if head is not None:
        return head[0][class_index]
    if images is None:
        raise ValueError(f"block {block} of a Network has no head: give images to rank its channels by Grad-CAM")
    return gradcam_channel_weights(network, block, class_index, images)


def class_channels(
    network: nn.Module, block: int, class_index: int, k: int, images: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(channels (K,) long, weights (K,)): the top-k weights for the class through the block's head, else Grad-CAM's."""
    check_block(block, len(block_stages(network)))
    count = channel_count(network, block)
    if not 1 <= k <= count:
        raise ValueError(f"{k} channels asked for, block {block} has 1..{count}")
    values, channels = channel_weights(network, block, class_index, images).topk(k)
    return channels.cpu(), values.cpu()


def chosen_channels(
    network: nn.Module, block: int, class_index: int, channels: Tensor, images: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(channels (K,) long, weights (K,)): exactly the given channels, in the given order, with their weights."""
    indices = check_channels(network, block, channels)
    weights = channel_weights(network, block, class_index, images)
    return indices.cpu(), weights.cpu()[indices.cpu()]
