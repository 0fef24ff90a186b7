"""The two networks of Where to look: a GAP classifier and its every-block-head sibling.

Both take RGB images in [0, 1] (no normalisation outside the network, as the
published weights expect) of any size divisible by 2^blocks, and keep the module
names of the original project so that its published checkpoints load with strict=True.
Their shape is an `Architecture`: the original's 4 blocks of 5 x 5 convolutions with
32, 64, 128, 256 channels by default; fewer blocks, 3 x 3 kernels or another width are
knobs (model_main.py --blocks, --kernel, --width), read back from a checkpoint's keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from wtl.nets.registry import BLOCK_DROPOUT, DROPOUT


@dataclass(frozen=True)
class Architecture:
    """How deep, how wide and with which kernel the network is."""

    blocks: int = 4
    kernel: int = 5
    width: int = 32  # block 1's channels; each block doubles them

    def __post_init__(self) -> None:
        if self.blocks < 1 or self.kernel < 1 or self.kernel % 2 == 0 or self.width < 1:
            raise ValueError(f"an architecture needs >= 1 blocks, an odd kernel and a width >= 1, not {self}")

    @property
    def channels(self) -> tuple[int, ...]:
        """Channels after each block: width, 2 width, 4 width, ..."""
        return tuple(self.width * 2**i for i in range(self.blocks))


ORIGINAL = Architecture()
# Channels after each of the original four conv blocks; every block halves the resolution.
BLOCK_CHANNELS = ORIGINAL.channels


def _conv(in_channels: int, out_channels: int, kernel: int = 5) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=kernel, padding="same")


class Down(nn.Module):
    """One conv block: Conv 'same' -> MaxPool 2x2 -> BatchNorm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 5) -> None:
        super().__init__()
        # `seq` and this exact order are part of the published state-dict keys.
        self.seq = nn.Sequential(
            _conv(in_channels, out_channels, kernel),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


def _classifier(in_features: int, num_classes: int, dropout: float = DROPOUT) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_features, num_classes))


class Network(nn.Module):
    """Conv blocks, global average pooling and one linear classifier (CAM-ready)."""

    def __init__(
        self,
        num_classes: int = 2,
        dropout: float = DROPOUT,
        block_dropout: float = BLOCK_DROPOUT,
        architecture: Architecture = ORIGINAL,
    ) -> None:
        super().__init__()
        self.architecture = architecture
        channels, kernel = (3, *architecture.channels), architecture.kernel
        layers: list[nn.Module] = []
        for i in range(architecture.blocks - 1):
            layers += [Down(channels[i], channels[i + 1], kernel), nn.Dropout2d(block_dropout)]
        # The last block is spelled out instead of being a Down so that the published keys
        # features.6 (conv) and features.8 (batch norm) of the four-block network keep matching.
        last_in, last_out = channels[-2], channels[-1]
        layers += [_conv(last_in, last_out, kernel), nn.MaxPool2d(2), nn.BatchNorm2d(last_out), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.classifier = _classifier(last_out, num_classes, dropout)
        # Where each block ends in `features`: the Downs at 0, 2, 4, ... (a Dropout2d follows each),
        # the last block with its ReLU at the end (9 for four blocks). nets.blocks reads them from here.
        self.block_ends = (*range(0, 2 * (architecture.blocks - 1), 2), len(layers) - 1)

    def forward(self, x: torch.Tensor, return_cam: bool = False) -> Any:
        """Logits, or (logits, last block's features) when return_cam is set."""
        features = self.features(x)
        logits = self.classifier(self.gap(features))
        return (logits, features) if return_cam else logits

    def block_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The outputs of the conv blocks (after their ReLU)."""
        outputs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.block_ends:
                outputs.append(x)
        return tuple(outputs)


class NetworkMultiLoss(nn.Module):
    """The same blocks, each with its own head: GAP -> transform_i -> shared classifier.

    Block i's layers are conv<i>, pool<i>, bn<i>, relu<i> (the original project's names); blocks
    before the last reach the classifier through transform<i>.
    """

    def __init__(self, num_classes: int = 2, dropout: float = DROPOUT, architecture: Architecture = ORIGINAL) -> None:
        super().__init__()
        self.architecture = architecture
        channels, kernel = (3, *architecture.channels), architecture.kernel
        for i in range(1, architecture.blocks + 1):
            setattr(self, f"conv{i}", _conv(channels[i - 1], channels[i], kernel))
            setattr(self, f"pool{i}", nn.MaxPool2d(2))
            setattr(self, f"bn{i}", nn.BatchNorm2d(channels[i]))
            setattr(self, f"relu{i}", nn.ReLU())
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.classifier = _classifier(channels[-1], num_classes, dropout)
        # Earlier blocks have fewer channels than the classifier expects: a linear map (no
        # non-linearity) lifts their pooled features to the last block's width, which keeps
        # every block's head linear in its feature maps, so an exact CAM exists per block.
        for i in range(1, architecture.blocks):
            setattr(self, f"transform{i}", nn.Linear(channels[i], channels[-1]))

    def layers(self, block: int) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
        """Block `block`'s (conv, pool, bn, relu), 1 for the first block."""
        return tuple(self.get_submodule(f"{name}{block}") for name in ("conv", "pool", "bn", "relu"))  # type: ignore[return-value]

    def block_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The outputs of the conv blocks (after their ReLU)."""
        outputs = []
        for block in range(1, self.architecture.blocks + 1):
            conv, pool, bn, relu = self.layers(block)
            x = relu(bn(pool(conv(x))))
            outputs.append(x)
        return tuple(outputs)

    def transforms(self) -> tuple[nn.Module, ...]:
        """The per-block maps into the classifier's inputs (identity for the last block)."""
        lifts = [self.get_submodule(f"transform{i}") for i in range(1, self.architecture.blocks)]
        return (*lifts, nn.Identity())

    def forward(self, x: torch.Tensor, return_features: bool = False, return_outputs: bool = False) -> Any:
        """Last block's logits; the block outputs; or ((x_i, logits_i) for each block)."""
        blocks = self.block_outputs(x)
        if return_features:
            return blocks
        if return_outputs:
            return tuple(
                (block, self.classifier(transform(self.gap(block).flatten(1))))
                for block, transform in zip(blocks, self.transforms())
            )
        return self.classifier(self.gap(blocks[-1]))


def build_network(
    kind: str,
    num_classes: int = 2,
    dropout: float = DROPOUT,
    block_dropout: float = BLOCK_DROPOUT,
    architecture: Architecture = ORIGINAL,
) -> nn.Module:
    """Network for kind 'last', NetworkMultiLoss for kind 'every' (which has no block dropout)."""
    if kind == "last":
        return Network(num_classes, dropout, block_dropout, architecture)
    if kind == "every":
        return NetworkMultiLoss(num_classes, dropout, architecture)
    raise ValueError(f"unknown network kind {kind!r} (expected 'last' or 'every')")


def network_kind(state_dict: dict) -> str:
    """'last' or 'every', read from a state dict's keys (not from a file name)."""
    if "conv1.weight" in state_dict and "transform1.weight" in state_dict:
        return "every"
    if "conv1.weight" in state_dict and "classifier.2.weight" in state_dict and "conv2.weight" not in state_dict:
        return "every"  # a one-block NetworkMultiLoss has no transform
    if "features.0.seq.0.weight" in state_dict or "features.0.weight" in state_dict:
        return "last"
    raise ValueError("the weights are neither a Network nor a NetworkMultiLoss")


def architecture_of(state_dict: dict) -> Architecture:
    """The architecture a state dict was trained with: blocks, kernel and width, read off its weights."""
    if network_kind(state_dict) == "every":
        convs = sorted(int(m.group(1)) for key in state_dict if (m := re.fullmatch(r"conv(\d+)\.weight", key)))
        first = state_dict["conv1.weight"]
        return Architecture(len(convs), int(first.shape[-1]), int(first.shape[0]))
    downs = {int(m.group(1)) for key in state_dict if (m := re.fullmatch(r"features\.(\d+)\.seq\.0\.weight", key))}
    first = state_dict["features.0.seq.0.weight"] if downs else state_dict["features.0.weight"]
    return Architecture(len(downs) + 1, int(first.shape[-1]), int(first.shape[0]))


def num_classes_of(state_dict: dict) -> int:
    """Number of classes, read from the classifier's weight shape."""
    weight = state_dict.get("classifier.2.weight")
    if weight is None or weight.ndim != 2:
        raise ValueError("the weights have no classifier.2.weight matrix")
    return int(weight.shape[0])
