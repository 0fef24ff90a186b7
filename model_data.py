"""Image loading and the data sets: NIH malaria cells, CelebA genders, any class folder.

Everything here is plain file and tensor work: no prompts, no globals, no device.
Images come out as uint8 (3, size, size) tensors from the data sets (cheap to
cache) and as float tensors in [0, 1] from `load_image` (what the networks take).
Decoding and resizing are Pillow's alone (no torchvision), so that the visualizer,
which needs nothing else from this module, starts without importing torchvision.
"""

from __future__ import annotations

import csv
import json
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
SPLITS = ("train", "val", "test")
# "all" is every image of a data set whatever its split: a folder of new cells to score.
SPLIT_CHOICES = (*SPLITS, "all")
# How a picture becomes the square network input: squash the whole picture (cells,
# which are nearly square), or cut the largest centred square first (aligned faces,
# 178 x 218, whose proportions squashing would distort). A checkpoint records which.
PREPROCESS = ("squash", "center-crop")
# Larger than any photo a user would explain here; stops decompression bombs early.
MAX_PIXELS = 64_000_000
MAX_FILE_BYTES = 256 * 1024 * 1024


class ImageError(Exception):
    """A file that cannot be used as an image; its message is one line for the user."""


class DatasetError(Exception):
    """A data-set folder that is missing or laid out wrongly; one line for the user."""


# --------------------------------------------------------------------------- images


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB, scaling high-bit-depth images instead of clipping them."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # PIL's own convert() clips 16-bit values at 255, which turns most
        # 16-bit pictures white; scale by the depth the values actually use.
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        if image.mode == "F" and values.max(initial=0) <= 1.0:
            peak = 1.0
        gray = np.clip(values / peak * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become white, as a viewer shows them, not black.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _center_square(image: Image.Image) -> Image.Image:
    """The largest centred square of a picture."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def _check_preprocess(preprocess: str) -> None:
    if preprocess not in PREPROCESS:
        raise ValueError(f"preprocess must be one of {PREPROCESS}, not {preprocess!r}")


def _open_rgb(path: Path) -> Image.Image:
    """Decode a file to an 8-bit RGB PIL image, with one-line errors for anything unusable."""
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ImageError(f"{path}: file is larger than {MAX_FILE_BYTES // 2**20} MB, not loading it")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageError(f"{path}: {width}x{height} pixels is too large an image")
            rgb = _to_rgb(image)
            rgb.load()
            return rgb
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file (or a format Pillow cannot read)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageError(f"{path}: cannot read image ({error})") from None


def read_image_uint8(path: str | Path, size: int = 128, preprocess: str = "squash") -> torch.Tensor:
    """Decode any image file to a uint8 tensor (3, size, size): optional centre crop, antialiased resize."""
    _check_preprocess(preprocess)
    rgb = _open_rgb(Path(path))
    if preprocess == "center-crop":
        rgb = _center_square(rgb)
    # Pillow's bilinear filter widens with the scale factor (antialiasing), as torchvision's antialias=True does.
    resized = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(resized, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def load_image(path: str | Path, size: int = 128, preprocess: str = "squash") -> torch.Tensor:
    """Load any image as the networks' input: float (3, size, size) in [0, 1]."""
    return read_image_uint8(path, size, preprocess).float().div_(255.0)


def original_image(path: str | Path, preprocess: str = "squash") -> np.ndarray:
    """The picture the network saw, at its own resolution, as RGB uint8 (H, W, 3), for drawing.

    With 'center-crop' that is the centred square (the rest never reached the network).
    """
    _check_preprocess(preprocess)
    rgb = _open_rgb(Path(path))
    return np.asarray(_center_square(rgb) if preprocess == "center-crop" else rgb)


def list_images(folder: str | Path) -> list[Path]:
    """Image files in a folder (not recursive), sorted; other files (Thumbs.db...) skipped."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


# --------------------------------------------------------------------------- data sets


class ImageListSet(Dataset):
    """(path, label) pairs decoded on access into (uint8 image, label)."""

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        class_names: Sequence[str],
        size: int = 128,
        preprocess: str = "squash",
    ) -> None:
        _check_preprocess(preprocess)
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
# The number after 'C' identifies the patient: C47P8thin_Original_Motic and
# C47P8thinOriginalOlympusCX21 are one patient under two microscopes.
_PATIENT = re.compile(r"^(C\d+)")
# The shared CelebA faces are named <identity>_<celeba image>.jpg, e.g. 10000_028381.jpg.
_CELEBA_IDENTITY = re.compile(r"^(\d+)_\d+\.[A-Za-z]+$")
# How patient-grouped data sets may be split: by patient (no leak) or by file (a leak, for tiny sets).
SPLIT_BY = ("group", "file")


def patient_id(filename: str) -> str:
    """The patient (slide) an NIH cell image belongs to, from its file name."""
    match = _PATIENT.match(filename)
    if match:
        return match.group(1)
    return filename.split("_IMG", 1)[0] if "_IMG" in filename else Path(filename).stem


def celeba_identity(filename: str) -> str | None:
    """The CelebA identity in a file name of the form <identity>_<image>.jpg, else None."""
    match = _CELEBA_IDENTITY.match(filename)
    return match.group(1) if match else None


def split_of_group(group: str) -> str:
    """'train', 'val' or 'test' for a patient (or file) id: 80/10/10 by a stable hash.

    A hash of the id alone (not a shuffle of whatever files are present) keeps a
    patient in the same split whatever subset of the data set is on disk, so a
    model trained on part of the data never saw any test patient of the full set.
    """
    bucket = zlib.crc32(group.encode("utf-8")) % 10
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


def _check_split(split: str, split_by: str = "group") -> None:
    if split not in SPLIT_CHOICES:
        raise ValueError(f"split must be one of {SPLIT_CHOICES}, not {split!r}")
    if split_by not in SPLIT_BY:
        raise ValueError(f"split_by must be one of {SPLIT_BY}, not {split_by!r}")


def _in_split(group: str, split: str) -> bool:
    return split == "all" or split_of_group(group) == split


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
        _check_split(split, split_by)
        folder = _find_class_root(Path(root), self.CLASSES, ["cell_images", "cell_images/cell_images"])
        samples = [
            (path, label)
            for label, name in enumerate(self.CLASSES)
            for path in list_images(folder / name)
            if _in_split(path.name if split_by == "file" else patient_id(path.name), split)
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
        _check_split(split, split_by)
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


class FolderSet(ImageListSet):
    """Any folder of class sub-folders (classes sorted by name); any number of classes.

    If the folder has train/, val/ and test/ sub-folders they are used as the splits;
    otherwise every file goes to a split by a stable hash of its name (80/10/10), or of
    its patient where the name is an NIH cell's (so a folder of cells is split by patient).
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
    ) -> None:
        _check_split(split, split_by)
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"{root}: no such folder")
        presplit = all((root / name).is_dir() for name in SPLITS)
        folders = [root / one for one in (SPLITS if split == "all" else (split,))] if presplit else [root]
        first = folders[0] if presplit else root
        classes = sorted(p.name for p in first.iterdir() if p.is_dir() and not p.name.startswith("."))
        if presplit and split != "train":
            # The classes are the training folder's, so that labels mean the same in every split.
            train = root / "train"
            classes = sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
        if len(classes) < 2:
            raise DatasetError(f"{first}: expected at least two class sub-folders, found {len(classes)}")
        samples = [
            (path, label)
            for folder in folders
            for label, name in enumerate(classes)
            if (folder / name).is_dir()
            for path in list_images(folder / name)
            if presplit or _in_split(path.name if split_by == "file" else self.split_key(path.name), split)
        ]
        self.folder = root
        super().__init__(_subset_per_class(samples, max_samples_per_class, seed), classes, size, preprocess)

    @staticmethod
    def split_key(filename: str) -> str:
        """What a file's split is hashed from: its patient for an NIH cell's name, else the name itself."""
        return patient_id(filename) if _PATIENT.match(filename) else filename

    @staticmethod
    def group(filename: str) -> str | None:
        """The patient of an NIH-named cell, else unknown."""
        return patient_id(filename) if _PATIENT.match(filename) else None


DATASETS: dict[str, Callable[..., ImageListSet]] = {"malaria": MalariaSet, "gender": GenderSet, "folder": FolderSet}
# What each data set's preprocessing is unless a flag says otherwise.
DEFAULT_PREPROCESS = {"malaria": "squash", "gender": "center-crop", "folder": "squash"}


def make_dataset(name: str, root: str | Path, split: str, empty_hint: str = "", **kwargs: object) -> ImageListSet:
    """One split of the named data set ('malaria', 'gender' or 'folder'); an empty split is an error."""
    if not Path(root).is_dir():
        raise DatasetError(f"{root}: no such folder")
    dataset = DATASETS[name](root, split, **kwargs)
    if not dataset.samples:
        where = getattr(dataset, "folder", root)
        raise DatasetError(f"{where}: no images of the {split} split in its class folders{empty_hint}")
    return dataset


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
) -> TrainingSplits:
    """Train, validation and test split of a data set, for small folders too.

    Rules: every class needs MIN_PER_CLASS images in the whole folder (else DatasetError);
    if the split leaves a class without training images, everything trains and nothing is
    held out; an empty validation or test split is allowed. Each such case adds a note.
    """
    if not Path(root).is_dir():
        raise DatasetError(f"{root}: no such folder")
    options: dict = {"size": size, "preprocess": preprocess or DEFAULT_PREPROCESS[name], "split_by": split_by}
    build = DATASETS[name]
    every = build(root, "all", **options)
    where = getattr(every, "folder", root)
    for label, count in enumerate(every.counts()):
        if count < MIN_PER_CLASS:
            raise DatasetError(
                f"{where}: {every.class_names[label]} has {count} usable image(s); "
                f"training needs at least {MIN_PER_CLASS} per class"
            )
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


# --------------------------------------------------------------------------- identities


def read_identities(path: str | Path) -> dict[str, str]:
    """File name -> identity (person or patient) from a CSV manifest with a path/file column and an identity column.

    Accepts the shared CelebA manifest (path, celeba_identity) and any CSV with columns
    named path, file, filename or image and identity, celeba_identity, person or patient.
    """
    path = Path(path)
    try:
        with path.open(newline="") as stream:
            rows = list(csv.DictReader(stream))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(f"{path}: cannot read the identity manifest ({error})") from None
    columns = rows[0].keys() if rows else []
    file_column = next((c for c in ("path", "file", "filename", "image") if c in columns), None)
    id_column = next((c for c in ("identity", "celeba_identity", "person", "patient") if c in columns), None)
    if file_column is None or id_column is None:
        raise DatasetError(f"{path}: expected a path (or file) column and an identity column in the manifest")
    return {Path(row[file_column]).name: str(row[id_column]) for row in rows if row.get(file_column)}


def find_identity_manifest(root: str | Path) -> Path | None:
    """A manifest.csv with identities beside the data (in root, or beside its Dataset/ folder), if any."""
    root = Path(root)
    for candidate in (root / "manifest.csv", root.parent / "manifest.csv"):
        if candidate.is_file():
            try:
                read_identities(candidate)
            except DatasetError:
                continue
            return candidate
    return None


def identities_by_split(
    splits: dict[str, ImageListSet], group: Callable[[str], str | None], known: dict[str, str] | None = None
) -> dict[str, set[str]]:
    """Per split, the identities (people, patients) of its files; files of unknown identity are left out."""
    found: dict[str, set[str]] = {}
    for split, dataset in splits.items():
        ids = set()
        for path, _ in dataset.samples:
            identity = (known or {}).get(path.name) or group(path.name)
            if identity is not None:
                ids.add(identity)
        found[split] = ids
    return found


def shared_identities(by_split: dict[str, set[str]]) -> dict[str, list[str]]:
    """Identities that sit in two or more splits -> those splits (empty when the splits are disjoint)."""
    where: dict[str, list[str]] = {}
    for split, ids in by_split.items():
        for identity in ids:
            where.setdefault(identity, []).append(split)
    return {identity: splits for identity, splits in sorted(where.items()) if len(splits) > 1}


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


# --------------------------------------------------------------------------- cache


class DatasetCache(Dataset):
    """Keeps every decoded, resized image as a uint8 tensor in CPU memory.

    After `fill()` (or one pass in the main process) no epoch decodes a file again.
    DataLoader worker processes each hold a private copy of a dataset, so items they
    cache would be lost; `fill()` therefore lets workers only *decode* and hands the
    tensors back to the main process, which stores them in one (N, 3, S, S) block.
    Training then reads the cache with no workers at all, which costs only indexing.
    """

    def __init__(self, dataset: ImageListSet) -> None:
        self.dataset = dataset
        self.class_names = dataset.class_names
        self.size = dataset.size
        self.images = torch.zeros((len(dataset), 3, dataset.size, dataset.size), dtype=torch.uint8)
        self.labels = torch.tensor(dataset.labels, dtype=torch.long)
        self.filled = torch.zeros(len(dataset), dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.filled[index]:
            self.images[index] = self.dataset[index][0]
            self.filled[index] = True
        return self.images[index], self.labels[index]

    def fill(self, workers: int = 0, desc: str = "decoding", progress: bool = True) -> DatasetCache:
        """Decode every missing image now (in parallel with workers > 0), with a progress bar if `progress`."""
        missing = torch.nonzero(~self.filled).flatten().tolist()
        if not missing:
            return self
        loader = DataLoader(_Decoder(self.dataset, missing), batch_size=64, num_workers=workers)
        position = 0
        with tqdm(total=len(missing), desc=desc, unit="img", leave=False, disable=not progress) as bar:
            for images, problems in loader:
                # A worker's exception would reach us as a multi-line traceback; the
                # decoder returns the one-line message instead and we raise it here.
                problem = next((text for text in problems if text), None)
                if problem:
                    raise ImageError(problem)
                chunk = missing[position : position + len(images)]
                self.images[chunk] = images
                self.filled[chunk] = True
                position += len(images)
                bar.update(len(images))
        return self


class _Decoder(Dataset):
    """Decodes chosen items of a data set, returning (image, error text) instead of raising."""

    def __init__(self, dataset: ImageListSet, indices: list[int]) -> None:
        self.dataset = dataset
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, str]:
        try:
            return self.dataset[self.indices[position]][0], ""
        except ImageError as error:
            size = self.dataset.size
            return torch.zeros((3, size, size), dtype=torch.uint8), str(error)
