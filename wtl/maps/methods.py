"""The one place where a method's name becomes maps: the last block's, every block's, and the views evaluate scores.

Every command and every metric asks here, so that 'cam', 'gradcam', ... mean the same map
everywhere: `last_block` (the single view), `every_block` (the every-block view), `views`
(what evaluate and the report score), `heatmap_function` (what the sanity check and compare
re-run on changed weights).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from wtl.errors import UsageError
from wtl.maps.cam import BlockExplanation, Explanation, explain_every_block, explain_last_block
from wtl.maps.fusion import FUSION_RULES, fuse
from wtl.maps.gradcam import block_layers, make_method
from wtl.maps.ops import block_probabilities, heatmap, pick_classes
from wtl.maps.registry import COSTLY_METHODS, DEFAULT_FUSION, GRADIENT_METHODS, METHODS
from wtl.nets import blocks as net_blocks
from wtl.nets.seed import NetworkMultiLoss

# A map for the sanity check and compare: (network, images (B, 3, H, W) in [0, 1], classes (B,)) -> (B, H, W).
MapFunction = Callable[[nn.Module, Tensor, Tensor], Tensor]


def check_method(method: str) -> None:
    """UsageError unless `method` is one of registry.METHODS."""
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r} (expected one of {', '.join(METHODS)})")


def _options(method: str, batch_size: int) -> dict[str, Any]:
    # Score-CAM masks the image once per channel: those masked copies go through in batches too.
    return {"batch_size": batch_size} if method == "scorecam" else {}


def last_block(
    network: nn.Module,
    method: str,
    images: Tensor,
    class_index: int | Tensor | None = None,
    batch_size: int = 32,
    layer: str | None = None,
    known: net_blocks.Pass | None = None,
) -> Explanation:
    """The last block's map by `method`: the exact CAM, or a Grad-CAM-family method at the same layer (or `layer`).

    Args:
        network: one of Where to look's networks or a torchvision one (any CNN for the Grad-CAM family).
        method: a name of registry.METHODS.
        images: (B, 3, H, W) in [0, 1].
        class_index: None (each image's prediction), one class, or (B,) classes.
        batch_size: Score-CAM's masked images per forward pass.
        layer: the Grad-CAM family's target, a dotted module name (default: the last block or stage).
        known: the images' forward pass where the caller made one (nets.blocks.forward_pass): CAM reads it, and
            so does the Grad-CAM family at the features a GAP-linear head averages (its gradient is then known).

    Returns:
        Explanation with logits (B, C), class_index (B,), cam (B, h, w) raw, heatmap (B, H, W) in [0, 1].
    """
    check_method(method)
    if method == "cam":
        if layer is not None:
            raise UsageError(
                "--layer is for the Grad-CAM family: cam is exact only at the features the head pools "
                "(pass --method gradcam with --layer)"
            )
        return explain_last_block(network, images, class_index, known)
    target = None
    if layer is not None:
        try:
            target = net_blocks.resolve_layer(network, layer) if net_blocks.is_known(network) else layer
        except ValueError as error:
            raise UsageError(f"--layer {layer}: {error}") from None
    result = make_method(method, network, target, **_options(method, batch_size))(images, class_index, known)
    maps = result.maps.detach()
    return Explanation(result.logits.detach(), result.class_index, maps, heatmap(maps, tuple(images.shape[-2:])))


def _block_maps(network: nn.Module, method: str, images: Tensor, classes: Tensor, batch_size: int) -> list[Tensor]:
    """A Grad-CAM-family method at every block's output, (B, h_i, w_i) each."""
    options = _options(method, batch_size)
    return [
        make_method(method, network, layer, **options)(images, classes).maps.detach() for layer in block_layers(network)
    ]


def every_block(
    network: nn.Module, method: str, images: Tensor, class_index: int | Tensor | None = None, batch_size: int = 32
) -> BlockExplanation:
    """Every block's map: exact per-block CAMs for a NetworkMultiLoss, or `method` at each block of either network.

    Returns a BlockExplanation: per block the raw map (B, h_i, w_i) and mean activation, the final
    logits, and each block head's logits where the network has them (NetworkMultiLoss).
    """
    check_method(method)
    multi = isinstance(network, NetworkMultiLoss)
    if method == "cam":
        if not multi:
            raise UsageError(
                "the exact every-block CAM needs a NetworkMultiLoss checkpoint (trained with --network every); "
                f"for this {net_blocks.describe(network)} pass --method gradcam (or another) to explain every block"
            )
        return explain_every_block(network, images, class_index)
    with torch.no_grad():
        outputs = net_blocks.block_outputs(network, images)
        exact = explain_every_block(network, images) if multi else None
        logits = exact.logits if exact is not None else network(images)
    classes = pick_classes(logits, class_index)
    return BlockExplanation(
        logits=logits,
        class_index=classes,
        cams=_block_maps(network, method, images, classes, batch_size),
        means=[b.mean(dim=1) for b in outputs],
        size=tuple(images.shape[-2:]),
        block_logits=exact.block_logits if exact is not None else None,
        labels=[b.label for b in net_blocks.blocks(network)] if net_blocks.is_known(network) else None,
    )


def views(
    network: nn.Module,
    method: str,
    images: Tensor,
    classes: Tensor,
    rule: str = DEFAULT_FUSION,
    blocks: bool = False,
    probabilities: Tensor | None = None,
    batch_size: int = 32,
    extra_rules: Sequence[str] = (),
    known: net_blocks.Pass | None = None,
) -> dict[str, Tensor]:
    """One method's (B, H, W) heatmaps in [0, 1], by view: what evaluate scores and the report draws.

    A NetworkMultiLoss gives 'block1'..'block4' and 'fused' (fused by `rule`); a Network gives
    'last', or with blocks=True and a Grad-CAM method (CAM has no per-block heads there)
    'block1'..'block4' and 'fused'. `probabilities` (B, n) are the block heads' probabilities
    of the class for the 'confidence' rule (computed when needed and not given). `extra_rules` add
    a view 'fused_<rule>' per rule (other than `rule`), to compare fusion rules on the same maps.
    `known`, the images' forward pass where the caller made one, spares CAM a forward pass of its own.
    """
    size = tuple(images.shape[-2:])
    multi = isinstance(network, NetworkMultiLoss)
    if not (multi or (blocks and method != "cam")):
        return {"last": last_block(network, method, images, classes, batch_size, known=known).heatmap}
    # Only the maps: every_block's mean activations and extra forward passes are not scored.
    if method == "cam":
        exact = explain_every_block(network, images, classes, known)
        maps, probabilities = exact.cams, exact.block_probabilities if probabilities is None else probabilities
    else:
        maps = _block_maps(network, method, images, classes, batch_size)
    rules = [rule, *(r for r in extra_rules if r != rule)]
    if probabilities is None and any(FUSION_RULES[r].needs_probabilities for r in rules):
        with torch.no_grad():
            exact_heads = explain_every_block(network, images, classes).block_logits if multi else None
            heads = exact_heads or [network(images)] * len(maps)
        probabilities = block_probabilities(heads, classes)
    out = {f"block{i}": heatmap(m, size) for i, m in enumerate(maps, start=1)}
    out["fused"] = fuse(maps, size, rule, probabilities)
    for extra in rules[1:]:
        out[f"fused_{extra}"] = fuse(maps, size, extra, probabilities)
    return out


def heatmap_function(name: str, rule: str = DEFAULT_FUSION) -> MapFunction:
    """A named method's heatmaps at the network's last block: a name of registry.METHODS, or 'cam fused'.

    'cam fused' is an every-block network's CAMs fused by `rule`, the map the every-block view draws.
    """
    if name == "cam fused":

        def fused(network: nn.Module, images: Tensor, classes: Tensor) -> Tensor:
            if not isinstance(network, NetworkMultiLoss):
                raise TypeError("'cam fused' needs a NetworkMultiLoss")
            return explain_every_block(network, images, classes).fused_heatmap(rule)

        return fused
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} (expected cam fused or one of {', '.join(METHODS)})")

    def last(network: nn.Module, images: Tensor, classes: Tensor) -> Tensor:
        return last_block(network, name, images, classes).heatmap

    return last


def heatmap_functions(names: Sequence[str], rule: str = DEFAULT_FUSION) -> dict[str, MapFunction]:
    """heatmap_function of each name, by name."""
    return {name: heatmap_function(name, rule) for name in names}


def sanity_method_names(network: nn.Module, methods: Sequence[str] = ()) -> list[str]:
    """The sanity check's default methods: cam (and 'cam fused' for an every-block network) and every
    Grad-CAM method, the costly ones (Score-CAM) only when they are among `methods`."""
    names = ["cam"] if net_blocks.gap_linear_head(network) is not None else []  # no exact CAM without a GAP head
    names += ["cam fused"] if isinstance(network, NetworkMultiLoss) else []
    return names + [m for m in GRADIENT_METHODS if m not in COSTLY_METHODS or m in methods]
