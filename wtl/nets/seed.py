"""The two networks of Where to look: a GAP classifier and its every-block-head sibling.

Both take RGB images in [0, 1] (no normalisation outside the network, as the
published weights expect) of any size divisible by 16, and keep the module names
of the original project so that its published checkpoints load with strict=True.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from wtl.nets.registry import BLOCK_DROPOUT, DROPOUT

# Channels after each of the four conv blocks; every block halves the resolution.
BLOCK_CHANNELS = (32, 64, 128, 256)


def _conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=5, padding="same")


class Down(nn.Module):
    """One conv block: Conv 5x5 'same' -> MaxPool 2x2 -> BatchNorm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        # `seq` and this exact order are part of the published state-dict keys.
        self.seq = nn.Sequential(
            _conv(in_channels, out_channels),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


# The original project's dropout: 0.5 before the classifier, 0.2 (whole channels) after blocks 1-3.
# Dropout has no weights, so other rates (model_main's --dropout, --block-dropout) load the same checkpoints.


def _classifier(num_classes: int, dropout: float = DROPOUT) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(BLOCK_CHANNELS[-1], num_classes))


class Network(nn.Module):
    """Four conv blocks, global average pooling and one linear classifier (CAM-ready)."""

    def __init__(self, num_classes: int = 2, dropout: float = DROPOUT, block_dropout: float = BLOCK_DROPOUT) -> None:
        super().__init__()
        c1, c2, c3, c4 = BLOCK_CHANNELS
        # Block 4 is spelled out instead of being a Down so that the published keys
        # features.6 (conv) and features.8 (batch norm) keep matching.
        self.features = nn.Sequential(
            Down(3, c1),
            nn.Dropout2d(block_dropout),
            Down(c1, c2),
            nn.Dropout2d(block_dropout),
            Down(c2, c3),
            nn.Dropout2d(block_dropout),
            _conv(c3, c4),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(c4),
            nn.ReLU(),
        )
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.classifier = _classifier(num_classes, dropout)

    # Where each block ends in `features`: blocks 1-3 are the Downs at 0, 2, 4 (a Dropout2d follows
    # each), block 4 ends with its ReLU at 9. nets.blocks reads the blocks from here alone.
    BLOCK_ENDS = (0, 2, 4, 9)

    def forward(self, x: torch.Tensor, return_cam: bool = False) -> Any:
        """Logits, or (logits, last block's features) when return_cam is set."""
        features = self.features(x)
        logits = self.classifier(self.gap(features))
        return (logits, features) if return_cam else logits

    def block_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The outputs of the four conv blocks (after their ReLU)."""
        outputs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.BLOCK_ENDS:
                outputs.append(x)
        return tuple(outputs)


class NetworkMultiLoss(nn.Module):
    """The same four blocks, each with its own head: GAP -> transform_i -> shared classifier."""

    def __init__(self, num_classes: int = 2, dropout: float = DROPOUT) -> None:
        super().__init__()
        c1, c2, c3, c4 = BLOCK_CHANNELS
        self.conv1, self.pool1, self.bn1, self.relu1 = _conv(3, c1), nn.MaxPool2d(2), nn.BatchNorm2d(c1), nn.ReLU()
        self.conv2, self.pool2, self.bn2, self.relu2 = _conv(c1, c2), nn.MaxPool2d(2), nn.BatchNorm2d(c2), nn.ReLU()
        self.conv3, self.pool3, self.bn3, self.relu3 = _conv(c2, c3), nn.MaxPool2d(2), nn.BatchNorm2d(c3), nn.ReLU()
        self.conv4, self.pool4, self.bn4, self.relu4 = _conv(c3, c4), nn.MaxPool2d(2), nn.BatchNorm2d(c4), nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.classifier = _classifier(num_classes, dropout)
        # Blocks 1-3 have fewer channels than the classifier expects: a linear map
        # (no non-linearity) lifts their pooled features to 256, which keeps every
        # block's head linear in its feature maps, so an exact CAM exists per block.
        self.transform1 = nn.Linear(c1, c4)
        self.transform2 = nn.Linear(c2, c4)
        self.transform3 = nn.Linear(c3, c4)

    def block_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The outputs of the four conv blocks (after their ReLU)."""
        x1 = self.relu1(self.bn1(self.pool1(self.conv1(x))))
        x2 = self.relu2(self.bn2(self.pool2(self.conv2(x1))))
        x3 = self.relu3(self.bn3(self.pool3(self.conv3(x2))))
        x4 = self.relu4(self.bn4(self.pool4(self.conv4(x3))))
        return x1, x2, x3, x4

    def transforms(self) -> tuple[nn.Module, ...]:
        """The per-block maps into the classifier's 256 inputs (identity for block 4)."""
        return self.transform1, self.transform2, self.transform3, nn.Identity()

    def forward(self, x: torch.Tensor, return_features: bool = False, return_outputs: bool = False) -> Any:
        """Last block's logits; the four block outputs; or ((x_i, logits_i) for each block)."""
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
    kind: str, num_classes: int = 2, dropout: float = DROPOUT, block_dropout: float = BLOCK_DROPOUT
) -> nn.Module:
    """Network for kind 'last', NetworkMultiLoss for kind 'every' (which has no block dropout)."""
    if kind == "last":
        return Network(num_classes, dropout, block_dropout)
    if kind == "every":
        return NetworkMultiLoss(num_classes, dropout)
    raise ValueError(f"unknown network kind {kind!r} (expected 'last' or 'every')")


def network_kind(state_dict: dict) -> str:
    """'last' or 'every', read from a state dict's keys (not from a file name)."""
    if "conv1.weight" in state_dict and "transform1.weight" in state_dict:
        return "every"
    if "features.0.seq.0.weight" in state_dict:
        return "last"
    raise ValueError("the weights are neither a Network nor a NetworkMultiLoss")


def num_classes_of(state_dict: dict) -> int:
    """Number of classes, read from the classifier's weight shape."""
    weight = state_dict.get("classifier.2.weight")
    if weight is None or weight.ndim != 2:
        raise ValueError("the weights have no classifier.2.weight matrix")
    return int(weight.shape[0])
