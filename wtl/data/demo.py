"""Which pictures a demo shows: the bundled cells, cells of a model's test split, or test faces of a data set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from wtl import resources
from wtl.data.datasets import GenderSet, MalariaSet
from wtl.data.images import list_images
from wtl.errors import DatasetError

CELL_CLASSES = ("Parasitized", "Uninfected")
# The keys of the original project's manifest for each class of cells.
MANIFEST_KEYS = {"Parasitized": "InfectedFilenames", "Uninfected": "UninfectedFilenames"}

Picture = tuple[Path, str]  # a file and its true class


def demo_cells(folder: Path | None = None) -> list[Picture]:
    """The bundled demo cells as (path, true class)."""
    folder = resources.demo_dir() if folder is None else folder
    cells = [(p, cls) for cls in CELL_CLASSES for p in list_images(folder / cls)] if folder.is_dir() else []
    if not cells:
        raise DatasetError(
            f"{folder}: the bundled demo cells are missing (data/demo/Parasitized, data/demo/Uninfected)"
        )
    return cells


def manifest_cells(manifest: Path | None, model: str, data_dir: Path, seed: int, per_class: int = 10) -> list[Picture]:
    """`per_class` seeded test cells per class from a model's test-split manifest, found in data_dir.

    When the manifest is missing, or none of its cells are in data_dir (a user's own cells),
    they come from data_dir's own test split instead: `split_cells`.
    """
    if manifest is None:
        return split_cells(data_dir, seed, per_class, f"{model} has no test-split manifest")
    listed = json.loads(manifest.read_text())
    rng = np.random.default_rng(seed)
    picked: list[Picture] = []
    for cls in CELL_CLASSES:
        names = sorted(listed.get(MANIFEST_KEYS[cls], []))
        chosen = [names[i] for i in sorted(rng.permutation(len(names))[:per_class])]
        folder = next((f for f in (data_dir / cls, data_dir / "cell_images" / cls) if f.is_dir()), None)
        if folder is None:
            raise DatasetError(f"{data_dir}: expected {cls}/ (or cell_images/{cls}/) in it")
        present = [name for name in chosen if (folder / name).is_file()]
        if present and len(present) < len(chosen):
            print(f"note: {len(chosen) - len(present)} {cls} test cells of {manifest.name} are not in {folder}")
        picked += [(folder / name, cls) for name in present]
    if not picked:
        return split_cells(data_dir, seed, per_class, f"none of the test cells listed in {manifest.name} are there")
    return picked


def split_cells(data_dir: Path, seed: int, per_class: int, why: str) -> list[Picture]:
    """`per_class` seeded cells per class of data_dir's own test split (the trainer's patient rule), else of all."""
    dataset = MalariaSet(data_dir, "test")
    where = "its own test split (patients picked by the same rule as in training)"
    if not dataset.samples:
        dataset = MalariaSet(data_dir, "all")
        where = "all its cells (none of its patients falls in the test split: the model may have seen them)"
    print(f"note: {why}: the demo cells come from {where}")
    rng = np.random.default_rng(seed)
    picked: list[Picture] = []
    for cls in CELL_CLASSES:
        label = MalariaSet.CLASSES.index(cls)
        paths = sorted(path for path, target in dataset.samples if target == label)
        picked += [(paths[i], cls) for i in sorted(rng.permutation(len(paths))[:per_class])]
    if not picked:
        raise DatasetError(f"{data_dir}: no cells in Parasitized/ or Uninfected/")
    return picked


def gender_test_faces(data_dir: Path, seed: int, per_class: int = 10) -> list[Picture]:
    """`per_class` seeded test faces per gender from a gender data set (no faces ship with the tool)."""
    test = GenderSet(data_dir, "test", max_samples_per_class=per_class, seed=seed)
    if not test.samples:
        raise DatasetError(f"{data_dir}: no test faces (expected Dataset/Test/Female/ and .../Male/)")
    return [(p, test.class_names[y]) for p, y in test.samples]
