"""A network's blocks as features see them: stage by stage, before and after each block's ReLU; checks; heads.

Blocks are numbered 1..n (nets.blocks says where each begins and ends): block b's output z_b
(after batch norm, before ReLU) and A_b = ReLU(z_b) are computed stage by stage, stopping after
the block asked for. Filters and feature maps are read from the same stages.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wtl.maps.ops import head_weights, normalize
from wtl.nets import blocks as net_blocks
from wtl.nets.modes import eval_mode

CHUNK = 64  # images per forward pass when scanning many images


def block_stages(network: nn.Module) -> list[nn.Sequential]:
    """The blocks as Sequential(conv, pool, bn) (the ReLU applied by the caller); eval-mode dropout is skipped."""
    return [block.stage for block in net_blocks.blocks(network)]


def block_count(network: nn.Module) -> int:
    """How many conv blocks the network has."""
    return len(net_blocks.blocks(network))


def check_block(block: int, count: int) -> None:
    """ValueError unless block is one of 1..count."""
    if not 1 <= block <= count:
        raise ValueError(f"block {block} does not exist (expected 1..{count})")


def channel_count(network: nn.Module, block: int) -> int:
    """Number of channels of a block's output."""
    stages = block_stages(network)
    check_block(block, len(stages))
    bn = stages[block - 1][2]
    assert isinstance(bn, nn.BatchNorm2d)
    return bn.num_features


def class_count(network: nn.Module) -> int:
    """Number of classes of the network's classifier."""
    return net_blocks.classifier(network).out_features


def check_class(network: nn.Module, class_index: int) -> None:
    """ValueError unless class_index is one of the network's classes."""
    count = class_count(network)
    if not 0 <= class_index < count:
        raise ValueError(f"class index {class_index} does not exist (expected 0..{count - 1})")


def check_channels(network: nn.Module, block: int, channels: Tensor) -> Tensor:
    """The channel indices as a 1-D long tensor; ValueError when one is outside the block."""
    count = channel_count(network, block)
    indices = torch.as_tensor(channels, dtype=torch.long).reshape(-1)
    if indices.numel() == 0:
        raise ValueError("no channels given")
    outside = indices[(indices < 0) | (indices >= count)]
    if outside.numel():
        raise ValueError(f"channel {int(outside[0])} does not exist in block {block} (expected 0..{count - 1})")
    return indices


def device_of(network: nn.Module) -> torch.device:
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


def pre_activations(network: nn.Module, images: Tensor, last_block: int) -> list[Tensor]:
    """[z_1, ..., z_last]: each block's BN output before its ReLU; z_{b+1} is computed from ReLU(z_b)."""
    check_block(last_block, block_count(network))
    outputs = []
    # channels_last: on CPU it halves a conv/pool block's forward + backward time (max pool above all).
    x = images.contiguous(memory_format=torch.channels_last)
    for stage in block_stages(network)[:last_block]:
        z = stage(x)
        outputs.append(z)
        x = F.relu(z)
    return outputs


def block_activations(network: nn.Module, images: Tensor, block: int) -> Tensor:
    """A_b = ReLU(z_b) of a batch (B, C_b, h, w), in eval mode, without autograd."""
    with frozen(network), torch.no_grad():
        return F.relu(pre_activations(network, images, block)[-1])


def block_head(network: nn.Module, block: int) -> tuple[Tensor, Tensor] | None:
    """(W (C, K_b), bias (C,)) mapping the block's pooled features to logits, or None where it has no head."""
    blocks = net_blocks.blocks(network)
    check_block(block, len(blocks))
    if not blocks[block - 1].head:
        return None
    weight, bias = head_weights(net_blocks.classifier(network), blocks[block - 1].transform)
    return weight.detach(), bias.detach()


def filters(network: nn.Module) -> Tensor:
    """Block 1's kernels (C, 3, k, k), each min-max scaled to [0, 1] on its own (colours kept relative)."""
    conv = block_stages(network)[0][0]
    assert isinstance(conv, nn.Conv2d)
    return normalize(conv.weight.detach().float().cpu())


def input_mean_filters(network: nn.Module, block: int) -> Tensor:
    """Block b's kernels averaged over their input channels, (C_b, k, k), each divided by its largest |value|.

    Block 1's kernels see RGB and are drawn in colour (`filters`); a later block's kernel has one
    k x k slice per channel of the block before it, too many to draw: their mean shows which
    spatial pattern the kernel weighs on average (signed: +1 the kernel's strongest positive weight).
    """
    stages = block_stages(network)
    check_block(block, len(stages))
    conv = stages[block - 1][0]
    assert isinstance(conv, nn.Conv2d)
    mean = conv.weight.detach().float().cpu().mean(dim=1)
    return mean / mean.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)


def feature_maps(network: nn.Module, block: int, channels: Tensor, image: Tensor) -> Tensor:
    """(K, h, w): the chosen channels of A_b for one image (3, H, W) or (1, 3, H, W)."""
    indices = check_channels(network, block, channels)
    batch = image if image.ndim == 4 else image.unsqueeze(0)
    if batch.shape[0] != 1:
        raise ValueError("feature_maps takes one image")
    return block_activations(network, batch.to(device_of(network)), block)[0, indices.to(device_of(network))].cpu()


def head_blocks(network: nn.Module) -> tuple[int, ...]:
    """The blocks that have a class head: every block of a NetworkMultiLoss, the last of a Network."""
    return tuple(block.number for block in net_blocks.blocks(network) if block.head)
