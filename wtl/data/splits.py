"""The three splits a training run uses, for small folders too, with a note on whatever is left out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from wtl.data.datasets import DATASETS, FolderSet, ImageListSet, _subset_per_class, split_folders
from wtl.data.groups import find_identity_manifest, read_identities
from wtl.data.registry import DEFAULT_PREPROCESS, SPLITS
from wtl.errors import DatasetError


@dataclass
class TrainingSplits:
    """The three splits a training run uses, and one-line notes on anything left out."""

    train: ImageListSet
    val: ImageListSet
    test: ImageListSet
    notes: list[str] = field(default_factory=list)


# Fewer than this many images of a class in the whole folder cannot train anything.
MIN_PER_CLASS = 2


def training_splits(
    name: str,
    root: str | Path,
    max_per_class: int | None = None,
    seed: int = 0,
    size: int = 128,
    preprocess: str | None = None,
    split_by: str = "group",
    identities: str | Path | None = None,
) -> TrainingSplits:
    """Train, validation and test split of a data set, for small folders too.

    Rules: every class needs MIN_PER_CLASS images in the whole folder (else DatasetError);
    if the split leaves a class without training images, everything trains and nothing is
    held out; an empty validation or test split is allowed. Each such case adds a note.
    A folder of split folders (train/ with val/ and/or test/) keeps them: each given split
    must hold images (else DatasetError naming it), validation is carved from train/ where
    there is no val/ (by patient or person where known: `identities`, a CSV, or a manifest.csv
    beside the data), and a note says so.
    """
    if not Path(root).is_dir():
        raise DatasetError(f"{root}: no such folder")
    options: dict = {"size": size, "preprocess": preprocess or DEFAULT_PREPROCESS[name], "split_by": split_by}
    if name == "folder":
        source = identities or find_identity_manifest(root)
        options["identities"] = read_identities(source) if source else None
        given = split_folders(Path(root))
        if given:
            return _given_splits(root, given, options, max_per_class, seed)
    build = DATASETS[name]
    every = build(root, "all", **options)
    where = getattr(every, "folder", root)
    for label, count in enumerate(every.counts()):
        if count < MIN_PER_CLASS:
            raise DatasetError(
                f"{where}: {every.class_names[label]} has {count} usable image(s); "
                f"training needs at least {MIN_PER_CLASS} per class"
            )
    train: ImageListSet
    val: ImageListSet
    test: ImageListSet
    train, val, test = (build(root, split, **options) for split in SPLITS)
    unit = "patients" if name == "malaria" and split_by == "group" else "files"
    remedy = (
        "add more patients, or pass --split-by file (cells of one patient then sit in two splits, "
        "which overstates accuracy)"
        if unit == "patients"
        else "add more images"
    )
    if name == "gender":
        remedy = "add a Dataset/Validation/ and a Dataset/Test/ folder of other people"
    notes: list[str] = []
    missing = [every.class_names[i] for i, count in enumerate(train.counts()) if count == 0]
    if missing:
        notes.append(
            f"note: the split by {unit} leaves no training images of {', '.join(missing)}: training on all "
            f"{len(every)} images, none held out for validation or test; {remedy}"
        )
        train = every
        val, test = (ImageListSet([], every.class_names, size, options["preprocess"]) for _ in range(2))
    else:
        if not val.samples:
            notes.append(
                f"note: no validation images (the split by {unit} put none there): the last epoch's weights "
                f"count as best; {remedy}"
            )
        if not test.samples:
            notes.append(f"note: no test images (the split by {unit} put none there): nothing is scored; {remedy}")
    train.samples = _subset_per_class(train.samples, max_per_class, seed)
    return TrainingSplits(train, val, test, notes)


def _given_splits(
    root: str | Path, given: dict[str, Path], options: dict, max_per_class: int | None, seed: int
) -> TrainingSplits:
    """The splits of a folder laid out as train/ with val/ and/or test/, validation carved where missing."""
    train, val, test = (FolderSet(root, split, **options) for split in SPLITS)
    for split, dataset in (("train", train), ("val", val), ("test", test)):
        folder = given.get(split)
        if folder is not None and not dataset.samples:
            classes = ", ".join(f"{c}/" for c in dataset.class_names)
            raise DatasetError(f"{folder}: the {split} split holds no images in its class folders ({classes})")
    for label, count in enumerate(train.counts()):
        if count < MIN_PER_CLASS:
            folder = given["train"] / train.class_names[label]
            raise DatasetError(f"{folder}: {count} usable image(s); training needs at least {MIN_PER_CLASS} per class")
    notes: list[str] = []
    if "val" not in given:
        unit = {"patients": "patient", "people": "person"}.get(str(val.carved_by), "file")
        notes.append(
            f"note: {Path(root)} has train/ and test/ but no val/: validation is carved out of train/ by {unit} "
            f"(a stable hash of each {unit}, about one in ten): {len(val)} of its {len(train) + len(val)} images"
        )
        if not val.samples:
            notes.append("note: no validation images were carved out (too few): the last epoch's weights count as best")
    if "test" not in given:
        notes.append(f"note: {Path(root)} has train/ and val/ but no test/: nothing is scored at the end")
    train.samples = _subset_per_class(train.samples, max_per_class, seed)
    return TrainingSplits(train, val, test, notes)
