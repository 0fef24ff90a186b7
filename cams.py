"""Class Activation Maps as pure tensor functions: no files, no plotting, no globals.

For a GAP head, logit_c = sum_k w[c, k] * mean_xy A_k(x, y) + b_c, so the map
cam_c(x, y) = sum_k w[c, k] * A_k(x, y) has spatial mean logit_c - b_c: it says
exactly where the evidence for class c sits. NetworkMultiLoss's blocks 1-3 reach
the classifier through a linear transform T_i, so their class weights are W @ T_i
and their bias W @ t_i + b, and the same identity holds for every block.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn

from model_network import Network, NetworkMultiLoss


def class_activation_map(features: torch.Tensor, class_weights: torch.Tensor) -> torch.Tensor:
    """CAM of a batch: features (B, K, h, w) and per-image class weights (B, K) -> (B, h, w)."""
    # One contraction over channels for the whole batch instead of a loop over k.
    return torch.einsum("bkhw,bk->bhw", features, class_weights)


def head_weights(classifier: nn.Linear, transform: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (C, K) and bias (C,) mapping a block's pooled features straight to logits."""
    weight, bias = classifier.weight, classifier.bias
    if isinstance(transform, nn.Linear):
        return weight @ transform.weight, weight @ transform.bias + bias
    return weight, bias


def normalize(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Min-max normalise each map of (B, ...) to [0, 1]; a constant map becomes zeros, never NaN."""
    # float64 so that even maps near float32's limits have a finite span.
    flat = maps.flatten(1).double().nan_to_num(nan=0.0)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    # Where the span is ~0 (constant map) divide by 1 instead: (x - low) is 0 there anyway.
    scaled = (flat - low) / torch.where(span > eps, span, torch.ones_like(span))
    return scaled.clamp_(0.0, 1.0).to(maps.dtype).view_as(maps)


def upsample(maps: torch.Tensor, size: int | tuple[int, ...]) -> torch.Tensor:
    """Bilinear upsampling of (B, h, w) maps to (B, H, W)."""
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)


def heatmap(cam: torch.Tensor, size: int | tuple[int, ...]) -> torch.Tensor:
    """What is drawn: the raw maps upsampled to the image, then normalised per image."""
    return normalize(upsample(cam, size))


@dataclass
class Explanation:
    """One view's numbers for a batch of images."""

    logits: torch.Tensor  # (B, C) the final prediction's logits
    class_index: torch.Tensor  # (B,) the class each map explains
    cam: torch.Tensor  # (B, h, w) raw CAM at feature resolution
    heatmap: torch.Tensor  # (B, H, W) normalised, at input resolution

    @property
    def probabilities(self) -> torch.Tensor:
        """Softmax of the logits, (B, C)."""
        return self.logits.softmax(dim=1)


@dataclass
class BlockExplanation:
    """The every-block view: per block its own logits, exact CAM and mean activation."""

    logits: torch.Tensor  # (B, C) final (block 4) logits
    class_index: torch.Tensor  # (B,)
    block_logits: list[torch.Tensor]  # 4 x (B, C), each block's own head
    block_bias: list[torch.Tensor]  # 4 x (B,), each head's bias term for the explained class
    cams: list[torch.Tensor]  # 4 x (B, h_i, w_i) raw CAMs through each block's head
    means: list[torch.Tensor]  # 4 x (B, h_i, w_i) channel mean of each block (the original project's view)
    size: tuple[int, ...]  # (H, W) of the input images

    # Upsampling eight maps to the image costs about as much as a tenth of the forward
    # pass, so the drawable maps are made on first use, not for every explanation.
    @cached_property
    def heatmaps(self) -> list[torch.Tensor]:
        """4 x (B, H, W) normalised CAMs at the input's resolution."""
        return [heatmap(c, self.size) for c in self.cams]

    @cached_property
    def mean_heatmaps(self) -> list[torch.Tensor]:
        """4 x (B, H, W) normalised mean activations at the input's resolution."""
        return [heatmap(m, self.size) for m in self.means]


def _linear(network: Network | NetworkMultiLoss) -> nn.Linear:
    """The classifier's final Linear layer (after Flatten and Dropout)."""
    layer = network.classifier[-1]
    assert isinstance(layer, nn.Linear)
    return layer


def _pick_class(logits: torch.Tensor, class_index: int | torch.Tensor | None) -> torch.Tensor:
    """(B,) classes to explain: the prediction, one class for all, or one class per image."""
    if class_index is None:
        return logits.argmax(dim=1)
    if isinstance(class_index, torch.Tensor):
        classes = class_index.to(device=logits.device, dtype=torch.long).reshape(-1)
        if classes.numel() == 1:
            return classes.expand(logits.shape[0]).clone()
        if classes.shape[0] != logits.shape[0] or not bool(((classes >= 0) & (classes < logits.shape[1])).all()):
            raise ValueError(f"class indices must be one per image in 0..{logits.shape[1] - 1}")
        return classes
    if not 0 <= class_index < logits.shape[1]:
        raise ValueError(f"class index {class_index} is outside 0..{logits.shape[1] - 1}")
    return torch.full((logits.shape[0],), class_index, dtype=torch.long, device=logits.device)


def last_block_features(network: Network | NetworkMultiLoss, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, last block's features) of either network, in one forward pass."""
    if isinstance(network, NetworkMultiLoss):
        features = network.block_outputs(images)[-1]
        return network.classifier(network.gap(features)), features
    logits, features = network(images, return_cam=True)
    return logits, features


@torch.no_grad()
def explain_last_block(
    network: Network | NetworkMultiLoss, images: torch.Tensor, class_index: int | torch.Tensor | None = None
) -> Explanation:
    """CAM of the last conv block for the predicted class (or class_index), batched."""
    logits, features = last_block_features(network, images)
    classes = _pick_class(logits, class_index)
    weight, _ = head_weights(_linear(network))
    cam = class_activation_map(features, weight[classes])
    return Explanation(logits, classes, cam, heatmap(cam, tuple(images.shape[-2:])))


@torch.no_grad()
def explain_every_block(
    network: Network | NetworkMultiLoss, images: torch.Tensor, class_index: int | torch.Tensor | None = None
) -> BlockExplanation:
    """Exact CAM of each block through its own head, plus each block's mean activation."""
    if not isinstance(network, NetworkMultiLoss):
        raise TypeError("the every-block view needs a NetworkMultiLoss (trained with --network every)")
    blocks = network.block_outputs(images)
    classifier = _linear(network)
    heads = [head_weights(classifier, t) for t in network.transforms()]
    block_logits = [network.gap(b).flatten(1) @ w.T + bias for b, (w, bias) in zip(blocks, heads)]
    logits = block_logits[-1]
    classes = _pick_class(logits, class_index)
    cams = [class_activation_map(b, w[classes]) for b, (w, _) in zip(blocks, heads)]
    means = [b.mean(dim=1) for b in blocks]
    return BlockExplanation(
        logits=logits,
        class_index=classes,
        block_logits=block_logits,
        block_bias=[bias[classes] for _, bias in heads],
        cams=cams,
        means=means,
        size=tuple(images.shape[-2:]),
    )


def average_heatmap(heatmaps: torch.Tensor) -> torch.Tensor:
    """Gender100's map: the pixel-wise mean of (N, H, W) normalised heatmaps."""
    return heatmaps.mean(dim=0)
