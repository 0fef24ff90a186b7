"""Checkpoints: write them atomically, load them safely, find them, download them.

A checkpoint is the original project's dict {"net_state_dict", "optim_state_dict",
"scheduler_state_dict", "best_val_acc", "epoch"}, plus optional keys this project
adds ("class_names", "image_size", "network", "loss", "dataset", "seed").
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model_network import build_network, network_kind, num_classes_of

# The class names of the original project's published checkpoints, which carry none.
DEFAULT_CLASS_NAMES = {
    "malaria": ["Uninfected", "Parasitized"],
    "gender": ["Female", "Male"],
}


class CheckpointError(Exception):
    """A checkpoint that is missing, corrupt or of the wrong kind; one line for the user."""


def save_checkpoint(content: dict[str, Any], path: str | Path) -> Path:
    """Write a checkpoint atomically: a temporary file in the same folder, then a rename.

    An interrupted write therefore leaves the previous checkpoint intact, never half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(content, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with weights_only=True (a downloaded file must not run code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # weights_only refuses any pickle that would import or call code.
        first = str(error).strip().splitlines()[0] if str(error).strip() else "unsafe content"
        raise CheckpointError(f"{path}: refused to load, the file is not a plain weights file ({first})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({first})") from None
    if isinstance(content, dict) and "net_state_dict" not in content and all(
        isinstance(v, torch.Tensor) for v in content.values()
    ):
        content = {"net_state_dict": content}  # a bare state dict, as torch.save(net.state_dict()) writes
    if not isinstance(content, dict) or not isinstance(content.get("net_state_dict"), dict):
        raise CheckpointError(f"{path}: not a Where-to-look checkpoint (no net_state_dict)")
    return content


@dataclass
class LoadedModel:
    """A network ready for inference and what its checkpoint says about it."""

    network: nn.Module
    kind: str  # "last" (Network) or "every" (NetworkMultiLoss)
    class_names: list[str]
    image_size: int
    path: Path
    checkpoint: dict[str, Any]


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


def load_model(path: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Build the right network for a checkpoint (chosen by its keys) and load its weights."""
    path = Path(path)
    checkpoint = load_checkpoint(path)
    state = checkpoint["net_state_dict"]
    try:
        kind = network_kind(state)
        num_classes = num_classes_of(state)
        network = build_network(kind, num_classes)
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
    )
