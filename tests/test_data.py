"""Image loading in every PIL mode, the three data sets, the test manifest and the decoded-image cache."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    FOLDER_CLASSES,
    GENDER_CLASSES,
    GENDER_SPLITS,
    MALARIA_SPLIT_PATIENTS,
    build_malaria,
    cell_image,
    face_image,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from wtl.data import datasets as model_datasets
from wtl.data import images as model_images
from wtl.data.cache import DatasetCache
from wtl.data.datasets import FolderSet, GenderSet, MalariaSet, balanced_sample, make_dataset
from wtl.data.groups import (
    celeba_identity,
    find_identity_manifest,
    identities_by_split,
    patient_id,
    read_identities,
    shared_identities,
    split_of_group,
)
from wtl.data.images import load_image, read_image_uint8
from wtl.data.manifests import write_test_manifest
from wtl.data.registry import SPLITS
from wtl.data.splits import training_splits
from wtl.errors import DatasetError, ImageError

# --------------------------------------------------------------------------- images in every mode


def _gradient(width: int, height: int, peak: float) -> np.ndarray:
    """A horizontal ramp 0..peak, so that a scaling error shows in the mean."""
    return np.tile(np.linspace(0, peak, width), (height, 1))


def make_mode_image(mode: str, width: int, height: int, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """An image of the PIL mode asked for, and the file suffix that stores that mode."""
    if mode == "L":
        return Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), mode="L"), ".png"
    if mode == "LA":
        return Image.fromarray(rng.integers(0, 256, (height, width, 2), dtype=np.uint8), mode="LA"), ".png"
    if mode == "RGB":
        return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mode="RGB"), ".png"
    if mode == "RGBA":
        return Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), mode="RGBA"), ".png"
    if mode in ("P", "PT"):
        rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mode="RGB")
        image = rgb.quantize(colors=16)
        if mode == "PT":
            image.info["transparency"] = 0
        return image, ".png"
    if mode == "I;16":
        values = rng.integers(0, 65536, (height, width)).astype(np.uint16)
        return Image.fromarray(values), ".png"
    if mode == "I":
        return Image.fromarray(rng.integers(0, 70000, (height, width)).astype(np.int32), mode="I"), ".tif"
    if mode == "F":
        scale = float(rng.choice([1.0, 255.0, 5000.0]))
        return Image.fromarray((rng.random((height, width)) * scale).astype(np.float32), mode="F"), ".tif"
    if mode == "CMYK":
        return Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), mode="CMYK"), ".jpg"
    raise ValueError(mode)


def save(image: Image.Image, path: Path) -> Path:
    if "transparency" in image.info:
        image.save(path, transparency=image.info["transparency"])
    else:
        image.save(path)
    return path


def check_network_input(tensor: torch.Tensor, size: int) -> None:
    assert tensor.shape == (3, size, size)
    assert tensor.dtype == torch.float32
    assert not torch.isnan(tensor).any()
    assert tensor.min() >= 0.0 and tensor.max() <= 1.0


# The mode Pillow reports on reading the file back (P with a transparency index is still P).
MODES_READ_BACK = {
    "L": {"L"},
    "LA": {"LA"},
    "P": {"P"},
    "PT": {"P"},
    "RGB": {"RGB"},
    "RGBA": {"RGBA"},
    "I;16": {"I;16", "I"},
    "I": {"I", "I;32", "I;32S"},
    "F": {"F"},
    "CMYK": {"CMYK"},
}


@pytest.mark.parametrize("mode", list(MODES_READ_BACK))
def test_load_image_every_mode(tmp_path: Path, mode: str) -> None:
    image, suffix = make_mode_image(mode, 37, 23, np.random.default_rng(0))
    path = save(image, tmp_path / f"picture{suffix}")
    with Image.open(path) as reopened:
        assert reopened.mode in MODES_READ_BACK[mode]
        if mode == "PT":
            assert "transparency" in reopened.info
    tensor = load_image(path, 32)
    check_network_input(tensor, 32)
    assert tensor.std() > 0.01  # noise in, noise out: not a blank image


def test_transparent_pixels_become_white(tmp_path: Path) -> None:
    pixels = np.zeros((16, 16, 4), dtype=np.uint8)  # black, fully transparent
    path = tmp_path / "clear.png"
    Image.fromarray(pixels, mode="RGBA").save(path)
    assert torch.all(load_image(path, 16) == 1.0)


def test_palette_transparency_becomes_white(tmp_path: Path) -> None:
    image = Image.new("P", (16, 16), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    image.paste(1, (0, 0, 8, 16))  # left half red, right half the transparent index 0
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)
    tensor = load_image(path, 16)
    assert torch.allclose(tensor[:, :, 12:], torch.ones(3, 16, 4))
    assert tensor[0, :, :4].min() > 0.9 and tensor[1, :, :4].max() < 0.1


def test_16_bit_image_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = (30000 + np.random.default_rng(1).integers(-500, 500, (40, 40))).astype(np.uint16)
    path = tmp_path / "sixteen.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as reopened:
        assert reopened.mode in ("I;16", "I")
    tensor = load_image(path, 32)
    check_network_input(tensor, 32)
    # 30000 of 65535 is about 0.46; clipping at 255 would give 1.0 everywhere.
    assert 0.35 < float(tensor.mean()) < 0.6


def test_float_image_in_unit_range_is_scaled(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    Image.fromarray(_gradient(32, 16, 1.0).astype(np.float32), mode="F").save(path)
    tensor = load_image(path, 16)
    assert 0.4 < float(tensor.mean()) < 0.6


def test_load_image_keeps_colours(tmp_path: Path) -> None:
    path = tmp_path / "red.png"
    Image.new("RGB", (20, 30), (255, 0, 0)).save(path)
    tensor = load_image(path, 16)
    assert torch.all(tensor[0] == 1.0) and torch.all(tensor[1:] == 0.0)
    uint8 = read_image_uint8(path, 16)
    assert uint8.dtype == torch.uint8 and uint8.shape == (3, 16, 16)


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    data = good.read_bytes()
    text = tmp_path / "notes.png"
    text.write_text("these are not the pixels you are looking for\n")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    folder = tmp_path / "folder.png"
    folder.mkdir()
    return {
        "text": text,
        "missing": tmp_path / "missing.png",
        "empty": empty,
        "truncated": truncated,
        "directory": folder,
    }


@pytest.mark.parametrize("kind", ["text", "missing", "empty", "truncated", "directory"])
def test_unreadable_files_raise_one_line_image_error(tmp_path: Path, kind: str) -> None:
    path = _bad_files(tmp_path)[kind]
    with pytest.raises(ImageError) as caught:
        load_image(path, 32)
    message = str(caught.value)
    assert "\n" not in message
    assert path.name in message


# --------------------------------------------------------------------------- hypothesis (issue 8)

PROPERTY_MODES = ["L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F", "CMYK"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mode=st.sampled_from(PROPERTY_MODES),
    width=st.integers(1, 300),
    height=st.integers(1, 300),
    size=st.sampled_from([16, 32, 48, 64, 80, 96, 112, 128]),
    seed=st.integers(0, 2**32 - 1),
)
def test_load_image_property(mode: str, width: int, height: int, size: int, seed: int) -> None:
    image, suffix = make_mode_image(mode, width, height, np.random.default_rng(seed))
    with tempfile.TemporaryDirectory() as folder:
        path = save(image, Path(folder) / f"image{suffix}")
        tensor = load_image(path, size)
    check_network_input(tensor, size)


# --------------------------------------------------------------------------- malaria


def malaria_files(cells: Path) -> dict[str, list[Path]]:
    return {name: sorted((cells / name).glob("*.png")) for name in ("Parasitized", "Uninfected")}


def test_patient_ids_and_split_hash() -> None:
    assert patient_id("C100P61ThinF_IMG_20150918_144104_cell_162.png") == "C100"
    assert patient_id("C1_thinF_IMG_20150604_104722_cell_9.png") == "C1"
    assert patient_id("C47P8thin_Original_Motic_cell_3.png") == patient_id("C47P8thinOriginalOlympusCX21_cell_1.png")
    assert split_of_group("C6") == "test" and split_of_group("C9") == "val" and split_of_group("C1") == "train"
    counts = {s: sum(split_of_group(f"C{n}") == s for n in range(1, 2001)) for s in ("train", "val", "test")}
    assert 1450 < counts["train"] < 1750 and 120 < counts["val"] < 280 and 120 < counts["test"] < 280


def _patient_number(filename: str) -> int:
    """The n of the synthetic names C{n}P{m}ThinF_IMG_..., read independently of model_data."""
    return int(filename[1 : filename.index("P")])


def test_malaria_splits(malaria_root: Path) -> None:
    files = malaria_files(malaria_root / "cell_images")
    sets = {split: MalariaSet(malaria_root, split, size=16) for split in ("train", "val", "test")}
    patients = {}
    for split, dataset in sets.items():
        assert len(dataset) > 0
        assert set(dataset.labels) == {0, 1}, split
        patients[split] = {_patient_number(path.name) for path, _ in dataset.samples}
        for path, label in dataset.samples:
            assert path.suffix == ".png"
            assert label == (1 if path.parent.name == "Parasitized" else 0)
        # Whole patients, and exactly the ones the crc32 hash of "C<n>" assigns to this split.
        assert patients[split] == MALARIA_SPLIT_PATIENTS[split], split
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    # Every image file is in exactly one split; Thumbs.db in none.
    everything = sorted(path for dataset in sets.values() for path, _ in dataset.samples)
    assert everything == sorted(files["Parasitized"] + files["Uninfected"])
    assert all(path.name != "Thumbs.db" for path in everything)
    assert (malaria_root / "cell_images" / "Parasitized" / "Thumbs.db").is_file()
    assert sets["train"].class_names == ["Uninfected", "Parasitized"]
    assert len(sets["train"]) > len(sets["val"]) and len(sets["train"]) > len(sets["test"])


def test_malaria_item_is_uint8_image(malaria_root: Path) -> None:
    dataset = MalariaSet(malaria_root, "val", size=32)
    image, label = dataset[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    assert label in (0, 1)


def test_malaria_root_variants(malaria_root: Path, tmp_path: Path) -> None:
    expected = [(p.name, label) for p, label in MalariaSet(malaria_root, "test").samples]
    cells = malaria_root / "cell_images"
    assert [(p.name, label) for p, label in MalariaSet(cells, "test").samples] == expected
    # The Kaggle zip nests the folder: cell_images/cell_images/{Parasitized,Uninfected}.
    nested = tmp_path / "download" / "cell_images" / "cell_images"
    shutil.copytree(cells, nested)
    for root in (tmp_path / "download", tmp_path / "download" / "cell_images", nested):
        assert [(p.name, label) for p, label in MalariaSet(root, "test").samples] == expected


def test_malaria_max_samples_per_class(malaria_root: Path) -> None:
    full = MalariaSet(malaria_root, "train")
    first = MalariaSet(malaria_root, "train", max_samples_per_class=5, seed=1)
    again = MalariaSet(malaria_root, "train", max_samples_per_class=5, seed=1)
    other = MalariaSet(malaria_root, "train", max_samples_per_class=5, seed=2)
    assert first.samples == again.samples
    assert first.samples != other.samples
    for subset in (first, other):
        assert sorted(subset.labels) == [0] * 5 + [1] * 5
        assert set(subset.samples) <= set(full.samples)
    assert len(MalariaSet(malaria_root, "train", max_samples_per_class=10_000)) == len(full)


def test_malaria_wrong_layout(tmp_path: Path) -> None:
    (tmp_path / "cell_images" / "Parasitized").mkdir(parents=True)  # Uninfected/ is missing
    with pytest.raises(DatasetError) as caught:
        MalariaSet(tmp_path, "train")
    assert "Uninfected" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(DatasetError):
        make_dataset("malaria", tmp_path / "nowhere", "train")
    with pytest.raises(ValueError):
        MalariaSet(tmp_path, "training")


def test_malaria_empty_split_is_empty_and_make_dataset_names_split_all(tmp_path: Path) -> None:
    build_malaria(tmp_path, patients=[1, 2, 3])  # all three are train patients
    assert len(MalariaSet(tmp_path, "train")) > 0
    assert len(MalariaSet(tmp_path, "test")) == 0
    assert len(MalariaSet(tmp_path, "all")) == len(MalariaSet(tmp_path, "train"))
    with pytest.raises(DatasetError, match="test split") as caught:
        make_dataset("malaria", tmp_path, "test", empty_hint="; pass --split all")
    assert "--split all" in str(caught.value) and "\n" not in str(caught.value)


def test_split_all_is_every_image_once(malaria_root: Path) -> None:
    every = MalariaSet(malaria_root, "all")
    parts = [MalariaSet(malaria_root, split) for split in ("train", "val", "test")]
    assert sorted(every.samples) == sorted(s for part in parts for s in part.samples)


# --------------------------------------------------------------------------- small data sets


def build_cells(root: Path, patients_per_class: int, cells: int) -> Path:
    """`patients_per_class` patients of each class (no patient in both), `cells` cells each; returns the folder."""
    rng = np.random.default_rng(5)
    for offset, name in ((0, "Parasitized"), (100, "Uninfected")):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for patient in range(1, patients_per_class + 1):
            for k in range(cells):
                cell_image(rng, name == "Parasitized", 40).save(
                    folder / f"C{patient + offset}P{patient}ThinF_IMG_20150918_144104_cell_{k}.png"
                )
    return root


def test_training_splits_of_three_patients_per_class_train_with_a_note(tmp_path: Path) -> None:
    root = build_cells(tmp_path, 3, 10)
    splits = training_splits("malaria", root)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 60
    assert splits.train.counts()[0] > 0 and splits.train.counts()[1] > 0
    assert splits.notes and all(note.startswith("note:") and "\n" not in note for note in splits.notes)
    assert any("--split-by file" in note for note in splits.notes)
    # By file, every split gets images, at the price of one patient's cells in two splits.
    by_file = training_splits("malaria", root, split_by="file")
    assert len(by_file.val) > 0 and len(by_file.test) > 0
    groups = {split: {patient_id(p.name) for p, _ in getattr(by_file, split).samples} for split in SPLITS}
    assert shared_identities(groups)


def test_training_splits_put_everything_in_training_when_a_class_has_none(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("Parasitized", "Uninfected"):
        (tmp_path / name).mkdir()
    # C6 is a test patient (see conftest): its cells alone leave training without Uninfected cells.
    for k in range(3):
        cell_image(rng, True, 40).save(tmp_path / "Parasitized" / f"C1P1ThinF_IMG_1_cell_{k}.png")
        cell_image(rng, False, 40).save(tmp_path / "Uninfected" / f"C6P6ThinF_IMG_1_cell_{k}.png")
    splits = training_splits("malaria", tmp_path)
    assert splits.train.counts() == [3, 3]
    assert len(splits.val) == 0 and len(splits.test) == 0
    assert any("none held out" in note for note in splits.notes)


def test_training_splits_refuse_fewer_than_two_images_per_class(tmp_path: Path) -> None:
    build_cells(tmp_path, 1, 1)
    with pytest.raises(DatasetError, match="at least 2 per class") as caught:
        training_splits("malaria", tmp_path)
    assert "\n" not in str(caught.value)


def test_training_splits_of_a_gender_folder_without_validation_and_test(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for label, name in enumerate(GENDER_CLASSES):
        folder = tmp_path / "Dataset" / "Train" / name
        folder.mkdir(parents=True)
        for i in range(4):
            face_image(rng, label).save(folder / f"{i}.jpg")
    splits = training_splits("gender", tmp_path)
    assert len(splits.train) == 8 and len(splits.val) == 0 and len(splits.test) == 0
    assert len(splits.notes) == 2 and all("Validation" in note for note in splits.notes)
    assert splits.train.preprocess == "center-crop"


def test_balanced_sample_is_seeded_and_even(malaria_root: Path) -> None:
    every = MalariaSet(malaria_root, "all")
    sample = balanced_sample(every.samples, 10, seed=1)
    assert sample == balanced_sample(every.samples, 10, seed=1)
    assert sample != balanced_sample(every.samples, 10, seed=2)
    assert sorted(label for _, label in sample) == [0] * 5 + [1] * 5
    assert set(sample) <= set(every.samples) and sample == [s for s in every.samples if s in sample]
    # A class with too few images gives all it has; the other fills the rest.
    lopsided = [s for s in every.samples if s[1] == 0][:2] + [s for s in every.samples if s[1] == 1]
    assert sorted(label for _, label in balanced_sample(lopsided, 10, seed=0)) == [0] * 2 + [1] * 8


# --------------------------------------------------------------------------- identities


def test_celeba_identity_from_file_names() -> None:
    assert celeba_identity("10000_028381.jpg") == "10000"
    assert celeba_identity("train_female_000.jpg") is None
    assert celeba_identity("000001.jpg") is None


def test_identity_check_flags_a_person_in_two_splits(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    faces = {"Train": ["1_000001.jpg", "2_000002.jpg"], "Validation": ["3_000003.jpg"], "Test": ["1_000009.jpg"]}
    for split, names in faces.items():
        for name in GENDER_CLASSES:
            folder = tmp_path / "Dataset" / split / name
            folder.mkdir(parents=True)
            for file in names:
                face_image(rng, 0).save(folder / file)
    splits = {s: GenderSet(tmp_path, s) for s in SPLITS}
    by_split = identities_by_split(splits, GenderSet.group)
    assert by_split["train"] == {"1", "2"} and by_split["test"] == {"1"}
    assert shared_identities(by_split) == {"1": ["train", "test"]}
    # A manifest overrides the names: here it says the test face is of person 7.
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,celeba_identity\nDataset/Test/Female/1_000009.jpg,7\nDataset/Test/Male/1_000009.jpg,7\n")
    assert find_identity_manifest(tmp_path / "Dataset") == manifest
    known = read_identities(manifest)
    assert shared_identities(identities_by_split(splits, GenderSet.group, known)) == {}


def test_center_crop_keeps_the_middle_square(tmp_path: Path) -> None:
    pixels = np.zeros((60, 40, 3), dtype=np.uint8)
    pixels[:10] = 255  # a white band at the top, outside the centred 40 x 40 square
    pixels[10:50] = (0, 200, 0)
    Image.fromarray(pixels).save(tmp_path / "tall.png")
    cropped = read_image_uint8(tmp_path / "tall.png", 16, "center-crop")
    assert cropped.shape == (3, 16, 16) and int(cropped[0].max()) == 0 and int(cropped[1].min()) == 200
    squashed = read_image_uint8(tmp_path / "tall.png", 16, "squash")
    assert int(squashed[0, 0].max()) == 255  # the band is still there when squashed
    assert model_images.original_image(tmp_path / "tall.png", "center-crop").shape == (40, 40, 3)
    with pytest.raises(ValueError):
        read_image_uint8(tmp_path / "tall.png", 16, "stretch")


# --------------------------------------------------------------------------- gender and folder


@pytest.mark.parametrize("below", ["", "Dataset"])
def test_gender_set(gender_root: Path, below: str) -> None:
    root = gender_root / below if below else gender_root
    for split, folder in (("train", "Train"), ("val", "Validation"), ("test", "Test")):
        dataset = GenderSet(root, split)
        assert dataset.class_names == ["Female", "Male"]
        assert len(dataset) == 2 * GENDER_SPLITS[folder]
        for path, label in dataset.samples:
            assert path.parent.parent.name == folder
            assert label == GENDER_CLASSES.index(path.parent.name)
        assert sorted(dataset.labels) == [0] * GENDER_SPLITS[folder] + [1] * GENDER_SPLITS[folder]


def test_gender_wrong_layout(tmp_path: Path) -> None:
    (tmp_path / "Dataset" / "Train" / "Female").mkdir(parents=True)
    with pytest.raises(DatasetError, match="Male"):
        GenderSet(tmp_path, "train")


def test_folder_set_three_classes(folder_root: Path) -> None:
    sets = {split: FolderSet(folder_root, split) for split in ("train", "val", "test")}
    all_files = sorted(folder_root.glob("*/*.png"))
    seen = sorted(path for dataset in sets.values() for path, _ in dataset.samples)
    assert seen == all_files
    for dataset in sets.values():
        assert dataset.class_names == list(FOLDER_CLASSES)
        for path, label in dataset.samples:
            assert label == FOLDER_CLASSES.index(path.parent.name)
    assert set(sets["train"].labels) == {0, 1, 2}


def test_folder_set_presplit(tmp_path: Path) -> None:
    for split in ("train", "val", "test"):
        for name in ("b", "a"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / name / f"{split}.png")
    dataset = FolderSet(tmp_path, "val")
    assert dataset.class_names == ["a", "b"]
    assert [(p.parent.parent.name, p.parent.name, label) for p, label in dataset.samples] == [
        ("val", "a", 0),
        ("val", "b", 1),
    ]


def test_folder_set_needs_two_classes(tmp_path: Path) -> None:
    (tmp_path / "only").mkdir()
    with pytest.raises(DatasetError, match="two class"):
        FolderSet(tmp_path, "train")


# --------------------------------------------------------------------------- manifest


def test_write_test_manifest_malaria(malaria_root: Path, tmp_path: Path) -> None:
    test_set = MalariaSet(malaria_root, "test")
    path = write_test_manifest(test_set, tmp_path / "sub" / "malaria_testing_filenames_last.json")
    content = json.loads(path.read_text())
    assert set(content) == {"InfectedFilenames", "UninfectedFilenames"}
    assert content["InfectedFilenames"] == [p.name for p, label in test_set.samples if label == 1]
    assert content["UninfectedFilenames"] == [p.name for p, label in test_set.samples if label == 0]
    assert content["InfectedFilenames"] and content["UninfectedFilenames"]


def test_write_test_manifest_folder(folder_root: Path, tmp_path: Path) -> None:
    content = json.loads(write_test_manifest(FolderSet(folder_root, "test"), tmp_path / "m.json").read_text())
    assert set(content) == {f"{name}Filenames" for name in FOLDER_CLASSES}


# --------------------------------------------------------------------------- cache


def test_cache_fill_matches_direct_decoding(own_malaria: Path) -> None:
    dataset = MalariaSet(own_malaria, "train", size=16)
    direct = torch.stack([read_image_uint8(path, 16) for path, _ in dataset.samples])
    serial = DatasetCache(dataset).fill(workers=0)
    parallel = DatasetCache(dataset).fill(workers=2)
    assert torch.equal(serial.images, direct)
    assert torch.equal(parallel.images, direct)
    assert bool(serial.filled.all()) and bool(parallel.filled.all())
    assert serial.labels.tolist() == dataset.labels

    # After fill, no item is decoded again: the files can go and everything still reads.
    for path, _ in dataset.samples:
        path.unlink()
    for cache in (serial, parallel):
        for index in range(len(cache)):
            image, label = cache[index]
            assert torch.equal(image, direct[index])
            assert int(label) == dataset.labels[index]


def test_cache_never_calls_the_dataset_after_fill(own_malaria: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = MalariaSet(own_malaria, "val", size=16)
    cache = DatasetCache(dataset).fill(workers=0)

    def refuse(*args, **kwargs):
        raise AssertionError("the cache decoded an image again")

    monkeypatch.setattr(model_datasets.ImageListSet, "__getitem__", refuse)
    monkeypatch.setattr(model_datasets, "read_image_uint8", refuse)
    images = [cache[i][0] for i in range(len(cache))]
    assert len(images) == len(dataset)
    assert cache.fill(workers=0) is cache  # nothing missing, nothing decoded


def test_cache_decodes_lazily_without_fill(own_malaria: Path) -> None:
    dataset = MalariaSet(own_malaria, "val", size=16)
    cache = DatasetCache(dataset)
    image, _ = cache[1]
    assert torch.equal(image, read_image_uint8(dataset.samples[1][0], 16))
    assert cache.filled.tolist() == [i == 1 for i in range(len(dataset))]


@pytest.mark.parametrize("workers", [0, 2])
def test_cache_fill_names_a_corrupt_file(own_malaria: Path, workers: int) -> None:
    dataset = MalariaSet(own_malaria, "train", size=16)
    broken = dataset.samples[len(dataset) // 2][0]
    broken.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ImageError) as caught:
        DatasetCache(dataset).fill(workers=workers)
    assert broken.name in str(caught.value)
    assert "\n" not in str(caught.value)
