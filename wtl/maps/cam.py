"""Class Activation Maps as pure tensor functions: no files, no plotting, no globals.

For a GAP head, logit_c = sum_k w[c, k] * mean_xy A_k(x, y) + b_c, so the map
cam_c(x, y) = sum_k w[c, k] * A_k(x, y) has spatial mean logit_c - b_c: it says
exactly where the evidence for class c sits. This holds for any network whose head is
global average pooling + one linear layer (nets.blocks.gap_linear_head says which and where:
the seed networks, ResNet, DenseNet, MobileNetV2, EfficientNet); a single sigmoid logit z is
read as the two logits (-z/2, z/2), so the negative class's map is the positive class's negated.
NetworkMultiLoss's blocks 1-3 reach the classifier through a linear transform T_i, so their
class weights are W @ T_i and their bias W @ t_i + b, and the same identity holds for every block.

The evidence map is the same contraction with the weights of the explained class's log-odds
(two classes: w_c - w_o, b_c - b_o; ops.evidence_weights): evidence.mean() + evidence_bias is
the log-odds of the class against the other, so its values are log-odds per position and maps
of different pictures can be drawn on one scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

from wtl.errors import UsageError
from wtl.maps.fusion import fuse
from wtl.maps.ops import block_probabilities, evidence_weights, head_weights, heatmap, pick_classes, weighted_sum
from wtl.maps.registry import DEFAULT_FUSION, GRADIENT_METHODS
from wtl.nets import blocks as net_blocks
from wtl.nets.seed import NetworkMultiLoss


@dataclass
class Explanation:
    """One view's numbers for a batch of images."""

    logits: torch.Tensor  # (B, C) the final prediction's logits
    class_index: torch.Tensor  # (B,) the class each map explains
    cam: torch.Tensor  # (B, h, w) raw CAM at feature resolution
    heatmap: torch.Tensor  # (B, H, W) normalised, at input resolution
    bias: torch.Tensor | None = None  # (B,) exact CAM: the head's bias of the explained class (mean + bias = logit)
    # The exact CAM only: per-position log-odds of the class (against the other of two), and the bias
    # such that evidence.mean((1, 2)) + evidence_bias is the log-odds (or, for C != 2, the logit).
    evidence: torch.Tensor | None = None  # (B, h, w)
    evidence_bias: torch.Tensor | None = None  # (B,)

    @property
    def probabilities(self) -> torch.Tensor:
        """Softmax of the logits, (B, C)."""
        return self.logits.softmax(dim=1)


@dataclass
class BlockExplanation:
    """The every-block view: per block its map, its mean activation and (where it has one) its own head's logits.

    With the exact CAM every block's map goes through that block's own head; with a Grad-CAM
    method it is that method at the block's output, through the network's final head.
    """

    logits: torch.Tensor  # (B, C) final (last block) logits
    class_index: torch.Tensor  # (B,)
    cams: list[torch.Tensor]  # n x (B, h_i, w_i) raw maps of each block
    means: list[torch.Tensor]  # n x (B, h_i, w_i) channel mean of each block (the original project's view)
    size: tuple[int, ...]  # (H, W) of the input images
    block_logits: list[torch.Tensor] | None = None  # n x (B, C), each block's own head (NetworkMultiLoss)
    block_bias: list[torch.Tensor] | None = None  # n x (B,), each head's bias for the explained class (exact CAM)
    labels: list[str] | None = None  # how figures name the blocks ('layer1'... for a torchvision network)
    # Exact CAM: each block's evidence map in log-odds (h_i, w_i) and its bias, as Explanation's.
    evidences: list[torch.Tensor] | None = None  # n x (B, h_i, w_i)
    evidence_biases: list[torch.Tensor] | None = None  # n x (B,)

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

    @property
    def block_probabilities(self) -> torch.Tensor:
        """(B, n): each block's own head's softmax probability of the explained class.

        A network with one head gives every block that head's probability, so the 'confidence'
        fusion then weighs the blocks alike.
        """
        return block_probabilities(self.block_logits or [self.logits] * len(self.cams), self.class_index)

    @property
    def probabilities(self) -> torch.Tensor:
        """Softmax of the final logits, (B, C)."""
        return self.logits.softmax(dim=1)

    def fused_heatmap(self, rule: str | None = None) -> torch.Tensor:
        """(B, H, W) in [0, 1]: the four CAMs fused by `rule` (default DEFAULT_FUSION) at the input's size."""
        return fuse(self.cams, self.size, rule or DEFAULT_FUSION, self.block_probabilities)

    def fused_cam(self, rule: str | None = None) -> torch.Tensor:
        """(B, h, w) in [0, 1]: the same fusion at the finest resolution of the blocks the rule uses."""
        return fuse(self.cams, None, rule or DEFAULT_FUSION, self.block_probabilities)


def gap_head(network: nn.Module) -> net_blocks.GapLinearHead:
    """The network's GAP-linear head; UsageError naming the Grad-CAM methods where it has none (no exact CAM)."""
    head = net_blocks.gap_linear_head(network)
    if head is None:
        others = ", ".join(GRADIENT_METHODS[1:])
        raise UsageError(
            f"cam is exact only for a head of global average pooling + one linear layer, and "
            f"{net_blocks.head_problem(network)}: use a Grad-CAM method (--method gradcam, or {others}), "
            "which works on any network"
        )
    return head


def last_block_features(network: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, the features the GAP head averages) of a GAP-linear network, in one forward pass."""
    return net_blocks.last_features(network, gap_head(network), images)


@torch.no_grad()
def explain_last_block(
    network: nn.Module,
    images: torch.Tensor,
    class_index: int | torch.Tensor | None = None,
    known: net_blocks.Pass | None = None,
) -> Explanation:
    """CAM of the last conv block (or stage) for the predicted class (or class_index), batched.

    `known`: the images' forward pass where the caller made one (nets.blocks.forward_pass), read instead of a new one.
    """
    head = gap_head(network)
    if known is not None and known.features is not None:
        logits, features = known.logits, known.features
    else:
        logits, features = net_blocks.last_features(network, head, images)
    classes = pick_classes(logits, class_index)
    weight, bias = head.weights()
    cam = weighted_sum(features, weight[classes].to(features.dtype))
    evidence, evidence_bias = class_evidence(features, weight.to(features.dtype), bias.to(features.dtype), classes)
    return Explanation(
        logits, classes, cam, heatmap(cam, tuple(images.shape[-2:])), bias[classes], evidence, evidence_bias
    )


def class_evidence(
    features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, classes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The evidence map (B, h, w) in log-odds and its bias (B,) of a GAP-linear head over `features` (B, K, h, w).

    evidence = sum_k w_e[k] A_k with (w_e, b_e) = ops.evidence_weights(weight, bias, classes), so that
    evidence.mean((1, 2)) + b_e equals the head's log-odds of the class against the other (or its logit).
    Any network whose logits are a linear layer over the spatial mean of a feature map can use it.
    """
    chosen, offset = evidence_weights(weight, bias, classes)
    return weighted_sum(features, chosen), offset


@torch.no_grad()
def explain_every_block(
    network: nn.Module,
    images: torch.Tensor,
    class_index: int | torch.Tensor | None = None,
    known: net_blocks.Pass | None = None,
) -> BlockExplanation:
    """Exact CAM of each block through its own head, plus each block's mean activation.

    `known`: the images' forward pass where the caller made one (nets.blocks.forward_pass), read instead of a new one.
    """
    if not isinstance(network, NetworkMultiLoss):
        raise TypeError("the every-block view needs a NetworkMultiLoss (trained with --network every)")
    blocks = known.blocks if known is not None else network.block_outputs(images)
    classifier = net_blocks.classifier(network)
    heads = [head_weights(classifier, block.transform) for block in net_blocks.blocks(network)]
    block_logits = [network.gap(b).flatten(1) @ w.T + bias for b, (w, bias) in zip(blocks, heads)]
    logits = block_logits[-1]
    classes = pick_classes(logits, class_index)
    cams = [weighted_sum(b, w[classes]) for b, (w, _) in zip(blocks, heads)]
    means = [b.mean(dim=1) for b in blocks]
    evidence = [class_evidence(b, w, bias, classes) for b, (w, bias) in zip(blocks, heads)]
    return BlockExplanation(
        logits=logits,
        class_index=classes,
        block_logits=block_logits,
        block_bias=[bias[classes] for _, bias in heads],
        cams=cams,
        means=means,
        size=tuple(images.shape[-2:]),
        evidences=[e for e, _ in evidence],
        evidence_biases=[b for _, b in evidence],
    )
