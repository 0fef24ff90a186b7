"""A model's shared colour scale: one number per method and view, kept in a small JSON file beside the checkpoint.

Drawing every picture of a model on the same scale makes a healthy cell's map as dim as its
evidence is weak. The scale is a high percentile of |map| over the model's test split
(maps.scale measures it); the trainer writes it at the end of training, `where_to_look.py scale`
for a checkpoint that lacks it, and the bundled checkpoints ship theirs. No torch here.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wtl import names
from wtl.checkpoints.finding import is_bundled
from wtl.errors import CheckpointError

# The percentile of |map| over all positions of all test pictures that the colour bar's end stands for.
SCALE_PERCENTILE = 99.0
# Which split a scale file is measured on: the test split; a data set without one lends its
# validation split, and one without either its training split (the file's `source` says which).
SCALE_SPLITS = ("test", "val", "train")


def scale_split(sizes: Mapping[str, int]) -> str:
    """The split a model's scale file is measured on: the first of SCALE_SPLITS with images in `sizes`."""
    return next((split for split in SCALE_SPLITS if sizes.get(split, 0) > 0), SCALE_SPLITS[-1])


def missing_scale_note(checkpoint: Path, method: str) -> str:
    """Why a picture asked for on the model's scale is drawn per image, and how to give the model a scale."""
    where = f"{Path(checkpoint).name} has no shared colour scale for {method} ({names.scale_file(checkpoint).name})"
    if is_bundled(checkpoint):
        how = f"copy {Path(checkpoint).name} out of models/bundled/ and measure it with 'where_to_look.py scale "
        how += "--model COPY --data-dir DATA'"
    else:
        how = f"measure it with 'where_to_look.py scale --model {checkpoint} --data-dir DATA'"
    return f"{where}: drawn per image; {how}"


@dataclass(frozen=True)
class ModelScale:
    """Per method and view ('last', 'block1'...) the value at the colour bar's end, and how it was measured."""

    values: dict[str, dict[str, float]]  # method -> view -> scale (CAM: log-odds; Grad-CAM family: no units)
    percentile: float = SCALE_PERCENTILE
    images: int = 0  # pictures it was measured on
    source: str = ""  # e.g. "test split of /data/malaria (439 images)"
    units: dict[str, str] = field(default_factory=dict)  # method -> what the values are

    def of(self, method: str, view: str) -> float | None:
        """The scale of one method's view, or None where it was not measured (or is not positive)."""
        value = self.values.get(method, {}).get(view)
        return float(value) if value is not None and value > 0 else None

    def to_json(self) -> dict[str, Any]:
        """The sidecar's content."""
        return {
            "percentile": self.percentile,
            "images": self.images,
            "source": self.source,
            "units": dict(self.units),
            "scales": {m: dict(v) for m, v in self.values.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelScale:
        """Read a sidecar's content (KeyError/TypeError/ValueError when it is not one)."""
        values = {str(m): {str(v): float(x) for v, x in views.items()} for m, views in data["scales"].items()}
        return cls(
            values,
            float(data.get("percentile", SCALE_PERCENTILE)),
            int(data.get("images", 0)),
            str(data.get("source", "")),
            {str(k): str(v) for k, v in data.get("units", {}).items()},
        )


def read_scale(checkpoint: Path) -> ModelScale | None:
    """The scale beside a checkpoint (names.scale_file), None where there is none; a broken file is an error."""
    path = names.scale_file(checkpoint)
    if not path.is_file():
        return None
    try:
        return ModelScale.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(
            f"{path}: not a scale file ({error}); delete it and run 'where_to_look.py scale'"
        ) from None


def write_scale(scale: ModelScale, checkpoint: Path) -> Path:
    """Write the sidecar beside `checkpoint` atomically (a temporary file, then a rename); returns its path."""
    path = names.scale_file(checkpoint)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(json.dumps(scale.to_json(), indent=1) + "\n")
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
