"""Test-split manifests: the file names of a model's test split, in the original project's JSON format."""

from __future__ import annotations

import json
from pathlib import Path

from wtl.data.datasets import ImageListSet, MalariaSet


def write_test_manifest(dataset: ImageListSet, path: str | Path) -> Path:
    """Write a test split's file names as JSON in the seed's format (Infected/Uninfected keys)."""
    by_class: dict[str, list[str]] = {name: [] for name in dataset.class_names}
    for sample_path, label in dataset.samples:
        by_class[dataset.class_names[label]].append(Path(sample_path).name)
    if list(dataset.class_names) == list(MalariaSet.CLASSES):
        content: dict[str, list[str]] = {
            "InfectedFilenames": by_class["Parasitized"],
            "UninfectedFilenames": by_class["Uninfected"],
        }
    else:
        content = {f"{name}Filenames": names for name, names in by_class.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=1) + "\n")
    return path
