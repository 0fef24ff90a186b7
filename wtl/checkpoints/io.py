"""Checkpoint files: written atomically, read safely (weights_only=True: a downloaded file must not run code).

A checkpoint is the original project's dict {"net_state_dict", "optim_state_dict",
"scheduler_state_dict", "best_val_acc", "epoch"}, plus optional keys this project adds
("class_names", "image_size", "preprocess", "network", "loss", "dataset", "seed", "history"...).
A bare state dict, as `torch.save(net.state_dict())` writes, is read as {"net_state_dict": it}.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from wtl.errors import CheckpointError


def save_checkpoint(content: dict[str, Any], path: str | Path) -> Path:
    """Write a checkpoint atomically: a temporary file in the same folder, then a rename.

    An interrupted write therefore leaves the previous checkpoint intact, never half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        # mkstemp creates the file readable by its owner only; a checkpoint is no secret.
        os.chmod(temporary, 0o644)
        with os.fdopen(handle, "wb") as stream:
            torch.save(content, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _unpickling_reason(error: pickle.UnpicklingError) -> str:
    """The useful part of torch's multi-paragraph weights_only error (what it refused)."""
    text = str(error)
    # torch's first line advises loading with weights_only=False, which is the wrong advice for a download.
    match = re.search(r"Unsupported global: GLOBAL (\S+)|(Unsupported operand \S+)", text)
    if match:
        return f"it would import {match.group(1)}" if match.group(1) else match.group(2)
    return "unsafe or unknown content"


def holds_training_state(path: str | Path) -> bool:
    """Whether `path` is a resumable checkpoint (optimizer state inside): a model someone trained, not a download."""
    try:
        return Path(path).is_file() and "optim_state_dict" in load_checkpoint(path)
    except CheckpointError:
        return False  # unreadable: nothing worth keeping


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with weights_only=True (a downloaded file must not run code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # weights_only refuses any pickle that would import or call code.
        # A whole pickled model (torch.save(model)) lands here: it would import its class, i.e. run code.
        raise CheckpointError(
            f"{path}: refused to load, the file is not a plain weights file ({_unpickling_reason(error)}); "
            "if it is a whole model saved with torch.save(model), save its weights instead, "
            "torch.save(model.state_dict(), 'weights.pt'), and load that (a torchvision network with --arch NAME)"
        ) from None
    except Exception as error:  # garbage bytes fail in many ways, e.g. a KeyError from a bad pickle memo
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({first})") from None
    if (
        isinstance(content, dict)
        and "net_state_dict" not in content
        and all(isinstance(v, torch.Tensor) for v in content.values())
    ):
        content = {"net_state_dict": content}  # a bare state dict, as torch.save(net.state_dict()) writes
    if not isinstance(content, dict) or not isinstance(content.get("net_state_dict"), dict):
        raise CheckpointError(f"{path}: not a Where-to-look checkpoint (no net_state_dict)")
    return content
