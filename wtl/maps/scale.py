"""One colour scale per model: a high percentile of |map| over many pictures, per method and view.

Per-image min-max stretching gives a healthy cell's faint evidence the same red as a parasite's.
The shared scale instead draws every picture of a model against one number, measured once on
its test split: for CAM the maps are log-odds per position (cam.class_evidence), so the colour
bar is in log-odds; the Grad-CAM family has no such units, but one scale per model still makes
its pictures comparable with each other.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from wtl.checkpoints.scales import SCALE_PERCENTILE, ModelScale
from wtl.maps.cam import explain_every_block, explain_last_block
from wtl.maps.gradcam import block_layers, make_method
from wtl.maps.ops import pick_classes, upsample
from wtl.maps.registry import COSTLY_METHODS, GRADIENT_METHODS
from wtl.nets import blocks as net_blocks
from wtl.nets.seed import NetworkMultiLoss

# The methods a scale is measured for (Score-CAM's forward pass per channel is too costly to run on a test split).
SCALE_METHODS = ("cam", *(m for m in GRADIENT_METHODS if m not in COSTLY_METHODS))
UNITS = {
    "cam": "log-odds of the explained class against the other (the logit for other than two classes)",
    **{m: "no units (the method's raw map)" for m in GRADIENT_METHODS},
}
# Positions kept per picture and view for the percentile (a seeded subsample of block 1's 64 x 64 maps).
KEPT_PER_PICTURE = 256


def signed_maps(network: nn.Module, method: str, images: Tensor, classes: Tensor | None = None) -> dict[str, Tensor]:
    """The raw maps a shared scale applies to, by view ('last', 'block1'...), (B, h_i, w_i) each.

    CAM: the evidence in log-odds, of the last block (a Network) or of every block and the last
    (a NetworkMultiLoss). The Grad-CAM family: its raw map at every block's output; 'last' is the
    last block's. `classes` default to each picture's prediction, the class the pictures show.
    """
    if method == "cam":
        if isinstance(network, NetworkMultiLoss):
            every = explain_every_block(network, images, classes)
            assert every.evidences is not None
            out = {f"block{i}": e for i, e in enumerate(every.evidences, start=1)}
            return {**out, "last": every.evidences[-1]}
        # Any network whose head is GAP + one linear layer: the seed Network, ResNet, DenseNet, EfficientNet...
        last = explain_last_block(network, images, classes)
        assert last.evidence is not None
        return {"last": last.evidence}
    if classes is None:
        with torch.no_grad():
            classes = pick_classes(network(images))
    out = {
        f"block{i}": make_method(method, network, layer)(images, classes).maps.detach()
        for i, layer in enumerate(block_layers(network), start=1)
    }
    return {**out, "last": out[f"block{len(out)}"]}


def shared_heatmap(raw: Tensor, size: int | tuple[int, ...]) -> Tensor:
    """What the shared-scale picture draws: the raw map (B, h, w) upsampled to the input (B, H, W), in its own units.

    No normalising: the colour bar spans +-scale (0..scale for a map that is never negative),
    and values beyond it are drawn at its ends.
    """
    return upsample(raw.float(), size)


def measure_scale(
    network: nn.Module,
    batches: Iterable[Tensor],
    methods: Sequence[str] = SCALE_METHODS,
    percentile: float = SCALE_PERCENTILE,
    seed: int = 0,
) -> tuple[dict[str, dict[str, float]], int]:
    """Per method and view the `percentile` of |map| over the pictures of `batches` ((B, 3, S, S) in [0, 1]).

    Each picture explains its prediction. Returns ({method: {view: scale}}, pictures seen).
    """
    generator = np.random.default_rng(seed)
    kept: dict[str, dict[str, list[np.ndarray]]] = {m: {} for m in methods}
    seen = 0
    for images in batches:
        with torch.no_grad():
            classes = pick_classes(network(images))
        for method in methods:
            if method == "cam" and net_blocks.head_problem(network) is not None:
                continue  # no exact CAM (VGG's MLP head, ConvNeXt's LayerNorm): the Grad-CAM family only
            for view, raw in signed_maps(network, method, images, classes).items():
                values = raw.detach().abs().flatten(1).cpu().numpy()
                if values.shape[1] > KEPT_PER_PICTURE:
                    columns = generator.choice(values.shape[1], KEPT_PER_PICTURE, replace=False)
                    values = values[:, columns]
                kept[method].setdefault(view, []).append(values.ravel())
        seen += len(images)
    scales = {
        method: {view: float(np.percentile(np.concatenate(parts), percentile)) for view, parts in views.items()}
        for method, views in kept.items()
    }
    return scales, seen


def model_scale(
    network: nn.Module,
    batches: Iterable[Tensor],
    source: str,
    methods: Sequence[str] = SCALE_METHODS,
    percentile: float = SCALE_PERCENTILE,
) -> ModelScale:
    """measure_scale as the ModelScale a sidecar keeps, with where it was measured (`source`)."""
    values, images = measure_scale(network, batches, methods, percentile)
    return ModelScale(values, percentile, images, source, {m: UNITS[m] for m in methods})
