"""Where a network's blocks begin and end, and what its head is: the one map that CAM, Grad-CAM, features and the
sanity check read.

A seed block is conv -> max pool -> batch norm -> ReLU. For each block this says which module's
output is the block's output (after its ReLU, where Grad-CAM hooks in), which layers come before
the ReLU (the pre-activation that activation maximisation ascends), and whether the block has a
class head of its own (every block of a NetworkMultiLoss, through its linear transform; only the
last of a Network). A torchvision network's blocks are its four stages (nets/zoo.py `SPECS`: ResNet's
layer1..layer4, DenseNet's dense blocks, the feature stages at strides 4, 8, 16, 32 of the others).

`gap_linear_head` is the one place that says whether a network ends in global average pooling
followed by one linear layer, and where: the condition under which CAM is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wtl.nets.seed import Down, Network, NetworkMultiLoss
from wtl.nets.zoo import SPECS, TorchvisionNet, stage_groups


@dataclass(frozen=True)
class Block:
    """One conv block (a seed network's) or stage (a torchvision network's) of a network."""

    number: int  # 1 for the first block
    output: nn.Module  # the module whose output is the block's output, after its ReLU
    stage: nn.Sequential  # seed: conv -> pool -> batch norm (up to its ReLU); torchvision: the stage's modules
    head: bool  # whether the block reaches the classifier directly (its CAM is exact)
    transform: nn.Module | None = None  # NetworkMultiLoss: the linear lift of the pooled features to the classifier
    module_name: str = ""  # torchvision: the dotted name of the stage's last module (layer4, features.denseblock4)

    @property
    def name(self) -> str:
        """'block1', 'block2', ...: how tables, npz keys and the sanity check name it."""
        return f"block{self.number}"

    @property
    def label(self) -> str:
        """How figures and tables show it: 'block 4', or a torchvision stage's module name ('layer4')."""
        return self.module_name or f"block {self.number}"


@dataclass(frozen=True)
class GapLinearHead:
    """A head that is global average pooling and one linear layer: logit_c = sum_k w[c, k] mean_xy A_k + b_c.

    A is `features`' output (ReLU'd first where `relu`: DenseNet). A single-logit head (sigmoid)
    is read as the two logits (-z/2, z/2) of nets.zoo.two_logits, and so are its weights.
    """

    features: nn.Module
    linear: nn.Linear
    relu: bool = False
    sigmoid: bool = False

    def weights(self) -> tuple[Tensor, Tensor]:
        """The class weights (C, K) and biases (C,) on the pooled features, as the network's logits use them."""
        weight, bias = self.linear.weight, self.linear.bias
        if bias is None:
            bias = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
        if self.sigmoid:
            return torch.cat([-weight / 2, weight / 2]), torch.cat([-bias / 2, bias / 2])
        return weight, bias

    def activation(self, output: Tensor) -> Tensor:
        """The features the pooling averages, from `features`' output."""
        return F.relu(output) if self.relu else output


def is_seed_network(network: nn.Module) -> bool:
    """True for the original project's two networks (Network, NetworkMultiLoss)."""
    return isinstance(network, (Network, NetworkMultiLoss))


def is_known(network: nn.Module) -> bool:
    """True for a network whose blocks this module maps: a seed network or a torchvision one of nets.zoo."""
    return is_seed_network(network) or isinstance(network, TorchvisionNet)


def describe(network: nn.Module) -> str:
    """The network's name in messages: its torchvision architecture or its class."""
    return network.arch if isinstance(network, TorchvisionNet) else type(network).__name__


def blocks(network: nn.Module) -> list[Block]:
    """The conv blocks (or torchvision stages) of a network, first to last."""
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
    if isinstance(network, TorchvisionNet):
        spec = network.spec
        groups = stage_groups(network)
        return [
            Block(
                number,
                network.net.get_submodule(name),
                nn.Sequential(*group),
                # The last stage reaches a GAP-linear head (through DenseNet's norm5 and ReLU).
                head=spec.gap_linear and number == len(spec.stages),
                module_name=name,
            )
            for number, (name, group) in enumerate(zip(spec.stages, groups), start=1)
        ]
    raise TypeError(f"{type(network).__name__} is not one of Where to look's networks; name its layers instead")


def capture(network: nn.Module, modules: list[nn.Module], images: Tensor) -> tuple[Any, list[Tensor]]:
    """(the network's output, each module's output) from one forward pass, with hooks that exist only during it.

    The outputs are clones: a later in-place operation (DenseNet's ReLU) cannot change them.
    """
    found: dict[int, Tensor] = {}

    def keep(index: int) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
            found[index] = output.clone()

        return hook

    handles = [module.register_forward_hook(keep(i)) for i, module in enumerate(modules)]
    try:
        output = network(images)
    finally:
        for handle in handles:
            handle.remove()
    missing = [i for i in range(len(modules)) if i not in found]
    if missing:
        raise RuntimeError(f"the forward pass never ran module(s) {missing} of {describe(network)}")
    return output, [found[i] for i in range(len(modules))]


def block_outputs(network: nn.Module, images: Tensor) -> tuple[Tensor, ...]:
    """The outputs of every conv block (after its ReLU) or torchvision stage, first to last, in one forward pass."""
    if isinstance(network, (Network, NetworkMultiLoss)):
        return network.block_outputs(images)
    if isinstance(network, TorchvisionNet):
        return tuple(capture(network, [b.output for b in blocks(network)], images)[1])
    raise TypeError(f"{type(network).__name__} is not one of Where to look's networks")


def logits_and_block_outputs(network: nn.Module, images: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
    """(the logits, every block's or stage's output) in one forward pass, for any network this module maps."""
    if isinstance(network, TorchvisionNet):
        logits, captured = capture(network, [b.output for b in blocks(network)], images)
        return logits, tuple(captured)
    outputs = block_outputs(network, images)
    return head(network, outputs[-1]), outputs


@dataclass(frozen=True)
class Pass:
    """One forward pass of a batch, kept for everything that reads it: evaluate asks the network once per batch
    and its OOD scores, exact CAMs and every-block CAMs all read this record."""

    logits: Tensor  # (B, C)
    blocks: tuple[Tensor, ...]  # every block's (or stage's) output, first to last
    features: Tensor | None  # what a GAP-linear head averages (gap_linear_head); None where there is none

    def select(self, rows: Tensor) -> Pass:
        """The record of the images at `rows` (a (B,) bool mask or indices)."""
        features = None if self.features is None else self.features[rows]
        return Pass(self.logits[rows], tuple(block[rows] for block in self.blocks), features)


def forward_pass(network: nn.Module, images: Tensor) -> Pass:
    """The logits, every block's output and the GAP-linear head's features of `images`, from one forward pass."""
    head = gap_linear_head(network)
    if isinstance(network, TorchvisionNet):
        modules = [b.output for b in blocks(network)]
        extra = [head.features] if head is not None else []
        logits, captured = capture(network, [*modules, *extra], images)
        features = head.activation(captured[-1]) if head is not None else None
        return Pass(logits, tuple(captured[: len(modules)]), features)
    # A seed network's head averages its last block's output (gap_linear_head points at that module).
    logits, outputs = logits_and_block_outputs(network, images)
    return Pass(logits, outputs, head.activation(outputs[-1]) if head is not None else None)


def gap_linear_head(network: nn.Module) -> GapLinearHead | None:
    """The network's head where it is global average pooling + one linear layer (CAM is then exact); else None."""
    if isinstance(network, Network):
        return GapLinearHead(network.features[network.block_ends[-1]], classifier(network))
    if isinstance(network, NetworkMultiLoss):
        return GapLinearHead(blocks(network)[-1].output, classifier(network))
    if isinstance(network, TorchvisionNet) and network.spec.gap_linear:
        spec = network.spec
        return GapLinearHead(
            network.net.get_submodule(spec.pooled), network.linear, spec.relu_before_pool, network.sigmoid
        )
    return None


def head_problem(network: nn.Module) -> str | None:
    """Why the network has no exact CAM (its head is not GAP + one linear layer), in words; None if it has one."""
    if gap_linear_head(network) is not None:
        return None
    if isinstance(network, TorchvisionNet):
        return f"{network.arch}'s head is {network.spec.head_text}"
    return f"{type(network).__name__}'s head is unknown to this tool"


def last_features(network: nn.Module, head: GapLinearHead, images: Tensor) -> tuple[Tensor, Tensor]:
    """(logits, the features the GAP head averages) in one forward pass."""
    logits, (output,) = capture(network, [head.features], images)
    return logits, head.activation(output)


def head(network: nn.Module, features: Tensor) -> Tensor:
    """The logits of the last block's output (a seed network's): global average pooling, then the classifier."""
    return network.get_submodule("classifier")(network.get_submodule("gap")(features))


def classifier(network: nn.Module) -> nn.Linear:
    """The classifier's final Linear layer (after Flatten and Dropout), which every head shares."""
    if isinstance(network, TorchvisionNet):
        return network.linear
    whole = network.get_submodule("classifier")
    layer = whole[-1] if isinstance(whole, nn.Sequential) else whole
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"the classifier ends in {type(layer).__name__}, not a Linear layer")
    return layer


def head_modules(network: nn.Module) -> list[nn.Module]:
    """The modules between the pooled features and the logits: the classifier (and the blocks' transforms)."""
    if isinstance(network, TorchvisionNet):
        return [network.net.get_submodule(network.spec.head)]
    modules: list[nn.Module] = [network.get_submodule("classifier")]
    modules += [b.transform for b in blocks(network) if b.transform is not None and isinstance(b.transform, nn.Linear)]
    return modules


def default_layer(network: nn.Module) -> nn.Module:
    """Where the Grad-CAM family looks by default: the last block's (or stage's) output."""
    return blocks(network)[-1].output


def resolve_layer(network: nn.Module, name: str) -> nn.Module:
    """A module of the network by its dotted name (torchvision's own names for a torchvision network, e.g. layer4).

    ValueError naming the blocks' modules when there is no such module.
    """
    roots = [network.net, network] if isinstance(network, TorchvisionNet) else [network]
    for root in roots:
        try:
            return root.get_submodule(name)
        except AttributeError:
            continue
    stages = [b.module_name for b in blocks(network) if b.module_name] if is_known(network) else []
    hint = f"; its stages are {', '.join(stages)}" if stages else ""
    raise ValueError(f"{describe(network)} has no module named {name!r} (a dotted name, e.g. layer4.1.conv2){hint}")


def kernel_of(network: nn.Module) -> int:
    """The side of the convolution kernels of a network's blocks (5 for the original networks)."""
    conv = blocks(network)[0].stage[0]
    assert isinstance(conv, nn.Conv2d)
    return int(conv.kernel_size[0])


def stage_names(arch: str) -> tuple[str, ...]:
    """The dotted module names that end a torchvision architecture's four stages."""
    return SPECS[arch].stages
