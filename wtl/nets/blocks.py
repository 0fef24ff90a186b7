"""Where a network's conv blocks begin and end: the one map that CAM, Grad-CAM, features and the sanity check read.

A block is conv -> max pool -> batch norm -> ReLU. For each block this says which module's output is
the block's output (after its ReLU, where Grad-CAM hooks in), which layers come before the ReLU (the
pre-activation that activation maximisation ascends), and whether the block has a class head of its
own (every block of a NetworkMultiLoss, through its linear transform; only the last of a Network).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from wtl.nets.seed import Down, Network, NetworkMultiLoss


@dataclass(frozen=True)
class Block:
    """One conv block of a network."""

    number: int  # 1 for the first block
    output: nn.Module  # the module whose output is the block's output, after its ReLU
    stage: nn.Sequential  # conv -> pool -> batch norm: the block up to its ReLU
    head: bool  # whether the block reaches the classifier directly (its CAM is exact)
    transform: nn.Module | None = None  # NetworkMultiLoss: the linear lift of the pooled features to the classifier

    @property
    def name(self) -> str:
        """'block1', 'block2', ...: how tables, npz keys and the sanity check name it."""
        return f"block{self.number}"


def is_seed_network(network: nn.Module) -> bool:
    """True for the original project's two networks (Network, NetworkMultiLoss)."""
    return isinstance(network, (Network, NetworkMultiLoss))


def blocks(network: nn.Module) -> list[Block]:
    """The conv blocks of one of Where to look's networks, first to last."""
    if isinstance(network, Network):
        found = []
        ends = network.block_ends
        for number, end in enumerate(ends, start=1):
            layer = network.features[end]
            if isinstance(layer, Down):  # seq is (conv, pool, bn, relu)
                stage = nn.Sequential(*list(layer.seq)[:3])
            else:  # the last block, spelled out in `features` as conv, pool, bn, relu ending at `end`
                stage = nn.Sequential(*[network.features[i] for i in range(end - 3, end)])
            found.append(Block(number, layer, stage, head=number == len(ends)))
        return found
    if isinstance(network, NetworkMultiLoss):
        count = network.architecture.blocks
        layers = [network.layers(number) for number in range(1, count + 1)]
        return [
            Block(number, relu, nn.Sequential(conv, pool, bn), head=True, transform=transform)
            for number, ((conv, pool, bn, relu), transform) in enumerate(zip(layers, network.transforms()), start=1)
        ]
    raise TypeError(f"{type(network).__name__} is not one of Where to look's networks; name its layers instead")


def block_outputs(network: nn.Module, images: Tensor) -> tuple[Tensor, ...]:
    """The outputs of every conv block (after its ReLU), first to last, in one forward pass."""
    if not isinstance(network, (Network, NetworkMultiLoss)):
        raise TypeError(f"{type(network).__name__} is not one of Where to look's networks")
    return network.block_outputs(images)


def head(network: nn.Module, features: Tensor) -> Tensor:
    """The logits of the last block's output: global average pooling, then the classifier."""
    return network.get_submodule("classifier")(network.get_submodule("gap")(features))


def classifier(network: nn.Module) -> nn.Linear:
    """The classifier's final Linear layer (after Flatten and Dropout), which every head shares."""
    whole = network.get_submodule("classifier")
    layer = whole[-1] if isinstance(whole, nn.Sequential) else whole
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"the classifier ends in {type(layer).__name__}, not a Linear layer")
    return layer


def head_modules(network: nn.Module) -> list[nn.Module]:
    """The modules between the pooled features and the logits: the classifier (and the blocks' transforms)."""
    modules: list[nn.Module] = [network.get_submodule("classifier")]
    modules += [b.transform for b in blocks(network) if b.transform is not None and isinstance(b.transform, nn.Linear)]
    return modules


def kernel_of(network: nn.Module) -> int:
    """The side of the convolution kernels of a network's blocks (5 for the original networks)."""
    conv = blocks(network)[0].stage[0]
    assert isinstance(conv, nn.Conv2d)
    return int(conv.kernel_size[0])
