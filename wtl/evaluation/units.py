"""Which images are independent draws: patients for the NIH cells, people for faces, else each image.

The bootstrap intervals (metrics.bootstrap) resample these units. A data set's `group(filename)`
says whose picture a file is (data.groups: the NIH patient id, the CelebA identity); pictures it
cannot place, or that have no file, are each their own unit.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wtl.data.datasets import GenderSet
from wtl.metrics.bootstrap import DEFAULT_REPLICATES, Resampler


def unit_name(dataset: Any) -> str:
    """'person' for faces, 'patient' for cells (any data set whose files name their patient), else 'image'."""
    if isinstance(dataset, GenderSet):
        return "person"
    return "patient" if callable(getattr(dataset, "group", None)) else "image"


def units_of(dataset: Any, files: Sequence[str | None]) -> tuple[str, list[str]]:
    """(the unit's name, one unit per image): the data set's group of each file, else the image itself."""
    group = getattr(dataset, "group", None)
    keys: list[str] = []
    placed = 0
    for index, file in enumerate(files):
        key = group(Path(file).name) if callable(group) and file else None
        placed += key is not None
        keys.append(f"group:{key}" if key is not None else f"image:{file or index}")
    return (unit_name(dataset) if placed else "image"), keys


def resampler_of(unit: str, keys: Sequence[str], replicates: int = DEFAULT_REPLICATES, seed: int = 0) -> Resampler:
    """The bootstrap draws of these images' units (all 'image' units when the unit is 'image')."""
    return Resampler.draw(list(keys), unit, replicates, seed)
