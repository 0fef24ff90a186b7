"""torchvision networks (wtl.nets.zoo): their stages, their heads' exact CAM, Grad-CAM on them, their weights."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, randomise_batch_norm
from torch import nn

from wtl.checkpoints.io import load_checkpoint
from wtl.checkpoints.loading import load_model
from wtl.errors import CheckpointError, UsageError
from wtl.maps import methods
from wtl.maps.cam import explain_last_block
from wtl.maps.gradcam import GradCAM, default_target_layer
from wtl.maps.ops import heatmap
from wtl.metrics.sanity import cascading_randomisation, randomisation_stages
from wtl.nets import blocks, zoo
from wtl.nets.registry import ZOO
from wtl.nets.summary import summary, total

GAP_LINEAR = ("resnet18", "resnet34", "resnet50", "densenet121", "mobilenet_v2", "efficientnet_b0")
NOT_GAP_LINEAR = ("vgg11_bn", "vgg16_bn", "mobilenet_v3_small", "mobilenet_v3_large", "convnext_tiny")


def random_network(arch: str, classes: int = 2, seed: int = 0) -> zoo.TorchvisionNet:
    """A torchvision network with random weights whose logits are far from zero (eval mode, float64).

    torchvision initialises some heads (MobileNet, EfficientNet) so that the logits are ~1e-20:
    an identity checked on those could not fail. Batch-norm statistics and the last layer are
    randomised so that every term is of order one.
    """
    torch.manual_seed(seed)
    network = randomise_batch_norm(zoo.build(arch, classes), seed).double().eval()
    with torch.no_grad():
        network.linear.weight.normal_(0, 1)
        network.linear.bias.normal_(0, 1)
    return network


def images(count: int = 3, size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_every_registry_name_has_a_spec_and_the_registry_imports_no_torch() -> None:
    assert set(zoo.SPECS) == set(ZOO)
    assert {"resnet18", "resnet34", "resnet50", "densenet121", "vgg11_bn", "vgg16_bn"} <= set(ZOO)
    assert {"mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny"} <= set(ZOO)
    assert set(GAP_LINEAR) | set(NOT_GAP_LINEAR) == set(ZOO)
    code = "import sys, wtl.nets.registry; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


@pytest.mark.parametrize("arch", ZOO)
def test_four_stages_at_strides_4_8_16_32_and_every_weight_in_one_stage(arch: str) -> None:
    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        network = zoo.build(arch, 2)
        found = blocks.blocks(network)
        _, outputs = blocks.capture(network, [b.output for b in found], torch.rand(1, 3, 64, 64))
    assert [tuple(o.shape[-2:]) for o in outputs] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert [b.module_name for b in found] == list(zoo.SPECS[arch].stages)
    assert [b.head for b in found] == [False, False, False, arch in GAP_LINEAR]
    # The sanity check's stages: the head, then every stage; together they hold every parameter once.
    stages = randomisation_stages(network)
    assert [name for name, _ in stages] == ["head", *reversed(zoo.SPECS[arch].stages)]
    held = [id(p) for _, modules in stages for m in modules for p in m.parameters()]
    assert sorted(held) == sorted(id(p) for p in network.parameters())


@pytest.mark.parametrize(
    ("arch", "classes"), [(arch, 2) for arch in GAP_LINEAR] + [("resnet18", 1), ("densenet121", 1)]
)
def test_cam_identity_mean_plus_bias_is_the_logit(arch: str, classes: int) -> None:
    """For a GAP + one linear head, cam_c = sum_k w[c, k] A_k has spatial mean logit_c - b_c, for every class."""
    network = random_network(arch, classes)
    x = images()
    logits = network(x)
    assert logits.shape == (3, 2) and logits.abs().min() > 1e-3
    for c in (0, 1):
        explained = explain_last_block(network, x, c)
        assert explained.cam.dtype == torch.float64
        torch.testing.assert_close(explained.cam.mean(dim=(1, 2)) + explained.bias, logits[:, c], rtol=0, atol=1e-9)
    if classes == 1:
        # One sigmoid logit z is read as (-z/2, z/2): softmax gives sigmoid(z); the other class's map is the negation.
        z = network.net(network.normalised(x))
        torch.testing.assert_close(logits.softmax(1)[:, 1], torch.sigmoid(z[:, 0]))
        positive, negative = (explain_last_block(network, x, c).cam for c in (1, 0))
        torch.testing.assert_close(negative, -positive)


@pytest.mark.parametrize("arch", ["vgg11_bn", "mobilenet_v3_small", "convnext_tiny"])
def test_cam_refuses_heads_that_are_not_gap_linear_and_names_the_gradcam_methods(arch: str) -> None:
    network = zoo.build(arch, 2).eval()
    with pytest.raises(UsageError, match="--method gradcam") as info:
        methods.last_block(network, "cam", torch.rand(1, 3, 64, 64))
    assert "\n" not in str(info.value) and zoo.SPECS[arch].head_text in str(info.value)
    # ...while the Grad-CAM family works on it, at its last stage by default.
    explained = methods.last_block(network, "gradcam", torch.rand(2, 3, 64, 64))
    assert explained.cam.shape == (2, 2, 2) and explained.heatmap.shape == (2, 64, 64)
    assert default_target_layer(network) is network.net.get_submodule(zoo.SPECS[arch].stages[-1])
    assert "cam" not in methods.sanity_method_names(network)


def independent_gradcam(network: zoo.TorchvisionNet, x: torch.Tensor, cls: int) -> torch.Tensor:
    """Grad-CAM written out without hooks: the network run by hand up to the layer, A a leaf, dS/dA by autograd."""
    net, h = network.net, network.normalised(x)
    if network.arch.startswith("resnet"):
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            h = net.get_submodule(name)(h)
        a = h.detach().requires_grad_(True)
        z = net.fc(torch.flatten(net.avgpool(a), 1))
    else:  # DenseNet at its last dense block
        for name, child in net.features.named_children():
            h = child(h)
            if name == "denseblock4":
                break
        a = h.detach().requires_grad_(True)
        z = net.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(net.features.norm5(a)), 1), 1))
    score = zoo.two_logits(z)[:, cls] if z.shape[1] == 1 else z[:, cls]
    (gradient,) = torch.autograd.grad(score.sum(), a)
    return torch.relu((gradient.mean(dim=(2, 3))[:, :, None, None] * a).sum(1)).detach()


@pytest.mark.parametrize(("arch", "classes"), [("resnet18", 2), ("densenet121", 2), ("resnet18", 1)])
def test_gradcam_equals_an_independent_implementation_on_the_same_layer(arch: str, classes: int) -> None:
    network = random_network(arch, classes)
    x = images()
    layer = zoo.SPECS[arch].stages[-1]
    nonzero = torch.zeros(len(x), dtype=torch.bool)
    for cls in (0, 1):
        ours = GradCAM(network, layer)(x, cls)
        expected = independent_gradcam(network, x, cls)
        torch.testing.assert_close(ours.maps, expected, rtol=1e-9, atol=1e-12)
        # ReLU(sum_k w_k A_k) is zero wherever the evidence is negative: one class at least has some somewhere.
        nonzero |= expected.flatten(1).amax(1) > 0
    assert bool(nonzero.all())
    if arch.startswith("resnet"):
        # At the layer the GAP head pools, Grad-CAM is ReLU(CAM) / (h w) (the identity of gradcam.py).
        cam = explain_last_block(network, x, 1).cam
        torch.testing.assert_close(ours.maps, torch.relu(cam) / cam[0].numel(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("arch", "classes"), [("resnet18", 2), ("densenet121", 2), ("resnet18", 1)])
def test_gradcam_equals_pytorch_grad_cam(arch: str, classes: int) -> None:
    """pytorch-grad-cam is no dependency: run with it on PYTHONPATH (see docs/torchvision.md)."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    network = random_network(arch, classes).float()
    x = images(4, 96).float()
    layer = zoo.SPECS[arch].stages[-1]
    correlations = []
    # Grad-CAM is ReLU'd: a class without positive evidence in a picture has a blank map there, so both
    # classes are compared (a single logit has one: their output 0 is our positive class 1).
    for cls in (1,) if classes == 1 else (0, 1):
        ours = heatmap(GradCAM(network, layer)(x, cls).maps, (96, 96)).numpy()
        # Theirs on the bare torchvision network, fed the normalised pictures as torchvision expects.
        target = ClassifierOutputTarget(0 if classes == 1 else cls)
        cam = pgc.GradCAM(model=network.net, target_layers=[network.net.get_submodule(layer)])
        theirs = cam(input_tensor=network.normalised(x), targets=[target] * len(x))
        correlations += [float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) for a, b in zip(ours, theirs) if a.std() > 0]
    assert len(correlations) >= 3
    worst = min(correlations)
    print(f"{arch} ({classes} outputs) at {layer}: correlation with pytorch-grad-cam {worst:.7f}, 1-r {1 - worst:.0e}")
    assert min(correlations) >= 0.999


def test_layer_names_are_torchvisions_own_and_a_wrong_one_lists_the_stages() -> None:
    network = zoo.build("resnet18", 2).eval()
    assert blocks.resolve_layer(network, "layer4.0.conv2") is network.net.layer4[0].conv2
    assert blocks.resolve_layer(network, "net.layer3") is network.net.layer3
    explained = methods.last_block(network, "gradcam", torch.rand(1, 3, 64, 64), layer="layer3")
    assert explained.cam.shape == (1, 4, 4)
    with pytest.raises(UsageError, match="its stages are layer1, layer2, layer3, layer4"):
        methods.last_block(network, "gradcam", torch.rand(1, 3, 64, 64), layer="layer9")
    with pytest.raises(UsageError, match="--layer is for the Grad-CAM family"):
        methods.last_block(network, "cam", torch.rand(1, 3, 64, 64), layer="layer3")


def test_every_block_view_of_a_torchvision_network_is_gradcam_per_stage() -> None:
    network = random_network("resnet18").float()
    explained = methods.every_block(network, "gradcam", images().float())
    assert [tuple(c.shape[-2:]) for c in explained.cams] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert explained.labels == ["layer1", "layer2", "layer3", "layer4"]
    with pytest.raises(UsageError, match="for this resnet18 pass --method gradcam"):
        methods.every_block(network, "cam", images().float())


def test_sanity_check_randomises_stage_by_stage_and_leaves_the_model_alone() -> None:
    network = random_network("resnet18").float()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    x = images(4).float()
    functions = methods.heatmap_functions(["cam", "gradcam"])
    result = cascading_randomisation(network, x, torch.ones(4, dtype=torch.long), functions)
    assert result.stages == ["head", "layer4", "layer3", "layer2", "layer1"]
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())
    # Once the head is random, CAM explains another model: its maps change.
    assert result.mean("cam", "head") < 0.99


# --------------------------------------------------------------------------- weights


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    network = zoo.build("resnet18", 2)
    path = tmp_path / "resnet18_plain.pt"
    torch.save(network.net.state_dict(), path)
    return path


def test_plain_state_dict_loads_with_arch_and_classes(weights: Path) -> None:
    model = load_model(weights, arch="resnet18", classes=("cat", "dog"))
    assert model.kind == "torchvision" and model.arch == "resnet18" and model.class_names == ["cat", "dog"]
    assert (model.image_size, model.preprocess) == (224, "center-crop")  # torchvision's own evaluation input
    torch.testing.assert_close(model.network.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    plain = torch.load(weights, weights_only=True)
    assert all(torch.equal(plain[k], v) for k, v in model.network.net.state_dict().items())
    # The same weights in a checkpoint dict with class names, and DataParallel's prefix, load alike.
    prefixed = weights.with_name("prefixed.pt")
    torch.save({"net_state_dict": {f"module.{k}": v for k, v in plain.items()}, "class_names": ["a", "b"]}, prefixed)
    assert load_model(prefixed, arch="resnet18").class_names == ["a", "b"]
    raw = load_model(weights, arch="resnet18", normalise="none", image_size=96, preprocess="squash")
    assert float(raw.network.std.flatten()[0]) == 1.0 and (raw.image_size, raw.preprocess) == (96, "squash")


def test_project_checkpoint_of_a_torchvision_network_needs_no_flags(tmp_path: Path) -> None:
    network = zoo.build("densenet121", 1, normalise="none")
    path = tmp_path / "model.pt"
    record = {"arch": "densenet121", "class_names": ["Uninfected", "Parasitized"], "image_size": 64}
    torch.save({"net_state_dict": network.state_dict(), **record, "preprocess": "squash"}, path)
    model = load_model(path)
    assert (model.arch, model.class_names, model.image_size, model.preprocess) == (
        "densenet121",
        ["Uninfected", "Parasitized"],
        64,
        "squash",
    )
    assert model.single_logit and float(model.network.std.flatten()[0]) == 1.0  # "none" came from the weights
    bare = tmp_path / "bare.pt"  # the network's own state_dict, without the record around it
    torch.save(network.state_dict(), bare)
    with pytest.raises(CheckpointError, match="they fit torchvision's densenet121: pass --arch densenet121"):
        load_model(bare)
    assert load_model(bare, arch="densenet121").single_logit


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "they fit torchvision's resnet18: pass --arch resnet18"),
        ({"arch": "resnet34"}, "do not fit resnet34 .*missing.*they fit resnet18: pass --arch resnet18"),
        ({"arch": "alexnet"}, "unknown architecture"),
        ({"arch": "resnet18", "classes": ("a", "b", "c")}, "3 names for weights with 2 classes"),
    ],
)
def test_weights_that_do_not_fit_answer_in_one_line(weights: Path, kwargs: dict, message: str) -> None:
    with pytest.raises((CheckpointError, UsageError), match=message) as info:
        load_model(weights, **kwargs)
    assert "\n" not in str(info.value)


def test_arch_on_a_seed_network_names_the_seed_network() -> None:
    with pytest.raises(CheckpointError, match="Network \\(--network last\\), not a resnet18: leave --arch out"):
        load_model("malaria", arch="resnet18")


class Trap(nn.Module):
    """A module whose unpickling would write a file: proof that a refused pickle never runs."""

    marker: Path | None = None

    def __setstate__(self, state: dict) -> None:
        if Trap.marker is not None:
            Trap.marker.write_text("ran")
        super().__setstate__(state)


def test_whole_pickled_model_is_refused_and_never_runs(tmp_path: Path) -> None:
    whole = tmp_path / "whole.pt"
    torch.save(Trap(), whole)
    Trap.marker = tmp_path / "ran.txt"
    try:
        # Plain pickle would run __setstate__ (the trap works)...
        torch.load(whole, weights_only=False)
        assert Trap.marker.exists()
        Trap.marker.unlink()
        # ...weights_only refuses it and says what to save instead.
        with pytest.raises(CheckpointError, match=r"torch.save\(model.state_dict\(\)") as info:
            load_checkpoint(whole)
        assert "\n" not in str(info.value) and not Trap.marker.exists()
    finally:
        Trap.marker = None


def test_pretrained_weights_fill_the_backbone_and_the_head_starts_new() -> None:
    torch.manual_seed(1)
    imagenet_like = zoo.torchvision_model("resnet18", 1000).state_dict()
    network, note = zoo.pretrained("resnet18", 2, imagenet_like, "weights.pt")
    own = network.net.state_dict()
    assert all(torch.equal(own[k], v) for k, v in imagenet_like.items() if not k.startswith("fc."))
    assert own["fc.weight"].shape == (2, 512) and "new: fc" in note and "120 of 122 tensors" in note
    with pytest.raises(CheckpointError, match="none of its weights fit densenet121"):
        zoo.pretrained("densenet121", 2, imagenet_like, "weights.pt")


def test_the_command_lines_answer_bad_weights_in_one_line(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from conftest import error_lines

    from wtl.cli import main as cli_main

    cell = next((REPO / "data" / "demo" / "Parasitized").iterdir())
    mlp_head = tmp_path / "mobilenet_v3_small.pt"
    torch.save(zoo.build("mobilenet_v3_small", 2).net.state_dict(), mlp_head)
    whole = tmp_path / "whole.pt"
    torch.save(zoo.build("resnet18", 2).net, whole)
    cases = [
        (["--model", weights], "they fit torchvision's resnet18: pass --arch resnet18"),
        (["--model", weights, "--arch", "resnet50"], "do not fit resnet50"),
        (["--model", mlp_head, "--arch", "mobilenet_v3_small"], "Hardswish-Linear (an MLP): use a Grad-CAM method"),
        (["--model", whole], "torch.save(model.state_dict(), 'weights.pt')"),
        (["--model", weights, "--arch", "resnet18", "--classes", "a,b,c"], "3 names for weights with 2 classes"),
    ]
    for flags, message in cases:
        code = cli_main.main(["single", "--image", str(cell), "--out", str(tmp_path), *map(str, flags)])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, err
        (line,) = error_lines(err)
        assert message in line, line
    with pytest.raises(SystemExit) as exit_info:  # argparse: an unknown --arch is not among the choices
        cli_main.main(["single", "--image", str(cell), "--model", str(weights), "--arch", "alexnet"])
    assert exit_info.value.code == 2 and "invalid choice: 'alexnet'" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["resnet18", "vgg11_bn", "mobilenet_v3_small"])
def test_the_parameter_summary_of_a_torchvision_network_counts_every_parameter(arch: str) -> None:
    network = zoo.build(arch, 2)
    rows = summary(network, 64)
    assert total(rows) == sum(p.numel() for p in network.parameters())
    assert [row.name for row in rows][:4] == ["block 1", "block 2", "block 3", "block 4"]
    assert rows[4].name == "classifier" and rows[4].output_shape == (2,)
