"""Loading a checkpoint as a network ready for inference, with what the checkpoint says about it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wtl import names
from wtl.checkpoints.finding import bundled_checkpoint
from wtl.checkpoints.io import load_checkpoint
from wtl.checkpoints.scales import ModelScale, read_scale
from wtl.errors import CheckpointError
from wtl.nets.seed import architecture_of, build_network, network_kind, num_classes_of

# The class names of the original project's published checkpoints, which carry none.
DEFAULT_CLASS_NAMES = {
    "malaria": ["Uninfected", "Parasitized"],
    "gender": ["Female", "Male"],
}


@dataclass
class LoadedModel:
    """A network ready for inference and what its checkpoint says about it."""

    network: nn.Module
    kind: str  # "last" (Network) or "every" (NetworkMultiLoss)
    class_names: list[str]
    image_size: int
    path: Path
    checkpoint: dict[str, Any]
    # How a picture becomes the network's square input; models from before this key were squashed.
    preprocess: str = "squash"
    # The shared colour scale measured for these weights (names.scale_file beside the checkpoint), if any.
    scale: ModelScale | None = None

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


def load_model(source: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Build the right network for a checkpoint (chosen by its keys) and load its weights.

    Args:
        source: a checkpoint file, or the name of a bundled model: 'malaria' (last block),
            'malaria-every' (every block, every-block loss), 'malaria-every-single', 'gender'.
        device: where the network goes.
    """
    path = resolve_source(source)
    checkpoint = load_checkpoint(path)
    state = checkpoint["net_state_dict"]
    try:
        kind = network_kind(state)
        num_classes = num_classes_of(state)
        network = build_network(kind, num_classes, architecture=architecture_of(state))
        network.load_state_dict(state, strict=True)
    except (ValueError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0]
        raise CheckpointError(f"{path}: the weights do not fit Where-to-look's networks ({first})") from None
    network.to(device).eval()
    return LoadedModel(
        network=network,
        kind=kind,
        class_names=guess_class_names(checkpoint, path, num_classes),
        image_size=int(checkpoint.get("image_size", 128)),
        path=path,
        checkpoint=checkpoint,
        preprocess=str(checkpoint.get("preprocess", "squash")),
        scale=read_scale(path),
    )
