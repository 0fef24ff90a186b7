"""Loading a checkpoint as a network ready for inference, with what the checkpoint says about it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wtl import names
from wtl.checkpoints.finding import bundled_checkpoint
from wtl.checkpoints.io import load_checkpoint
from wtl.checkpoints.scales import ModelScale, read_scale
from wtl.errors import CheckpointError, UsageError
from wtl.nets import zoo
from wtl.nets.registry import ZOO
from wtl.nets.seed import architecture_of, build_network, network_kind, num_classes_of

# The class names of the original project's published checkpoints, which carry none.
DEFAULT_CLASS_NAMES = {
    "malaria": ["Uninfected", "Parasitized"],
    "gender": ["Female", "Male"],
}


# What a plain torchvision state dict is taken to be, where nothing says otherwise: torchvision's own evaluation
# input (its centred square at 224 px, ImageNet-normalised).
PLAIN_IMAGE_SIZE, PLAIN_PREPROCESS, PLAIN_NORMALISATION = 224, "center-crop", "imagenet"


@dataclass(frozen=True)
class PlainWeights:
    """What weights that do not say so are (a plain state dict): the flags --arch, --classes, --image-size...

    A checkpoint that records a value keeps its own; these fill in what it does not record.
    """

    arch: str | None = None  # a torchvision name of nets.registry.ZOO
    classes: tuple[str, ...] | None = None  # the class names, in the order of the outputs
    image_size: int | None = None
    preprocess: str | None = None  # squash or center-crop
    normalise: str | None = None  # imagenet or none (torchvision networks)
    # compare: `arch` is for the plain state dicts among several models; seed networks ignore it.
    arch_if_needed: bool = False


@dataclass
class LoadedModel:
    """A network ready for inference and what its checkpoint says about it."""

    network: nn.Module
    kind: str  # "last" (Network), "every" (NetworkMultiLoss) or "torchvision" (nets.zoo.TorchvisionNet)
    class_names: list[str]
    image_size: int
    path: Path
    checkpoint: dict[str, Any]
    # How a picture becomes the network's square input; models from before this key were squashed.
    preprocess: str = "squash"
    arch: str | None = None  # the torchvision architecture (kind "torchvision")
    # The statistics that tell pictures unlike the training data (wtl.metrics.ood), from the checkpoint's
    # 'ood' entry or its <name>.ood.npz sidecar; None where it has neither.
    ood: dict[str, Any] | None = None
    # The shared colour scale measured for these weights (names.scale_file beside the checkpoint), if any.
    scale: ModelScale | None = None

    @property
    def single_logit(self) -> bool:
        """Whether the head is one sigmoid logit z (shown as the two logits (-z/2, z/2))."""
        return bool(getattr(self.network, "sigmoid", False))

    @property
    def name(self) -> str:
        """The model's name: its checkpoint file's, without .pt and .best."""
        return names.checkpoint_name(self.path)

    @property
    def shuffled_labels(self) -> bool:
        """True for a model trained on permuted labels (model_main.py --shuffle-labels): a control, not a model."""
        return bool(self.checkpoint.get("shuffled_labels"))

    @property
    def marker(self) -> str:
        """What every command adds to the model's name: a warning for a model trained on random labels."""
        if not self.shuffled_labels:
            return ""
        return " [trained on shuffled labels: a data-randomisation control, its predictions mean nothing]"


def resolve_source(source: str | Path) -> Path:
    """A checkpoint path, or the bundled checkpoint a short name stands for ('malaria-every', 'gender'...)."""
    path = Path(source)
    if path.is_file() or path.suffix == ".pt" or len(path.parts) > 1:
        return path
    bundled = bundled_checkpoint(str(source))
    if bundled is None:
        known = ", ".join(names.BUNDLED_ALIASES)
        raise CheckpointError(f"{source}: no such checkpoint file, nor a bundled model ({known})")
    return bundled


def guess_class_names(checkpoint: dict[str, Any], path: Path, num_classes: int) -> list[str]:
    """Class names from the checkpoint, else from a published file's name, else 'class 0'..."""
    names = checkpoint.get("class_names")
    if isinstance(names, (list, tuple)) and len(names) == num_classes:
        return [str(n) for n in names]
    dataset = checkpoint.get("dataset")
    if not isinstance(dataset, str):
        # The published checkpoints carry no names; their file names say which data set they are.
        stem = path.name.lower()
        dataset = next((d for d in DEFAULT_CLASS_NAMES if d in stem), "")
    defaults = DEFAULT_CLASS_NAMES.get(dataset)
    if defaults is not None and len(defaults) == num_classes:
        return list(defaults)
    return [f"class {i}" for i in range(num_classes)]


def _seed_network(state: dict[str, Any]) -> tuple[nn.Module, str, int]:
    """(network, kind, classes) for a seed network's weights; ValueError or RuntimeError where they are not one."""
    kind = network_kind(state)
    num_classes = num_classes_of(state)
    network = build_network(kind, num_classes, architecture=architecture_of(state))
    network.load_state_dict(state, strict=True)
    return network, kind, num_classes


def _fits_seed(state: dict[str, Any]) -> str | None:
    """'Network (--network last)' where the weights are a seed network's, else None."""
    try:
        network, kind, _ = _seed_network(state)
    except (ValueError, RuntimeError):
        return None
    return f"{type(network).__name__} (--network {kind})"


def _torchvision_network(path: Path, checkpoint: dict[str, Any], plain: PlainWeights) -> zoo.TorchvisionNet:
    """The torchvision network the checkpoint records (arch), or --arch for a plain state dict, strictly loaded."""
    state = checkpoint["net_state_dict"]
    recorded = checkpoint.get("arch")
    if recorded is not None and plain.arch is not None and plain.arch != recorded:
        raise CheckpointError(f"{path}: the checkpoint is a {recorded}, not a {plain.arch}: leave --arch out")
    arch = recorded or plain.arch
    if arch is None:  # a TorchvisionNet's bare state_dict: its keys, not a record, say what it is
        raise _unknown_weights(path, state, ValueError("no architecture recorded"))
    if arch not in ZOO:
        raise UsageError(f"--arch {arch}: unknown architecture (expected one of {', '.join(ZOO)})")
    try:
        return zoo.from_state(arch, state, plain.normalise or PLAIN_NORMALISATION)
    except (CheckpointError, RuntimeError) as error:
        seed = _fits_seed(state) if recorded is None else None
        if seed is not None:
            raise CheckpointError(
                f"{path}: the weights are Where-to-look's {seed}, not a {arch}: leave --arch out"
            ) from None
        first = str(error).strip().splitlines()[0]
        raise CheckpointError(f"{path}: {first}") from None


def _unknown_weights(path: Path, state: dict[str, Any], error: Exception) -> CheckpointError:
    """The error for weights of no known network: naming the torchvision architecture they fit, if any."""
    fits = zoo.fitting_archs(zoo.plain_state(state)[0])
    if fits:
        return CheckpointError(
            f"{path}: the weights are not one of Where-to-look's own networks; they fit torchvision's {fits[0]}: "
            f"pass --arch {fits[0]} (and --classes A,B)"
        )
    first = str(error).strip().splitlines()[0]
    return CheckpointError(
        f"{path}: the weights do not fit Where-to-look's networks ({first}) nor any of torchvision's {', '.join(ZOO)}"
    )


def _class_names(checkpoint: dict[str, Any], path: Path, outputs: int, plain: PlainWeights) -> list[str]:
    """The checkpoint's class names, else --classes (as many as the outputs), else a guess."""
    recorded = checkpoint.get("class_names")
    if plain.classes is not None and not (isinstance(recorded, (list, tuple)) and len(recorded) == outputs):
        if len(plain.classes) != outputs:
            raise UsageError(
                f"--classes {','.join(plain.classes)}: {len(plain.classes)} names for weights with {outputs} classes"
            )
        return list(plain.classes)
    return guess_class_names(checkpoint, path, outputs)


def ood_statistics(checkpoint: dict[str, Any], path: Path) -> dict[str, Any] | None:
    """The checkpoint's out-of-distribution statistics: its own 'ood' entry, else the arrays of <name>.ood.npz."""
    content = checkpoint.get("ood")
    if isinstance(content, dict):
        return content
    sidecar = names.ood_file(path)
    if not sidecar.is_file():
        return None
    try:
        with np.load(sidecar, allow_pickle=False) as arrays:
            return {key: arrays[key] for key in arrays.files}
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{sidecar}: not readable out-of-distribution statistics ({error})") from None


def load_model(
    source: str | Path, device: torch.device | str = "cpu", plain: PlainWeights | None = None, **fields: Any
) -> LoadedModel:
    """Build the right network for a checkpoint (chosen by its keys, or its recorded arch) and load its weights.

    Args:
        source: a checkpoint file, or the name of a bundled model: 'malaria' (last block),
            'malaria-every' (every block, every-block loss), 'malaria-every-single', 'gender'.
            A plain state dict of a torchvision network loads with arch='resnet18' (or another of
            nets.registry.ZOO); this project's checkpoints of torchvision networks record it.
        device: where the network goes.
        plain, fields: PlainWeights (and overrides of its fields: arch, classes, image_size, preprocess,
            normalise), for weights that do not record them.
    """
    plain = dataclasses.replace(plain or PlainWeights(), **fields)
    if plain.classes is not None:
        plain = dataclasses.replace(plain, classes=tuple(plain.classes))
    path = resolve_source(source)
    checkpoint = load_checkpoint(path)
    state = checkpoint["net_state_dict"]
    arch = None
    torchvision = zoo.is_zoo_state(state) or "arch" in checkpoint
    if not torchvision and plain.arch is not None:
        torchvision = not plain.arch_if_needed or _fits_seed(state) is None
    if not torchvision:
        try:
            network, kind, outputs = _seed_network(state)
        except (ValueError, RuntimeError) as error:
            raise _unknown_weights(path, state, error) from None
        size, preprocess = 128, "squash"
    else:
        network = _torchvision_network(path, checkpoint, plain)
        kind, arch = "torchvision", network.arch
        outputs = 2 if network.sigmoid else network.linear.out_features
        size, preprocess = PLAIN_IMAGE_SIZE, PLAIN_PREPROCESS
    network.to(device).eval()
    return LoadedModel(
        network=network,
        kind=kind,
        class_names=_class_names(checkpoint, path, outputs, plain),
        image_size=int(checkpoint.get("image_size", plain.image_size or size)),
        path=path,
        checkpoint=checkpoint,
        preprocess=str(checkpoint.get("preprocess", plain.preprocess or preprocess)),
        arch=arch,
        ood=ood_statistics(checkpoint, path),
        scale=read_scale(path),
    )
