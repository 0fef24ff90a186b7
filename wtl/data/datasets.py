"""The data sets: NIH malaria cells, CelebA genders, any folder of class sub-folders.

Each is a map-style torch Dataset of (path, label) samples decoded on access into
(uint8 image, label). Plain file and tensor work: no prompts, no globals, no device.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from wtl.data.groups import (
    celeba_identity,
    check_split,
    find_identity_manifest,
    in_split,
    is_nih_name,
    patient_id,
    read_identities,
)
from wtl.data.images import check_preprocess, list_images, read_image_uint8
from wtl.data.registry import (
    DEFAULT_PREPROCESS,  # noqa: F401 - the data sets' defaults, read here too
    SPLITS,
)
from wtl.errors import DatasetError, UsageError


class ImageListSet(Dataset):
    """(path, label) pairs decoded on access into (uint8 image, label)."""

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        class_names: Sequence[str],
        size: int = 128,
        preprocess: str = "squash",
    ) -> None:
        check_preprocess(preprocess)
        self.samples = list(samples)
        self.class_names = list(class_names)
        self.size = size
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return read_image_uint8(path, self.size, self.preprocess), label

    @property
    def labels(self) -> list[int]:
        """Label of every sample, in order."""
        return [label for _, label in self.samples]

    @staticmethod
    def group(filename: str) -> str | None:
        """Who a file belongs to (a patient, a person), where its name says; None where it does not."""
        return None

    def counts(self) -> list[int]:
        """Number of samples of each class, in class order."""
        return [self.labels.count(label) for label in range(len(self.class_names))]


def _subset_per_class(samples: list[tuple[Path, int]], max_per_class: int | None, seed: int) -> list[tuple[Path, int]]:
    """At most max_per_class samples of each class, the same seeded pick on every run."""
    if max_per_class is None:
        return samples
    generator = np.random.default_rng(seed)
    kept: list[tuple[Path, int]] = []
    for label in sorted({label for _, label in samples}):
        of_class = [s for s in samples if s[1] == label]
        order = generator.permutation(len(of_class))[:max_per_class]
        kept.extend(of_class[i] for i in sorted(order))
    return kept


def balanced_sample(samples: list[tuple[Path, int]], count: int, seed: int) -> list[tuple[Path, int]]:
    """A seeded sample of `count` samples, as even across classes as the classes allow, in the original order.

    Classes take turns (in a seeded order within each class), so a class with few
    images gives all it has and the others fill the rest.
    """
    generator = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for index, (_, label) in enumerate(samples):
        by_class.setdefault(label, []).append(index)
    queues = [[indices[i] for i in generator.permutation(len(indices))] for _, indices in sorted(by_class.items())]
    chosen: list[int] = []
    while len(chosen) < min(count, len(samples)):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return [samples[i] for i in sorted(chosen)]


def _find_class_root(root: Path, classes: Sequence[str], nested: Sequence[str]) -> Path:
    """The folder under root (or root itself) that holds every class sub-folder."""
    for candidate in [root, *(root / name for name in nested)]:
        if all((candidate / name).is_dir() for name in classes):
            return candidate
    wanted = ", ".join(f"{name}/" for name in classes)
    raise DatasetError(f"{root}: expected the folders {wanted} in it (or in {' or '.join(nested)}/)")


# NIH cell names start with the slide id, e.g. C100P61ThinF_IMG_..., C1_thinF_IMG_...


class MalariaSet(ImageListSet):
    """NIH malaria cells, Uninfected (0) / Parasitized (1), split by patient (or by file with split_by='file').

    A split may be empty (a small folder whose few patients all hash to training);
    `training_splits` and `make_dataset` decide what that means.
    """

    CLASSES = ("Uninfected", "Parasitized")

    def __init__(
        self,
        root: str | Path,
        split: str,
        max_samples_per_class: int | None = None,
        seed: int = 0,
        size: int = 128,
        preprocess: str = "squash",
        split_by: str = "group",
    ) -> None:
        check_split(split, split_by)
        folder = _find_class_root(Path(root), self.CLASSES, ["cell_images", "cell_images/cell_images"])
        samples = [
            (path, label)
            for label, name in enumerate(self.CLASSES)
            for path in list_images(folder / name)
            if in_split(path.name if split_by == "file" else patient_id(path.name), split)
        ]
        self.folder = folder
        super().__init__(_subset_per_class(samples, max_samples_per_class, seed), self.CLASSES, size, preprocess)

    @staticmethod
    def group(filename: str) -> str | None:
        """The patient a cell belongs to."""
        return patient_id(filename)


class GenderSet(ImageListSet):
    """CelebA faces in the Kaggle layout Dataset/{Train,Validation,Test}/{Female,Male}; a missing split is empty."""

    CLASSES = ("Female", "Male")
    FOLDERS = {"train": "Train", "val": "Validation", "test": "Test"}

    def __init__(
        self,
        root: str | Path,
        split: str,
        max_samples_per_class: int | None = None,
        seed: int = 0,
        size: int = 128,
        preprocess: str = "center-crop",
        split_by: str = "group",
    ) -> None:
        check_split(split, split_by)
        root = Path(root)
        base = root / "Dataset" if (root / "Dataset").is_dir() else root
        present = [one for one, sub in self.FOLDERS.items() if all((base / sub / n).is_dir() for n in self.CLASSES)]
        if not present:
            raise DatasetError(f"{root}: expected Dataset/Train/Female/ and .../Male/ (and Validation/, Test/) in it")
        samples = [
            (path, label)
            for one in (SPLITS if split == "all" else (split,))
            if one in present
            for label, name in enumerate(self.CLASSES)
            for path in list_images(base / self.FOLDERS[one] / name)
        ]
        self.folder = base
        super().__init__(_subset_per_class(samples, max_samples_per_class, seed), self.CLASSES, size, preprocess)

    @staticmethod
    def group(filename: str) -> str | None:
        """The person a face belongs to, where the file name says (<identity>_<image>.jpg)."""
        return celeba_identity(filename)


# The split folders a folder data set may have, and the other names they go by (Keras' validation/, ...).
SPLIT_FOLDERS = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}


def split_folders(root: Path) -> dict[str, Path]:
    """The split folders under `root` that exist, by split: {'train': root/train, 'test': root/test, ...}.

    A layout counts as split only with a train/ folder and a val/ or test/ one beside it: a data set
    whose classes happen to be called 'train' and 'test' would otherwise be read as splits.
    """
    found = {}
    for split, names in SPLIT_FOLDERS.items():
        for name in names:
            if (root / name).is_dir():
                found[split] = root / name
                break
    return found if "train" in found and len(found) > 1 else {}


def _class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


class FolderSet(ImageListSet):
    """Any folder of class sub-folders (classes sorted by name); any number of classes. Three layouts:

    - `train/`, `val/` and `test/` (or `validation/`...) with class sub-folders: the splits as given;
      `train/` + `test/` without a validation folder: validation is carved out of `train/` by a
      stable hash of each picture's patient or person where known (an `identities` map, NIH cell
      names, `<identity>_<image>` names), else of its file name; `train/` + `val/` has no test split;
    - class folders alone: every file goes to a split by a stable hash of its name (80/10/10), or
      of its patient where the name is an NIH cell's (so a folder of cells is split by patient).

    `layout` says which ('train+val+test', 'train+test', 'train+val' or 'classes'), `carved_by`
    how validation was carved ('patients', 'people', 'files'; None where it was not).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        max_samples_per_class: int | None = None,
        seed: int = 0,
        size: int = 128,
        preprocess: str = "squash",
        split_by: str = "group",
        identities: dict[str, str] | None = None,
    ) -> None:
        check_split(split, split_by)
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"{root}: no such folder")
        folders = split_folders(root)
        self.layout = "+".join(s for s in SPLITS if s in folders) if folders else "classes"
        self.carved_by: str | None = None
        if identities is None and folders and "val" not in folders:
            # Whose picture is whose, for carving validation out by person: a manifest.csv beside the data.
            manifest = find_identity_manifest(root)
            identities = read_identities(manifest) if manifest else None
        self.identities = identities or {}
        if folders:
            # The classes are the training folder's, so that labels mean the same in every split.
            classes, where = _class_folders(folders["train"]), folders["train"]
        else:
            classes, where = _class_folders(root), root
        if len(classes) < 2:
            raise DatasetError(f"{where}: expected at least two class sub-folders, found {len(classes)}")
        if folders:
            samples = self._presplit(folders, classes, split, split_by)
        else:
            samples = [
                (path, label)
                for label, name in enumerate(classes)
                for path in list_images(root / name)
                if in_split(path.name if split_by == "file" else self.split_key(path.name), split)
            ]
        self.folder = root
        super().__init__(_subset_per_class(samples, max_samples_per_class, seed), classes, size, preprocess)

    def _presplit(
        self, folders: dict[str, Path], classes: list[str], split: str, split_by: str
    ) -> list[tuple[Path, int]]:
        """The samples of `split` in a layout of split folders; validation carved from train/ where it has none."""

        def listed(folder: Path) -> list[tuple[Path, int]]:
            return [
                (path, label)
                for label, name in enumerate(classes)
                if (folder / name).is_dir()
                for path in list_images(folder / name)
            ]

        if split == "all":
            return [sample for one in SPLITS if one in folders for sample in listed(folders[one])]
        if "val" not in folders and split in ("train", "val"):
            train = listed(folders["train"])
            keys = {path: self._carving_key(path.name, split_by) for path, _ in train}
            self.carved_by = (
                "files"
                if all(k == p.name for p, k in keys.items())
                else ("patients" if any(is_nih_name(p.name) for p in keys) and not self.identities else "people")
            )
            return [(path, label) for path, label in train if in_split(keys[path], "val") == (split == "val")]
        if split not in folders:
            return []  # train/ + val/ has no test split
        return listed(folders[split])

    def _carving_key(self, filename: str, split_by: str) -> str:
        """What a picture of train/ is hashed by to carve validation out: its person or patient where known."""
        if split_by == "file":
            return filename
        known = self.identities.get(filename) or (patient_id(filename) if is_nih_name(filename) else None)
        return known or celeba_identity(filename) or filename

    @staticmethod
    def split_key(filename: str) -> str:
        """What a file's split is hashed from: its patient for an NIH cell's name, else the name itself."""
        return patient_id(filename) if is_nih_name(filename) else filename

    @staticmethod
    def group(filename: str) -> str | None:
        """The patient of an NIH-named cell, else unknown."""
        return patient_id(filename) if is_nih_name(filename) else None


DATASETS: dict[str, type[MalariaSet] | type[GenderSet] | type[FolderSet]] = {
    "malaria": MalariaSet,
    "gender": GenderSet,
    "folder": FolderSet,
}


def make_dataset(name: str, root: str | Path, split: str, empty_hint: str = "", **kwargs: Any) -> ImageListSet:
    """One split of the named data set ('malaria', 'gender' or 'folder'); an empty split is an error."""
    if not Path(root).is_dir():
        raise DatasetError(f"{root}: no such folder")
    dataset = DATASETS[name](root, split, **kwargs)
    if not dataset.samples:
        where = getattr(dataset, "folder", root)
        raise DatasetError(f"{where}: no images of the {split} split in its class folders{empty_hint}")
    return dataset


def dataset_kind(class_names: Sequence[str], recorded: object = None) -> str:
    """Which data set a model's classes belong to: the checkpoint's record, else malaria or gender by the classes."""
    if recorded in ("malaria", "gender"):
        return str(recorded)
    if list(class_names) == list(MalariaSet.CLASSES):
        return "malaria"
    if list(class_names) == list(GenderSet.CLASSES):
        return "gender"
    return "folder"


def model_dataset(
    data_dir: Path | None,
    split: str,
    class_names: Sequence[str],
    kind: str,
    size: int = 128,
    preprocess: str = "squash",
    seed: int = 0,
) -> ImageListSet:
    """The split (or 'all') of `data_dir` as the model sees it: its kind of data set, size and preprocessing."""
    if data_dir is None:
        raise UsageError("pass the data set with --data-dir PATH")
    hint = "" if split == "all" else "; pass --split all to score every image in it"
    dataset = make_dataset(kind, data_dir, split, empty_hint=hint, size=size, preprocess=preprocess, seed=seed)
    if kind == "folder" and dataset.class_names != list(class_names):
        raise UsageError(
            f"{data_dir}: its class folders ({', '.join(dataset.class_names)}) are not the model's "
            f"classes ({', '.join(class_names)})"
        )
    return dataset
