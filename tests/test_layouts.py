"""Folder layouts: train/ + test/ (Keras, ImageFolder), train/ + val/, train/ + val/ + test/, class folders alone."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import cell_image, error_lines, run_cli, shape_image

from wtl.data.datasets import FolderSet, make_dataset
from wtl.data.splits import training_splits
from wtl.errors import DatasetError

CLASSES = ("cat", "dog")


def layout(root: Path, counts: dict[str, int], name=lambda cls, split, i: f"{cls}_{split}_{i:03d}.png") -> Path:
    """root/<split>/{cat,dog}/*.png with counts[split] pictures per class (0: the class folders, empty)."""
    rng = np.random.default_rng(0)
    for split, count in counts.items():
        for label, cls in enumerate(CLASSES):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                shape_image(rng, label, 20).save(folder / name(cls, split, i))
    return root


def test_train_and_test_without_val_train_with_validation_carved_by_file(tmp_path: Path) -> None:
    """The issue's case: D/train/{cat,dog} and D/test/{cat,dog} stopped with 'test has 0 usable image(s)'."""
    root = layout(tmp_path / "D", {"train": 30, "test": 2})
    splits = training_splits("folder", root, size=16)
    assert splits.train.class_names == list(CLASSES)
    assert len(splits.test) == 4 and all(p.parent.parent.name == "test" for p, _ in splits.test.samples)
    train, val = {p for p, _ in splits.train.samples}, {p for p, _ in splits.val.samples}
    assert val and not train & val and train | val == set((root / "train").rglob("*.png"))
    (note,) = splits.notes
    assert "has train/ and test/ but no val/: validation is carved out of train/ by file" in note
    assert f"{len(val)} of its 60 images" in note
    # evaluate reads the same splits: the test folder, and the same carved validation.
    assert {p for p, _ in make_dataset("folder", root, "val").samples} == val
    assert len(make_dataset("folder", root, "all")) == 64


def test_validation_is_carved_by_patient_or_person_where_known(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    cells = tmp_path / "cells"
    for split, patients in (("train", range(1, 31)), ("test", range(31, 34))):
        for label, cls in enumerate(("Parasitized", "Uninfected")):
            (cells / split / cls).mkdir(parents=True)
            for patient in patients:
                for k in range(2):
                    picture = cell_image(rng, label == 0, 24)
                    picture.save(cells / split / cls / f"C{patient}P{patient}ThinF_IMG_2015_cell_{k}.png")
    splits = training_splits("folder", cells, size=16)
    assert "carved out of train/ by patient" in splits.notes[0]
    patients = [{p.name.split("P")[0] for p, _ in s.samples} for s in (splits.train, splits.val)]
    assert patients[1] and not patients[0] & patients[1]
    # People from a manifest.csv beside the data (the shared faces' layout): nobody in two splits.
    faces = layout(tmp_path / "faces", {"train": 12, "test": 2}, name=lambda c, s, i: f"{c}{s}{i:02d}.png")
    with (faces / "manifest.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["path", "identity"])
        for path in sorted(faces.rglob("*.png")):
            writer.writerow([path.name, f"person{int(path.stem[-2:]) // 3}"])
    people = training_splits("folder", faces, size=16)
    assert "carved out of train/ by person" in people.notes[0]
    who = [{int(p.stem[-2:]) // 3 for p, _ in s.samples} for s in (people.train, people.val)]
    assert who[1] and not who[0] & who[1]


def test_train_and_val_without_test_and_all_three(tmp_path: Path) -> None:
    two = training_splits("folder", layout(tmp_path / "two", {"train": 4, "val": 2}), size=16)
    assert (len(two.train), len(two.val), len(two.test)) == (8, 4, 0)
    assert two.notes == [f"note: {tmp_path / 'two'} has train/ and val/ but no test/: nothing is scored at the end"]
    three = training_splits("folder", layout(tmp_path / "three", {"validation": 2, "train": 4, "test": 3}), size=16)
    assert (len(three.train), len(three.val), len(three.test)) == (8, 4, 6) and three.notes == []
    # Class folders alone are split by a hash of the file names, as before.
    flat = tmp_path / "flat"
    for label, cls in enumerate(CLASSES):
        (flat / cls).mkdir(parents=True)
        for i in range(20):
            shape_image(np.random.default_rng(i), label, 20).save(flat / cls / f"{i}.png")
    assert FolderSet(flat, "train").layout == "classes"
    assert sum(len(FolderSet(flat, s)) for s in ("train", "val", "test")) == 40


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ({"train": 4, "test": 0}, "test: the test split holds no images in its class folders (cat/, dog/)"),
        ({"train": 4, "val": 0, "test": 2}, "val: the val split holds no images in its class folders (cat/, dog/)"),
        ({"train": 1, "test": 2}, "train/cat: 1 usable image(s); training needs at least 2 per class"),
    ],
)
def test_a_really_empty_split_names_the_split_and_its_folder(tmp_path: Path, counts: dict, message: str) -> None:
    root = layout(tmp_path / "D", counts)
    with pytest.raises(DatasetError, match=message.replace("(", "\\(").replace(")", "\\)")) as info:
        training_splits("folder", root, size=16)
    assert str(info.value).startswith(str(root)) and "\n" not in str(info.value)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_keras_layout_trains_end_to_end(tmp_path: Path) -> None:
    root = layout(tmp_path / "D", {"train": 10, "test": 2})
    flags = ["--dataset", "folder", "--data-dir", root, "--network", "last", "--epochs", "1", "--image-size", "32"]
    done = run_cli(*flags, "--workers", "0", "--device", "cpu", "--models-dir", tmp_path / "models")
    assert done.returncode == 0, done.stderr
    assert "validation is carved out of train/ by file" in done.stderr
    assert "accuracy" in done.stdout and (tmp_path / "models" / "model_d_last.best.pt").is_file()
    empty = layout(tmp_path / "E", {"train": 4, "test": 0})
    failed = run_cli("--dataset", "folder", "--data-dir", empty, "--network", "last", "--models-dir", tmp_path / "m")
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    (line,) = error_lines(failed.stderr)
    assert line == f"error: {empty / 'test'}: the test split holds no images in its class folders (cat/, dog/)"
