"""Maps as pure tensor functions: the channel contraction, head weights, normalising, upsampling, class picking.

For a GAP head, logit_c = sum_k w[c, k] * mean_xy A_k(x, y) + b_c, so the map
cam_c(x, y) = sum_k w[c, k] * A_k(x, y) has spatial mean logit_c - b_c: it says
exactly where the evidence for class c sits. NetworkMultiLoss's blocks 1-3 reach
the classifier through a linear transform T_i, so their class weights are W @ T_i
and their bias W @ t_i + b, and the same identity holds for every block. The
Grad-CAM family contracts the same way, with weights from the gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def weighted_sum(activation: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_k weights[b, k] * A[b, k]: activation (B, K, h, w) and per-image channel weights (B, K) -> (B, h, w)."""
    # One batched matrix product (B, 1, K) x (B, K, h*w): a single BLAS call. The same contraction
    # written as einsum("bkhw,bk->bhw") took a slower route, 20x slower on the CPU (benchmarks/cam_speed.py).
    batch, _, height, width = activation.shape
    return torch.bmm(weights.unsqueeze(1), activation.flatten(2)).reshape(batch, height, width)


def head_weights(classifier: nn.Linear, transform: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (C, K) and bias (C,) mapping a block's pooled features straight to logits."""
    weight, bias = classifier.weight, classifier.bias
    if isinstance(transform, nn.Linear):
        return weight @ transform.weight, weight @ transform.bias + bias
    return weight, bias


def evidence_weights(
    weight: torch.Tensor, bias: torch.Tensor, classes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image the channel weights (B, K) and bias (B,) of the explained class's evidence, in logit units.

    Two classes: the log-odds of the explained class c against the other o,
    log p_c/p_o = z_c - z_o = sum_k (w[c,k] - w[o,k]) mean_xy A_k + (b_c - b_o);
    any other number of classes: the logit itself, z_c = sum_k w[c,k] mean_xy A_k + b_c.
    Contracting a block's features with these weights (weighted_sum) gives the evidence map,
    whose spatial mean plus this bias is the log-odds (or logit): the map is in log-odds units.
    `weight` (C, K) and `bias` (C,) are a head's (head_weights), `classes` (B,) long.
    """
    if weight.shape[0] == 2:
        other = 1 - classes
        return weight[classes] - weight[other], bias[classes] - bias[other]
    return weight[classes], bias[classes]


def normalize(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Min-max normalise each map of (B, ...) to [0, 1]; a constant map becomes zeros, never NaN.

    (x - min) / (max - min) per map. In float32 where the maps are finite and well inside float32's range
    (every map a user sees: a third of the time of the float64 path); otherwise in float64, so that NaNs
    become 0 and maps near float32's limits still have a finite span.
    """
    flat = maps.flatten(1)
    if flat.dtype == torch.float32 and flat.numel():
        low, high = torch.aminmax(flat, dim=1, keepdim=True)
        # Both ends finite and below 1e30 in size: max - min cannot overflow float32.
        if float(torch.maximum(low.abs(), high.abs()).max()) < 1e30:
            span = high - low
            scaled = (flat - low) / torch.where(span > eps, span, torch.ones_like(span))
            return scaled.clamp_(0.0, 1.0).view_as(maps)
    flat = flat.double().nan_to_num(nan=0.0)
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


def average_heatmap(heatmaps: torch.Tensor) -> torch.Tensor:
    """Gender100's map: the pixel-wise mean of (N, H, W) normalised heatmaps."""
    return heatmaps.mean(dim=0)


def expand_classes(
    class_index: int | torch.Tensor, batch: int, num_classes: int | None = None, device: torch.device | None = None
) -> torch.Tensor:
    """(B,) long: one class for every image, or one class per image; checked against 0..num_classes-1 if given."""
    classes = torch.as_tensor(class_index, dtype=torch.long, device=device).reshape(-1)
    if classes.numel() == 1:
        classes = classes.expand(batch)
    if classes.shape != (batch,):
        raise ValueError(f"class indices must be one int or {batch} (one per image), not {classes.numel()}")
    if num_classes is not None and bool(((classes < 0) | (classes >= num_classes)).any()):
        raise ValueError(f"class index {classes.tolist()} is outside 0..{num_classes - 1}")
    return classes.clone()


def pick_classes(logits: torch.Tensor, class_index: int | torch.Tensor | None = None) -> torch.Tensor:
    """(B,) the class each image's map explains: the prediction, one class for all, or one class per image.

    The one rule every method follows; an index outside 0..C-1 is a ValueError.
    """
    if class_index is None:
        return logits.argmax(dim=1)
    return expand_classes(class_index, logits.shape[0], logits.shape[1], logits.device)


def block_probabilities(block_logits: Sequence[torch.Tensor], class_index: torch.Tensor) -> torch.Tensor:
    """(B, n): softmax probability of each image's explained class under each block's own head."""
    return torch.stack([logits.softmax(dim=1).gather(1, class_index[:, None]).squeeze(1) for logits in block_logits], 1)
