"""The Grad-CAM family as small classes over one base: tensors in, raw maps out (no files, no plots).

Every method looks at the activation A (B, K, h, w) of one target layer and, for
all but Score-CAM, at the gradient G = dS/dA of the explained class score S;
they differ only in how they weigh the K channels. The base class owns all the
machinery (hooks, eval mode, batching, clean-up) so a method is one function.

For a GAP head at the last block, logit_c = sum_k w[c, k] mean_xy A_k + b_c, so
G_k(x, y) = w[c, k] / (h w) everywhere: Grad-CAM is then exactly ReLU(CAM) / (h w),
and HiResCAM's (un-ReLU'd) map sums over space to logit_c - b_c.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wtl.maps.ops import heatmap, normalize, pick_classes, upsample, weighted_sum
from wtl.nets import blocks as net_blocks
from wtl.nets.modes import ModeKeeper


@dataclass
class CAMResult:
    """One method's raw maps for a batch, with the logits and the class each map explains."""

    maps: Tensor  # (B, h, w) at the target layer's resolution; ReLU'd where the method defines it
    logits: Tensor  # (B, C) of the unmasked images
    class_index: Tensor  # (B,) long

    def heatmaps(self, size: int | tuple[int, ...]) -> Tensor:
        """The maps upsampled to `size` and normalised per image to [0, 1], as drawn."""
        return heatmap(self.maps, size)


def _resolve(model: nn.Module, target_layer: nn.Module | str) -> nn.Module:
    """The target module itself, looking a dotted name such as 'layer4' or 'features.9' up in the model.

    In a torchvision network of nets.zoo the name is torchvision's own (layer4, not net.layer4).
    """
    if isinstance(target_layer, str):
        if net_blocks.is_known(model):
            return net_blocks.resolve_layer(model, target_layer)
        try:
            return model.get_submodule(target_layer)
        except AttributeError as error:
            raise ValueError(f"the model has no module named {target_layer!r}") from error
    if not any(module is target_layer for module in model.modules()):
        raise ValueError("the target layer is not a module of this model")
    return target_layer


class BaseCAM:
    """A CAM method at one target layer; call it on a batch to get every image's map from one backward pass."""

    #: Whether the method needs dS/dA (Score-CAM does not, and runs without autograd).
    needs_gradient = True

    def __init__(self, model: nn.Module, target_layer: nn.Module | str) -> None:
        self.model = model
        self.target_layer = _resolve(model, target_layer)

    def __call__(
        self, images: Tensor, class_index: int | Tensor | None = None, known: net_blocks.Pass | None = None
    ) -> CAMResult:
        """Maps (B, h, w) explaining class_index (default: each image's prediction), computed in eval mode.

        `known`: the images' forward pass where the caller made one (nets.blocks.forward_pass, in eval
        mode). At the features a GAP-linear head averages, the gradient is then known without a pass.
        """
        if known is not None and self.needs_gradient:
            at_head = head_gradient(self.model, self.target_layer, known, class_index)
            if at_head is not None:
                activation, gradient, classes = at_head
                return CAMResult(self.weigh(activation, gradient).detach(), known.logits.detach(), classes)
        modes = ModeKeeper(self.model)
        captured: dict[str, Tensor] = {}

        def keep_activation(module: nn.Module, inputs: Any, output: Any) -> Tensor | None:
            if not isinstance(output, Tensor):
                raise TypeError(f"the target layer returned {type(output).__name__}, not a tensor")
            if not self.needs_gradient:
                # A copy: an in-place op downstream would otherwise change the saved values.
                captured["activation"] = output.detach().clone()
                return None
            # A fresh leaf, and the rest of the network gets a *clone* of it: an in-place op
            # downstream (ReLU(inplace=True), `out += identity`) then modifies the clone, never
            # the leaf, so both A and dS/dA are those of the layer's true output (torchcam #72).
            # Cutting the graph here also spares the backward pass through the earlier layers.
            leaf = output.detach().requires_grad_(True)
            captured["activation"] = leaf
            # The forward pass started without autograd: only the layers after the target
            # record a graph, so the layers before it run as fast as a bare forward pass.
            torch.set_grad_enabled(True)
            return leaf.clone()

        grad_mode = torch.is_grad_enabled()
        handle = self.target_layer.register_forward_hook(keep_activation)
        try:
            torch.set_grad_enabled(False)
            logits = self.model(images)
            if "activation" not in captured:
                raise RuntimeError("the model's forward pass never ran the target layer")
            activation = captured["activation"]
            classes = pick_classes(logits, class_index)
            if self.needs_gradient:
                # One backward for the batch: image b's score depends on image b alone in eval mode,
                # so d(sum_b S_b)/dA[b] = dS_b/dA[b]. autograd.grad (not .backward) leaves every
                # parameter's .grad untouched.
                with torch.enable_grad():
                    score = logits.gather(1, classes[:, None]).sum()
                (gradient,) = torch.autograd.grad(score, activation)
                torch.set_grad_enabled(False)
                maps = self.weigh(activation.detach(), gradient)
            else:
                handle.remove()  # the masked forward passes must not overwrite the activation
                maps = self.score_maps(images, activation, classes)
            return CAMResult(maps.detach(), logits.detach(), classes)
        finally:
            handle.remove()
            captured.clear()
            modes.restore()
            torch.set_grad_enabled(grad_mode)

    def weigh(self, activation: Tensor, gradient: Tensor) -> Tensor:
        """The method's map (B, h, w) from activation and gradient, both (B, K, h, w)."""
        raise NotImplementedError

    def score_maps(self, images: Tensor, activation: Tensor, classes: Tensor) -> Tensor:
        """A gradient-free method's map (B, h, w) from extra forward passes."""
        raise NotImplementedError


def head_gradient(
    model: nn.Module, layer: nn.Module, known: net_blocks.Pass, class_index: int | Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor] | None:
    """(A, dS/dA, classes) at the features a GAP-linear head averages, from a forward pass already made; else None.

    logit_c = sum_k w[c, k] mean_xy A_k + b_c, so dS/dA_k(x, y) = w[c, k] / (h w) at every position:
    exactly what autograd returns there, without a forward or a backward pass. Only where `layer` is
    the head's own input (not ReLU'd on the way, as DenseNet's is) and `known` holds its features.
    """
    head = net_blocks.gap_linear_head(model)
    if head is None or head.relu or layer is not head.features or known.features is None:
        return None
    activation = known.features
    classes = pick_classes(known.logits, class_index)
    weight, _ = head.weights()
    height, width = activation.shape[-2:]
    per_position = (weight[classes] / (height * width)).to(activation.dtype)
    return activation, per_position[:, :, None, None].expand_as(activation), classes


class GradCAM(BaseCAM):
    """Selvaraju et al.: channel weights are the spatial mean of the gradient; map ReLU(sum_k w_k A_k)."""

    def weigh(self, activation: Tensor, gradient: Tensor) -> Tensor:
        """ReLU of the activation weighted by its mean gradient per channel."""
        return F.relu(weighted_sum(activation, gradient.mean(dim=(2, 3))))


class GradCAMPlusPlus(BaseCAM):
    """Chattopadhay et al.: pixel-wise alphas from 2nd/3rd-order terms of an exponential score.

    With S' = exp(S), d2S'/dA2 and d3S'/dA3 reduce to exp(S) G^2 and exp(S) G^3 for a
    piece-wise linear network, and exp(S) cancels out of the alphas:
    alpha = G^2 / (2 G^2 + sum_xy A * G^3), w_k = sum_xy alpha * ReLU(G) (exp(S) only scales the map).
    """

    def weigh(self, activation: Tensor, gradient: Tensor) -> Tensor:
        """ReLU of the activation weighted by alpha-weighted positive gradients."""
        squared, cubed = gradient.pow(2), gradient.pow(3)
        denominator = 2 * squared + (activation * cubed).sum(dim=(2, 3), keepdim=True)
        # Where G is 0 the numerator is 0 too; dividing by 1 there keeps 0 instead of NaN.
        alpha = squared / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
        weights = (alpha * F.relu(gradient)).sum(dim=(2, 3))
        return F.relu(weighted_sum(activation, weights))


class XGradCAM(BaseCAM):
    """Fu et al.: w_k = sum_xy A_k G_k / sum_xy A_k (the activation-weighted gradient); map ReLU'd like Grad-CAM."""

    def weigh(self, activation: Tensor, gradient: Tensor) -> Tensor:
        """ReLU of the activation weighted by its activation-normalised gradient."""
        total = activation.sum(dim=(2, 3))
        # A channel that is zero everywhere contributes nothing whatever its weight.
        safe = torch.where(total.abs() > 1e-12, total, torch.ones_like(total))
        weights = (activation * gradient).sum(dim=(2, 3)) / safe
        return F.relu(weighted_sum(activation, weights))


class LayerCAM(BaseCAM):
    """Jiang et al.: every position weighted by its own positive gradient, ReLU(sum_k ReLU(G_k) * A_k)."""

    def weigh(self, activation: Tensor, gradient: Tensor) -> Tensor:
        """ReLU of the activation times its positive gradient, summed over channels."""
        return F.relu((F.relu(gradient) * activation).sum(dim=1))


class HiResCAM(BaseCAM):
    """Draelos and Carin: sum_k G_k * A_k element-wise, deliberately not ReLU'd.

    Kept signed so that, for a GAP head, its spatial sum is exactly logit_c - bias_c:
    negative evidence stays visible instead of being clipped away.
    """

    def weigh(self, activation: Tensor, gradient: Tensor) -> Tensor:
        """The gradient-times-activation map, signed."""
        return (gradient * activation).sum(dim=1)


class ScoreCAM(BaseCAM):
    """Wang et al.: each activation channel, upsampled and normalised, masks the input; no gradients.

    A channel's weight is how much the class's probability on the masked image says
    (the channel-importance score), passed through a softmax over the channels.
    The masked images go through the model in chunks of `batch_size`.
    """

    needs_gradient = False

    def __init__(self, model: nn.Module, target_layer: nn.Module | str, batch_size: int = 32) -> None:
        super().__init__(model, target_layer)
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.batch_size = batch_size

    def score_maps(self, images: Tensor, activation: Tensor, classes: Tensor) -> Tensor:
        """Softmax-over-channels of the masked images' class probabilities, weighing the channels."""
        batch, channels = activation.shape[:2]
        scores = torch.empty((batch, channels), dtype=images.dtype, device=images.device)
        for b in range(batch):
            # One image's K masks at input resolution, each min-max normalised to [0, 1].
            masks = normalize(upsample(activation[b], images.shape[-2:]))
            for start in range(0, channels, self.batch_size):
                chunk = masks[start : start + self.batch_size]
                probabilities = self.model(images[b : b + 1] * chunk[:, None]).softmax(dim=1)
                scores[b, start : start + len(chunk)] = probabilities[:, classes[b]]
        # The paper subtracts the baseline image's score; a constant shift does not change a softmax.
        return F.relu(weighted_sum(activation, scores.softmax(dim=1)))


METHODS: dict[str, type[BaseCAM]] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "hirescam": HiResCAM,
    "scorecam": ScoreCAM,
}


def make_method(name: str, model: nn.Module, target_layer: nn.Module | str | None = None, **options: Any) -> BaseCAM:
    """The named method (a key of METHODS) at target_layer, or at default_target_layer(model)."""
    if name not in METHODS:
        raise ValueError(f"unknown CAM method {name!r} (expected one of {', '.join(METHODS)})")
    layer = default_target_layer(model) if target_layer is None else target_layer
    return METHODS[name](model, layer, **options)


def default_target_layer(model: nn.Module) -> nn.Module:
    """The last block's output for our networks (its ReLU) and torchvision's (its last stage), else the last Conv2d."""
    if net_blocks.is_known(model):
        return net_blocks.default_layer(model)
    convolutions = [module for module in model.modules() if isinstance(module, nn.Conv2d)]
    if not convolutions:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer to explain; pass a target layer")
    return convolutions[-1]


def block_layers(model: nn.Module) -> list[nn.Module]:
    """The modules whose outputs are the conv blocks' outputs (after their ReLU) or the stages', first to last."""
    return [block.output for block in net_blocks.blocks(model)]
