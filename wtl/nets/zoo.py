"""torchvision classification networks as Where-to-look models: built, normalised inside, their stages and heads.

A `TorchvisionNet` wraps one torchvision network (`net`) with the input normalisation it expects
as buffers (`mean`, `std`), so that every caller feeds [0, 1] pictures, as to the seed networks,
and every method, metric and the sanity check see the same network. A single output logit z (a
sigmoid head) comes out as the two logits (-z/2, z/2): their softmax is (1 - sigmoid(z), sigmoid(z)),
cross-entropy on them is binary cross-entropy on z, and the map of the negative class is the
negation of the positive class's.

`SPECS` is the one table of what each architecture is made of: where its four stages end (at
strides 4, 8, 16 and 32, as ResNet's layer1..layer4), which module its head pools, and whether that
head is global average pooling followed by one linear layer (then its CAM is exact). torchvision
itself is imported only when a network is built: the picture commands start without it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from wtl.errors import CheckpointError, DownloadError, UsageError
from wtl.nets.registry import NORMALISATIONS, ZOO


@dataclass(frozen=True)
class Spec:
    """What one torchvision architecture is made of, as dotted module names inside the torchvision model."""

    trunk: str  # the container whose children run in order up to the head: "" (the model itself) or "features"
    stages: tuple[str, ...]  # the modules ending the four stages (strides 4, 8, 16, 32)
    pooled: str  # the module whose output the head pools
    head: str  # the classifier (re-initialised first by the sanity check)
    linear: str  # the classifier's last Linear layer: its rows are the classes
    gap_linear: bool  # whether pooled -> global average pool -> (dropout) -> linear, nothing else
    head_text: str  # what the head is, in words
    relu_before_pool: bool = False  # DenseNet applies a ReLU to `pooled` before the pool


def _resnet() -> Spec:
    return Spec("", ("layer1", "layer2", "layer3", "layer4"), "layer4", "fc", "fc", True, "avgpool -> fc")


def _features(stages: tuple[int, ...], head: str, linear: str, gap_linear: bool, text: str) -> Spec:
    return Spec("features", tuple(f"features.{i}" for i in stages), "features", head, linear, gap_linear, text)


SPECS: dict[str, Spec] = {
    "resnet18": _resnet(),
    "resnet34": _resnet(),
    "resnet50": _resnet(),
    "densenet121": Spec(
        "features",
        tuple(f"features.denseblock{i}" for i in range(1, 5)),
        "features",
        "classifier",
        "classifier",
        True,
        "ReLU -> avgpool -> classifier",
        relu_before_pool=True,
    ),
    "vgg11_bn": _features((7, 14, 21, 28), "classifier", "classifier.6", False, "7 x 7 pool -> a 3-layer MLP"),
    "vgg16_bn": _features((13, 23, 33, 43), "classifier", "classifier.6", False, "7 x 7 pool -> a 3-layer MLP"),
    "mobilenet_v2": _features((3, 6, 13, 18), "classifier", "classifier.1", True, "avgpool -> dropout -> linear"),
    "mobilenet_v3_small": _features(
        (1, 3, 8, 12), "classifier", "classifier.3", False, "avgpool -> Linear-Hardswish-Linear (an MLP)"
    ),
    "mobilenet_v3_large": _features(
        (3, 6, 12, 16), "classifier", "classifier.3", False, "avgpool -> Linear-Hardswish-Linear (an MLP)"
    ),
    "efficientnet_b0": _features((2, 3, 5, 8), "classifier", "classifier.1", True, "avgpool -> dropout -> linear"),
    "convnext_tiny": _features((1, 3, 5, 7), "classifier", "classifier.2", False, "avgpool -> LayerNorm -> linear"),
}
assert set(SPECS) == set(ZOO), "every name of nets.registry.ZOO needs its Spec here"


def normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel of a normalisation of registry.NORMALISATIONS."""
    if name not in NORMALISATIONS:
        raise UsageError(f"unknown normalisation {name!r} (expected one of {', '.join(NORMALISATIONS)})")
    return NORMALISATIONS[name]


class TorchvisionNet(nn.Module):
    """A torchvision network that takes [0, 1] pictures: it normalises them itself (buffers `mean`, `std`)."""

    mean: Tensor
    std: Tensor

    def __init__(self, arch: str, net: nn.Module, mean: Any = None, std: Any = None) -> None:
        super().__init__()
        default_mean, default_std = NORMALISATIONS["imagenet"]
        self.arch = arch
        self.net = net
        # Persistent buffers: the checkpoint says how its network wants its input.
        self.register_buffer("mean", torch.as_tensor(default_mean if mean is None else mean).float().view(1, 3, 1, 1))
        self.register_buffer("std", torch.as_tensor(default_std if std is None else std).float().view(1, 3, 1, 1))

    @property
    def spec(self) -> Spec:
        """The architecture's stages and head."""
        return SPECS[self.arch]

    @property
    def sigmoid(self) -> bool:
        """Whether the head has one output logit (read as the two logits (-z/2, z/2))."""
        return self.linear.out_features == 1

    @property
    def linear(self) -> nn.Linear:
        """The head's last Linear layer."""
        layer = self.net.get_submodule(self.spec.linear)
        assert isinstance(layer, nn.Linear), f"{self.arch}: {self.spec.linear} is not a Linear layer"
        return layer

    def normalised(self, images: Tensor) -> Tensor:
        """The pictures as the torchvision network expects them: (x - mean) / std."""
        return (images - self.mean) / self.std

    def forward(self, images: Tensor) -> Tensor:
        """Logits (B, C) of [0, 1] pictures; (B, 2) = (-z/2, z/2) for a single-logit head."""
        logits = self.net(self.normalised(images))
        return two_logits(logits) if logits.shape[1] == 1 else logits

    def normalisation_record(self) -> dict[str, list[float]]:
        """The normalisation as a checkpoint records it."""
        return {"mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}


def two_logits(logit: Tensor) -> Tensor:
    """A sigmoid head's logit z (B, 1) as two logits (B, 2) = (-z/2, z/2), whose softmax is (1 - s(z), s(z))."""
    return torch.cat([-logit / 2, logit / 2], dim=1)


def torchvision_model(arch: str, num_classes: int, weights: str | None = None) -> nn.Module:
    """torchvision's `arch` with `num_classes` outputs, random weights (or its published `weights` enum name)."""
    if arch not in SPECS:
        raise UsageError(f"unknown architecture {arch!r} (expected one of {', '.join(ZOO)})")
    from torchvision import models

    if weights is None:
        return models.get_model(arch, weights=None, num_classes=num_classes)
    return models.get_model(arch, weights=weights)


def build(arch: str, num_classes: int, normalise: str = "imagenet") -> TorchvisionNet:
    """A TorchvisionNet of `arch` with random weights, `num_classes` outputs (1: a sigmoid logit)."""
    if num_classes < 1:
        raise ValueError(f"a network needs at least one output, not {num_classes}")
    mean, std = normalisation(normalise)
    return TorchvisionNet(arch, torchvision_model(arch, num_classes), mean, std)


def replace_head(net: nn.Module, arch: str, num_classes: int) -> nn.Module:
    """Give a torchvision network a new last Linear layer with `num_classes` outputs (transfer learning)."""
    name = SPECS[arch].linear
    old = net.get_submodule(name)
    assert isinstance(old, nn.Linear)
    parent_name, _, child = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, child, nn.Linear(old.in_features, num_classes))
    return net


# --------------------------------------------------------------------------- weights and their keys


def _shapes(arch: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    """The state-dict keys and shapes of torchvision's `arch` (built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        model = torchvision_model(arch, num_classes)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def classes_in(arch: str, state: Mapping[str, Tensor]) -> int | None:
    """The number of classes the weights of `arch` have (its last Linear layer's rows); None if it is absent."""
    weight = state.get(f"{SPECS[arch].linear}.weight")
    return int(weight.shape[0]) if isinstance(weight, Tensor) and weight.ndim == 2 else None


def fit_problem(arch: str, state: Mapping[str, Tensor]) -> str | None:
    """Why a plain torchvision state dict does not fit `arch` (missing, unexpected, reshaped keys); None if it fits."""
    classes = classes_in(arch, state)
    if classes is None:
        return f"no {SPECS[arch].linear}.weight"
    wanted = _shapes(arch, classes)
    missing = [k for k in wanted if k not in state]
    unexpected = [k for k in state if k not in wanted]
    reshaped = [k for k in wanted if k in state and tuple(state[k].shape) != wanted[k]]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped)):
        if keys:
            more = f" and {len(keys) - 2} more" if len(keys) > 2 else ""
            parts.append(f"{label}: {', '.join(keys[:2])}{more}")
    return "; ".join(parts) or None


def fitting_archs(state: Mapping[str, Tensor]) -> list[str]:
    """The architectures of ZOO whose keys and shapes a plain torchvision state dict has exactly."""
    return [arch for arch in ZOO if fit_problem(arch, state) is None]


def plain_state(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    """(torchvision state dict, the normalisation buffers or None) of a TorchvisionNet's or a plain state dict."""
    if "mean" in state and "std" in state and any(k.startswith("net.") for k in state):
        inner = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
        return inner, {"mean": state["mean"], "std": state["std"]}
    # DataParallel's and torch.compile's prefixes, which a user's own training may have left on the keys.
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return dict(state), None


def is_zoo_state(state: Mapping[str, Any]) -> bool:
    """Whether a state dict is a TorchvisionNet's (this project's format: `net.` keys and the normalisation)."""
    return "mean" in state and "std" in state and any(str(k).startswith("net.") for k in state)


def from_state(arch: str, state: Mapping[str, Tensor], normalise: str = "imagenet") -> TorchvisionNet:
    """A TorchvisionNet of `arch` holding a state dict (this project's or a plain torchvision one), strictly.

    The number of classes is read from the weights; the normalisation from them where they carry it
    (this project's checkpoints), else `normalise`.
    """
    inner, buffers = plain_state(state)
    problem = fit_problem(arch, inner)
    if problem is not None:
        fits = [a for a in fitting_archs(inner) if a != arch]
        hint = f"; they fit {', '.join(fits)}: pass --arch {fits[0]}" if fits else ""
        raise CheckpointError(f"the weights do not fit {arch} ({problem}){hint}")
    classes = classes_in(arch, inner)
    assert classes is not None
    network = build(arch, classes, normalise)
    network.net.load_state_dict(inner, strict=True)
    if buffers is not None:
        network.mean.copy_(buffers["mean"].reshape(1, 3, 1, 1))
        network.std.copy_(buffers["std"].reshape(1, 3, 1, 1))
    return network


# --------------------------------------------------------------------------- pretrained weights


def imagenet_weights(arch: str) -> Any:
    """torchvision's default published ImageNet weights of `arch` (a WeightsEnum member)."""
    from torchvision import models

    return models.get_model_weights(arch).DEFAULT


def imagenet_state(arch: str) -> tuple[dict[str, Tensor], str]:
    """torchvision's published ImageNet weights of `arch` and where they came from.

    Downloaded once into torch's hub cache (then read from it, also offline); without a connection a
    DownloadError says where to put the file by hand.
    """
    weights = imagenet_weights(arch)
    try:
        state = weights.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError) as error:  # URLError is an OSError
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
        raise DownloadError(
            f"cannot download torchvision's ImageNet weights of {arch} ({reason}): on a machine with internet "
            f"download {weights.url}, then put it at {cache} or pass --pretrained PATH"
        ) from None
    return dict(state), f"torchvision's ImageNet weights ({Path(weights.url).name})"


def pretrained(
    arch: str, num_classes: int, state: Mapping[str, Tensor], where: str, normalise: str = "imagenet"
) -> tuple[TorchvisionNet, str]:
    """A TorchvisionNet of `arch` started from pretrained weights `state`, a new head of `num_classes`; and a note.

    `state` is a plain torchvision state dict (ImageNet's, or any) or a TorchvisionNet's; every tensor
    whose name and shape fit is loaded, so the head's last layer starts new where its number of
    classes differs. `where` names the weights in the note and in errors.
    """
    inner, _ = plain_state(state)
    network = build(arch, num_classes, normalise)
    own = network.net.state_dict()
    fitting = {k: v for k, v in inner.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    backbone = [k for k in own if not k.startswith(SPECS[arch].linear + ".")]
    if not any(k in fitting for k in backbone):
        raise CheckpointError(f"{where}: none of its weights fit {arch}'s backbone; is it a {arch}?")
    network.net.load_state_dict(fitting, strict=False)
    left = [k for k in own if k not in fitting]
    layers = sorted({re.sub(r"\.(weight|bias)$", "", k) for k in left})
    new = f"; new: {', '.join(layers)}" if left else ""
    return network, f"pretrained: {len(fitting)} of {len(own)} tensors from {where}{new}"


# --------------------------------------------------------------------------- stages, head, freezing


def trunk_children(network: TorchvisionNet) -> list[tuple[str, nn.Module]]:
    """The trunk's children in order, by their dotted names in the torchvision model (head and pools left out)."""
    spec = network.spec
    container = network.net.get_submodule(spec.trunk) if spec.trunk else network.net
    prefix = f"{spec.trunk}." if spec.trunk else ""
    skip = {spec.head, "avgpool"}
    return [(prefix + name, child) for name, child in container.named_children() if prefix + name not in skip]


def stage_groups(network: TorchvisionNet) -> list[list[nn.Module]]:
    """Per stage the trunk's modules from after the previous stage's end through its own end.

    The stem goes with the first stage, whatever follows the last stage's end (DenseNet's norm5)
    with the last: every weight of the trunk is in exactly one group.
    """
    ends = list(network.spec.stages)
    groups: list[list[nn.Module]] = [[] for _ in ends]
    stage = 0
    for name, module in trunk_children(network):
        groups[stage].append(module)
        if stage < len(ends) - 1 and name == ends[stage]:
            stage += 1
    return groups


def backbone_parameters(network: TorchvisionNet) -> list[nn.Parameter]:
    """Every parameter but the head's: what --freeze-backbone keeps fixed."""
    head = {id(p) for p in network.net.get_submodule(network.spec.head).parameters()}
    return [p for p in network.parameters() if id(p) not in head]


def backbone_modules(network: TorchvisionNet) -> list[nn.Module]:
    """The trunk's modules (their batch norms stay in eval mode while the backbone is frozen)."""
    return [module for group in stage_groups(network) for module in group]
