"""The Grad-CAM family: exact identities on the GAP networks, batching, architectures, hooks and modes."""

from __future__ import annotations

import copy
import functools
import gc
from collections.abc import Callable

import pytest
import torch
import torchvision
from conftest import randomise_batch_norm
from torch import nn

from model_network import Network, NetworkMultiLoss
from wtl.maps import cam as cams
from wtl.maps import fusion, ops
from wtl.maps import gradcam as gradcams
from wtl.nets import blocks as net_blocks
from wtl.nets import modes as model_modes
from wtl.nets import zoo

GRADIENT_METHODS = [name for name in gradcams.METHODS if name != "scorecam"]


def network(kind: str = "last", seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A randomly initialised Network or NetworkMultiLoss with random BN statistics, in eval mode."""
    torch.manual_seed(seed)
    model = Network() if kind == "last" else NetworkMultiLoss()
    return randomise_batch_norm(model, seed).to(dtype).eval()


def plain_cnn(seed: int = 0, channels: int = 8, side: int = 32) -> nn.Sequential:
    """The seed's notebook 003 shape: (Conv-ReLU-MaxPool) x 3, Flatten, Linear, ReLU, Linear; no GAP."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    width = 3
    for _ in range(3):
        layers += [nn.Conv2d(width, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        width = channels
    flat = channels * (side // 8) ** 2
    layers += [nn.Flatten(), nn.Linear(flat, 16), nn.ReLU(), nn.Linear(16, 2)]
    return nn.Sequential(*layers).eval()


def images(count: int, side: int, seed: int = 1, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Random images in [0, 1]."""
    return torch.rand((count, 3, side, side), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def no_hooks(model: nn.Module) -> bool:
    """True when no module of the model holds a forward, pre-forward or backward hook."""
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks and not m._backward_pre_hooks
        for m in model.modules()
    )


def all_grads_none(model: nn.Module) -> bool:
    """True when no parameter of the model has a .grad."""
    return all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------- identities on the GAP networks


@pytest.mark.parametrize("class_index", [None, 0, 1, "per image"])
def test_gradcam_is_relu_cam_over_map_size_on_the_gap_network(class_index: object) -> None:
    model, x = network(), images(5, 32)
    classes = torch.tensor([0, 1, 1, 0, 1]) if class_index == "per image" else class_index
    result = gradcams.GradCAM(model, model.features[-1])(x, classes)  # type: ignore[arg-type]
    logits, features = cams.last_block_features(model, x)
    expected_classes = logits.argmax(1) if classes is None else torch.as_tensor(classes).expand(5)
    cam = ops.weighted_sum(features, model.classifier[-1].weight[expected_classes])
    h, w = features.shape[-2:]
    assert torch.equal(result.class_index, expected_classes)
    torch.testing.assert_close(result.logits, logits)
    torch.testing.assert_close(result.maps, cam.relu() / (h * w), rtol=1e-10, atol=1e-12)
    assert result.maps.shape == (5, h, w)


def test_xgradcam_equals_gradcam_at_a_gap_head() -> None:
    # With a constant gradient w_k / (h w) per channel, sum(A G) / sum(A) is that same constant.
    model, x = network(seed=3), images(4, 32)
    grad = gradcams.GradCAM(model, "features.9")(x, 1).maps
    xgrad = gradcams.XGradCAM(model, "features.9")(x, 1).maps
    torch.testing.assert_close(xgrad, grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["last", "every"])
def test_hirescam_sums_to_logit_minus_bias(kind: str) -> None:
    model, x = network(kind, seed=2), images(6, 32, seed=4)
    result = gradcams.HiResCAM(model, gradcams.default_target_layer(model))(x, torch.tensor([0, 1, 0, 1, 0, 1]))
    bias = model.classifier[-1].bias[result.class_index]
    explained = result.logits.gather(1, result.class_index[:, None]).squeeze(1)
    torch.testing.assert_close(result.maps.sum(dim=(1, 2)), explained - bias, rtol=1e-10, atol=1e-12)
    assert (result.maps < 0).any(), "HiResCAM must stay signed"


def test_the_multi_loss_network_gradcam_matches_its_last_block_cam() -> None:
    model, x = network("every", seed=5), images(3, 32)
    result = gradcams.GradCAM(model, model.relu4)(x, 1)
    explanation = cams.explain_every_block(model, x, 1)
    h, w = explanation.cams[-1].shape[-2:]
    torch.testing.assert_close(result.maps, explanation.cams[-1].relu() / (h * w), rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- batching


def _batch_case(method: str) -> tuple[nn.Module, str | nn.Module, int]:
    """Score-CAM masks the input once per channel: a tiny CNN keeps its 32-image batch fast."""
    if method == "scorecam":
        return plain_cnn(channels=4, side=16).double(), "6", 16
    model = network(seed=6)
    return model, model.features[-1], 32


@pytest.mark.parametrize("method", list(gradcams.METHODS))
def test_an_image_gets_the_same_map_alone_and_in_a_batch_of_32(method: str) -> None:
    model, layer, side = _batch_case(method)
    batch = images(32, side, seed=7)
    cam = gradcams.METHODS[method](model, layer)
    together = cam(batch, 1)
    for index in (0, 13, 31):
        alone = cam(batch[index : index + 1], 1)
        torch.testing.assert_close(alone.maps[0], together.maps[index], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(alone.logits[0], together.logits[index], rtol=1e-9, atol=1e-12)


def test_scorecam_does_not_depend_on_its_chunk_size() -> None:
    model, x = plain_cnn(channels=4, side=16).double(), images(3, 16)
    small = gradcams.ScoreCAM(model, "6", batch_size=1)(x).maps
    large = gradcams.ScoreCAM(model, "6", batch_size=32)(x).maps
    torch.testing.assert_close(small, large, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- architectures


@functools.cache
def _resnet18() -> nn.Module:
    """One random resnet18 per session (building it is the slow part), with random BN statistics."""
    torch.manual_seed(0)
    return randomise_batch_norm(torchvision.models.resnet18(weights=None, num_classes=2)).eval()


def _resnet(inplace: bool = True) -> nn.Module:
    """A private copy of the resnet18; its ReLUs in place (torchvision's default) or not."""
    model = copy.deepcopy(_resnet18())
    if not inplace:
        for module in model.modules():
            if isinstance(module, nn.ReLU):
                module.inplace = False
    return model


ARCHITECTURES = {
    # name: (model factory, target layer (None: the default), input side)
    "network": (lambda: network(dtype=torch.float32), None, 32),
    "multi-relu4": (lambda: network("every", dtype=torch.float32), "relu4", 32),
    "multi-relu1": (lambda: network("every", dtype=torch.float32), "relu1", 32),
    "plain-cnn": (lambda: plain_cnn(), None, 32),
    "resnet18": (_resnet, "layer4", 64),
}


@pytest.mark.parametrize("method", list(gradcams.METHODS))
@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_every_method_runs_on_every_architecture(method: str, architecture: str) -> None:
    factory, layer, side = ARCHITECTURES[architecture]
    model = factory()
    # Score-CAM runs one forward pass per channel and image: one image is enough here.
    count = 1 if method == "scorecam" else 3
    x = images(count, side, dtype=torch.float32)
    cam = gradcams.make_method(method, model, layer)
    result = cam(x)
    activation: list[torch.Tensor] = []
    handle = cam.target_layer.register_forward_hook(lambda m, i, o: activation.append(o.detach().clone()))
    with torch.no_grad():
        logits = model(x)
    handle.remove()
    assert result.maps.shape == (count, *activation[0].shape[-2:])
    assert result.logits.shape == (count, 2)
    torch.testing.assert_close(result.logits, logits)
    assert torch.equal(result.class_index, logits.argmax(1))
    assert torch.isfinite(result.maps).all()
    # A ReLU'd map may rightly be all zero for one image of a random model, not for the whole batch.
    assert result.maps.abs().sum() > 0, "all-zero maps"
    heat = result.heatmaps(side)
    assert heat.shape == (count, side, side) and heat.min() >= 0 and heat.max() <= 1
    assert no_hooks(model) and all_grads_none(model)


def _reference_gradcam(model: nn.Module, layer: str, x: torch.Tensor, class_index: int) -> torch.Tensor:
    """Grad-CAM the plain way (keep the output, backward to it): right only without in-place ops after it."""
    saved: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: saved.append(o))
    try:
        logits = model(x)
    finally:
        handle.remove()
    (gradient,) = torch.autograd.grad(logits[:, class_index].sum(), saved[0])
    return torch.einsum("bkhw,bk->bhw", saved[0].detach(), gradient.mean(dim=(2, 3))).relu()


# layer4 ends in an in-place ReLU; layer4.1.bn1 is followed by one; layer4.1.bn2 by `out += identity`.
@pytest.mark.parametrize("layer", ["layer4", "layer4.1.bn1", "layer4.1.bn2", "layer3.0.conv2"])
def test_resnet18_with_in_place_relus_gives_the_same_maps_as_without(layer: str) -> None:
    x = images(2, 64, seed=9, dtype=torch.float32)
    inplace, plain = _resnet(inplace=True), _resnet(inplace=False)
    assert any(isinstance(m, nn.ReLU) and m.inplace for m in inplace.modules())
    with_inplace = gradcams.GradCAM(inplace, layer)(x, 1).maps
    without = gradcams.GradCAM(plain, layer)(x, 1).maps
    torch.testing.assert_close(with_inplace, without, rtol=1e-4, atol=1e-6)
    if layer != "layer4.1.bn2":  # `out += identity` is in place in both variants: no plain-way reference there
        torch.testing.assert_close(with_inplace, _reference_gradcam(plain, layer, x, 1), rtol=1e-4, atol=1e-6)
    # The forward pass itself is untouched by the hooks' cloning.
    with torch.no_grad():
        torch.testing.assert_close(inplace(x), plain(x))


def test_the_activation_before_an_in_place_relu_keeps_its_negative_values() -> None:
    # HiResCAM of the batch-norm output before layer4.1's in-place ReLU: were the captured
    # activation the ReLU'd one, or its gradient the post-ReLU one, the maps would differ.
    x = images(2, 64, seed=10, dtype=torch.float64)
    inplace, plain = _resnet(True).double(), _resnet(False).double()
    torch.testing.assert_close(
        gradcams.HiResCAM(inplace, "layer4.1.bn1")(x, 0).maps, gradcams.HiResCAM(plain, "layer4.1.bn1")(x, 0).maps
    )


# --------------------------------------------------------------------------- layers


def test_default_target_layers_and_block_layers() -> None:
    last, every, plain = Network(), NetworkMultiLoss(), plain_cnn()
    assert gradcams.default_target_layer(last) is last.features[-1]
    assert isinstance(last.features[-1], nn.ReLU)
    assert gradcams.default_target_layer(every) is every.relu4
    assert gradcams.default_target_layer(plain) is plain[6]
    resnet = _resnet()
    assert gradcams.default_target_layer(resnet) is resnet.layer4[1].conv2
    with pytest.raises(ValueError, match="no Conv2d"):
        gradcams.default_target_layer(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)))
    assert gradcams.block_layers(every) == [every.relu1, every.relu2, every.relu3, every.relu4]
    assert gradcams.block_layers(last) == [last.features[i] for i in (0, 2, 4, 9)]
    with pytest.raises(TypeError):
        gradcams.block_layers(plain)


def _appender(outputs: list[torch.Tensor]) -> Callable[[nn.Module, object, torch.Tensor], None]:
    """A forward hook that appends each output to `outputs`."""
    return lambda module, inputs, output: outputs.append(output)


def test_block_layers_outputs_are_the_networks_block_outputs() -> None:
    for kind in ("last", "every"):
        model, x = network(kind), images(2, 32)
        outputs: list[torch.Tensor] = []
        handles = [layer.register_forward_hook(_appender(outputs)) for layer in gradcams.block_layers(model)]
        with torch.no_grad():
            model(x)
        for handle in handles:
            handle.remove()
        for got, expected in zip(outputs, model.block_outputs(x), strict=True):
            torch.testing.assert_close(got, expected)


def test_every_block_of_both_networks_has_a_map_of_its_resolution() -> None:
    for kind in ("last", "every"):
        model, x = network(kind, dtype=torch.float32), images(2, 32, dtype=torch.float32)
        maps = [gradcams.LayerCAM(model, layer)(x, 1).maps for layer in gradcams.block_layers(model)]
        assert [m.shape[-1] for m in maps] == [16, 8, 4, 2]
        fused = fusion.fuse(maps, 32)
        assert fused.shape == (2, 32, 32) and fused.min() >= 0 and fused.max() <= 1


def test_the_max_fusion_keeps_what_any_block_finds() -> None:
    coarse = torch.zeros((1, 2, 2))
    coarse[0, 0, 0] = 1.0
    fine = torch.zeros((1, 8, 8))
    fine[0, 6, 6] = 5.0  # only the fine block sees this spot; the max keeps it at full strength
    fused = fusion.fuse([coarse, fine], 8, "max")
    assert fused.shape == (1, 8, 8)
    assert fused[0, 6, 6] == pytest.approx(1.0)
    torch.testing.assert_close(fused, ops.normalize(torch.maximum(ops.heatmap(coarse, 8), ops.heatmap(fine, 8))))
    with pytest.raises(ValueError):
        fusion.fuse([], 8)


def test_bad_targets_and_classes_are_refused() -> None:
    model = plain_cnn()
    with pytest.raises(ValueError, match="no module named"):
        gradcams.GradCAM(model, "nope.3")
    with pytest.raises(ValueError, match="not a module of this model"):
        gradcams.GradCAM(model, nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="unknown CAM method"):
        gradcams.make_method("gradcam+++", model)
    cam = gradcams.GradCAM(model, "6")
    with pytest.raises(ValueError, match="outside"):
        cam(images(2, 32, dtype=torch.float32), 2)
    with pytest.raises(ValueError, match="one per image"):
        cam(images(2, 32, dtype=torch.float32), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="batch_size"):
        gradcams.ScoreCAM(model, "6", batch_size=0)
    assert no_hooks(model)


# --------------------------------------------------------------------------- clean-up and modes


def test_a_thousand_calls_leave_no_hooks_grads_or_growth() -> None:
    model = plain_cnn(side=16, channels=4)
    x = images(2, 16, dtype=torch.float32)
    cams_ = [gradcams.METHODS[name](model, model[6]) for name in GRADIENT_METHODS]
    for cam in cams_:  # warm-up: lazy allocations and caches settle
        cam(x)
    gc.collect()
    before = len(gc.get_objects())
    for i in range(1000):
        cams_[i % len(cams_)](x)
    gc.collect()
    after = len(gc.get_objects())
    assert after - before < 200, f"{after - before} more live objects after 1000 calls"
    assert no_hooks(model)
    assert all_grads_none(model)
    for cam in cams_:
        # Nothing batch-sized is kept on the explainer between calls.
        assert not any(isinstance(v, torch.Tensor) for v in vars(cam).values())


class Exploding(nn.Module):
    """Raises in its forward: stands for a model that fails after the target layer ran."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def test_hooks_are_removed_and_modes_restored_when_a_call_raises() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), Exploding()).train()
    for method in gradcams.METHODS:
        with pytest.raises(RuntimeError, match="boom"):
            gradcams.METHODS[method](model, "0")(images(1, 8, dtype=torch.float32))
        assert no_hooks(model) and all_grads_none(model)
        assert all(m.training for m in model.modules())
    plain = plain_cnn().train()
    with pytest.raises(ValueError):
        gradcams.GradCAM(plain, "6")(images(1, 32, dtype=torch.float32), 5)
    assert no_hooks(plain) and all_grads_none(plain) and plain.training


def test_the_call_runs_in_eval_mode_and_restores_each_modules_mode() -> None:
    model = network(dtype=torch.float32)
    x = images(3, 32, dtype=torch.float32)
    expected = gradcams.GradCAM(model, "features.9")(x, 1).maps
    model.train()
    model.features[2].eval()  # a deliberately mixed state must come back exactly
    modes = {name: m.training for name, m in model.named_modules()}
    running_mean = model.features[8].running_mean.clone()
    got = gradcams.GradCAM(model, "features.9")(x, 1).maps
    torch.testing.assert_close(got, expected)  # dropout and batch statistics were off
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert torch.equal(model.features[8].running_mean, running_mean)


def test_eval_mode_restores_modes_also_on_error() -> None:
    model = network(dtype=torch.float32).train()
    with pytest.raises(KeyError), model_modes.eval_mode(model):
        assert not any(m.training for m in model.modules())
        raise KeyError("inside")
    assert all(m.training for m in model.modules())


def test_frozen_parameters_and_no_grad_callers_still_get_maps() -> None:
    model = network(dtype=torch.float32)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    x = images(2, 32, dtype=torch.float32)
    with torch.no_grad():
        result = gradcams.HiResCAM(model, "features.9")(x, 1)
    assert result.maps.abs().sum() > 0
    assert not any(p.requires_grad for p in model.parameters())
    assert not result.maps.requires_grad and not result.logits.requires_grad


KNOWN_PASS = {
    # name: (model factory, input side); the default target layer (the last block or stage)
    "network": (lambda: network(), 32),
    "multi-loss": (lambda: network("every"), 32),
    "resnet18": (lambda: randomise_batch_norm(zoo.build("resnet18", 2), 3).double().eval(), 64),
    "resnet18-sigmoid": (lambda: randomise_batch_norm(zoo.build("resnet18", 1), 4).double().eval(), 64),
    "densenet121": (lambda: randomise_batch_norm(zoo.build("densenet121", 2), 5).double().eval(), 64),
}


@pytest.mark.parametrize("method", GRADIENT_METHODS)
@pytest.mark.parametrize("architecture", list(KNOWN_PASS))
def test_a_known_forward_pass_gives_the_maps_autograd_gives(method: str, architecture: str) -> None:
    """At a GAP-linear head's features the gradient is w_c / (h w): read off a forward pass already made, the
    maps equal autograd's (DenseNet ReLUs its features before pooling, so it takes the autograd path)."""
    factory, side = KNOWN_PASS[architecture]
    model = factory()
    x = images(3, side, seed=11)
    known = net_blocks.forward_pass(model, x)
    for class_index in (None, 1, torch.tensor([0, 1, 0])):
        plain = gradcams.make_method(method, model)(x, class_index)
        shortcut = gradcams.make_method(method, model)(x, class_index, known)
        torch.testing.assert_close(shortcut.maps, plain.maps)
        torch.testing.assert_close(shortcut.logits, plain.logits)
        assert torch.equal(shortcut.class_index, plain.class_index)
    at_head = gradcams.head_gradient(model, gradcams.default_target_layer(model), known)
    assert (at_head is None) == (architecture == "densenet121")
