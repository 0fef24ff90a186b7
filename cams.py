"""Class Activation Maps as pure tensor functions: no files, no plotting, no globals.

For a GAP head, logit_c = sum_k w[c, k] * mean_xy A_k(x, y) + b_c, so the map
cam_c(x, y) = sum_k w[c, k] * A_k(x, y) has spatial mean logit_c - b_c: it says
exactly where the evidence for class c sits. NetworkMultiLoss's blocks 1-3 reach
the classifier through a linear transform T_i, so their class weights are W @ T_i
and their bias W @ t_i + b, and the same identity holds for every block.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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

    @property
    def block_probabilities(self) -> torch.Tensor:
        """(B, 4): each block's own head's softmax probability of the explained class."""
        return block_probabilities(self.block_logits, self.class_index)

    def fused_heatmap(self, rule: str | None = None) -> torch.Tensor:
        """(B, H, W) in [0, 1]: the four CAMs fused by `rule` (default DEFAULT_FUSION) at the input's size."""
        return fuse(self.cams, self.size, rule or DEFAULT_FUSION, self.block_probabilities)

    def fused_cam(self, rule: str | None = None) -> torch.Tensor:
        """(B, h, w) in [0, 1]: the same fusion at the finest resolution of the blocks the rule uses."""
        return fuse(self.cams, None, rule or DEFAULT_FUSION, self.block_probabilities)


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


# --------------------------------------------------------------------------- fusing block maps
#
# Every block has its own exact map, at its own resolution (64, 32, 16, 8 px at 128 px
# input). A rule fuses them into one map in [0, 1]. Each block's map is first upsampled
# (bilinear) to the fused size and min-max normalised, N_i = heatmap(cam_i, size), so
# every block counts at the same scale; the fused map is min-max normalised again.
#
# Measured on the bundled every-block models with the pointing game against the Giemsa
# stain (the numbers are in the README): block 1 fires on every cell's border, so a max
# lets the border win, while a product (an AND: hot only where every block is hot) keeps
# the spot that blocks 2-4 agree on.


@dataclass(frozen=True)
class FusionRule:
    """A way to fuse per-block maps: which blocks it uses, how it combines them, and what that means."""

    blocks: slice  # the blocks used, as a slice of the list of maps (block 1 first)
    combine: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]  # (n, B, H, W), (n, B) weights -> (B, H, W)
    description: str
    needs_probabilities: bool = False


def _max(stacked: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    return stacked.max(dim=0).values


def _mean(stacked: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    return stacked.mean(dim=0)


def _geometric_mean(stacked: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """prod_i N_i ** w_i, with w_i = 1/n when no weights are given (0 ** 0 is 1: a weightless block is ignored)."""
    if weights is None:
        weights = torch.full(stacked.shape[:2], 1.0 / stacked.shape[0], dtype=stacked.dtype, device=stacked.device)
    # In float64: a product of four values near 0 underflows float32 long before it loses its ranking.
    return stacked.double().pow(weights.double()[:, :, None, None]).prod(dim=0).to(stacked.dtype)


FUSION_RULES: dict[str, FusionRule] = {
    "max": FusionRule(slice(None), _max, "element-wise max of the normalised block maps (the old fused panel)"),
    "mean": FusionRule(slice(None), _mean, "arithmetic mean of the normalised block maps"),
    "mean234": FusionRule(slice(1, None), _mean, "arithmetic mean of the normalised maps of blocks 2-4"),
    "product": FusionRule(
        slice(None), _geometric_mean, "geometric mean (the product's n-th root) of the normalised block maps"
    ),
    "product234": FusionRule(
        slice(1, None), _geometric_mean, "geometric mean of the normalised maps of blocks 2-4 (block 1 left out)"
    ),
    "confidence": FusionRule(
        slice(None),
        _geometric_mean,
        "geometric mean of the normalised block maps weighted by each block head's probability of the class",
        needs_probabilities=True,
    ),
}
# Chosen by the pointing game and deletion/insertion on the bundled every-block models (README).
DEFAULT_FUSION = "product"


def block_probabilities(block_logits: Sequence[torch.Tensor], class_index: torch.Tensor) -> torch.Tensor:
    """(B, n): softmax probability of each image's explained class under each block's own head."""
    return torch.stack([logits.softmax(dim=1).gather(1, class_index[:, None]).squeeze(1) for logits in block_logits], 1)


def fuse(
    maps: Sequence[torch.Tensor],
    size: int | tuple[int, ...] | None = None,
    rule: str = DEFAULT_FUSION,
    block_probabilities: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fuse per-block maps (block 1 first, each (B, h_i, w_i), raw) into one (B, H, W) map in [0, 1].

    Each used block's map is upsampled to `size` (default: the finest, i.e. largest,
    resolution among the blocks the rule uses, which is what `--save-npz` keeps as
    `cam_fused`) and normalised to N_i in [0, 1]; then, per pixel:

    - max:        F = max_i N_i
    - mean:       F = (1/n) sum_i N_i;              mean234: the same over blocks 2-4
    - product:    F = (prod_i N_i) ** (1/n);        product234: the same over blocks 2-4
      (the geometric mean ranks pixels exactly as the product does, and keeps its scale)
    - confidence: F = prod_i N_i ** (p_i / sum_j p_j), p_i = block_probabilities[:, i],
      block i's own head's softmax probability of the explained class: a weighted
      geometric mean in which a block whose head does not believe the class counts little.

    F is min-max normalised per image (a constant map gives zeros). The "234" rules
    leave out the first map, whatever the number of maps; with a single map left every
    rule returns that block's heatmap.
    """
    if rule not in FUSION_RULES:
        raise ValueError(f"unknown fusion rule {rule!r} (expected one of {', '.join(FUSION_RULES)})")
    if not maps:
        raise ValueError("fusing needs at least one map")
    spec = FUSION_RULES[rule]
    every = list(range(len(maps)))
    indices = every[spec.blocks] or every
    used = [maps[i] for i in indices]
    if size is None:
        finest = max(used, key=lambda m: m.shape[-2] * m.shape[-1])
        size = tuple(finest.shape[-2:])
    weights = None
    if spec.needs_probabilities:
        if block_probabilities is None:
            raise ValueError(f"the fusion rule {rule!r} needs each block's probability of the class")
        if block_probabilities.shape != (used[0].shape[0], len(maps)):
            raise ValueError(f"block_probabilities must be (B, {len(maps)}), not {tuple(block_probabilities.shape)}")
        chosen = block_probabilities[:, indices].to(used[0].dtype).T.clamp_min(0)  # (n, B)
        total = chosen.sum(dim=0, keepdim=True)
        # No block believes the class at all: count every block the same.
        weights = torch.where(total > 0, chosen / total.clamp_min(1e-30), torch.full_like(chosen, 1 / len(used)))
    stacked = torch.stack([heatmap(m, size) for m in used])
    return normalize(spec.combine(stacked, weights))
