"""Image loading and the data sets: NIH malaria cells, CelebA genders, any class folder.

Everything here is plain file and tensor work: no prompts, no globals, no device.
Images come out as uint8 (3, size, size) tensors from the data sets (cheap to
cache) and as float tensors in [0, 1] from `load_image` (what the networks take).
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import functional as TF
from tqdm import tqdm

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
SPLITS = ("train", "val", "test")
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


def read_image_uint8(path: str | Path, size: int = 128) -> torch.Tensor:
    """Decode any image file to a uint8 tensor (3, size, size), antialiased resize."""
    path = Path(path)
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
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file (or a format Pillow cannot read)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageError(f"{path}: cannot read image ({error})") from None
    tensor = TF.pil_to_tensor(rgb)
    return TF.resize(tensor, [size, size], antialias=True)


def load_image(path: str | Path, size: int = 128) -> torch.Tensor:
    """Load any image as the networks' input: float (3, size, size) in [0, 1]."""
    return read_image_uint8(path, size).float().div_(255.0)


def original_image(path: str | Path) -> np.ndarray:
    """The image at its own resolution as an RGB uint8 array (H, W, 3), for drawing."""
    try:
        with Image.open(path) as image:
            return np.asarray(_to_rgb(image))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageError(f"{path}: cannot read image ({error})") from None


def list_images(folder: str | Path) -> list[Path]:
    """Image files in a folder (not recursive), sorted; other files (Thumbs.db...) skipped."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


# --------------------------------------------------------------------------- data sets


class ImageListSet(Dataset):
    """(path, label) pairs decoded on access into (uint8 image, label)."""

    def __init__(self, samples: Sequence[tuple[Path, int]], class_names: Sequence[str], size: int = 128) -> None:
        self.samples = list(samples)
        self.class_names = list(class_names)
        self.size = size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return read_image_uint8(path, self.size), label

    @property
    def labels(self) -> list[int]:
        """Label of every sample, in order."""
        return [label for _, label in self.samples]


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


def patient_id(filename: str) -> str:
    """The patient (slide) an NIH cell image belongs to, from its file name."""
    match = _PATIENT.match(filename)
    if match:
        return match.group(1)
    return filename.split("_IMG", 1)[0] if "_IMG" in filename else Path(filename).stem


def split_of_group(group: str) -> str:
    """'train', 'val' or 'test' for a patient (or file) id: 80/10/10 by a stable hash.

    A hash of the id alone (not a shuffle of whatever files are present) keeps a
    patient in the same split whatever subset of the data set is on disk, so a
    model trained on part of the data never saw any test patient of the full set.
    """
    bucket = zlib.crc32(group.encode("utf-8")) % 10
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")


class MalariaSet(ImageListSet):
    """NIH malaria cells, Uninfected (0) / Parasitized (1), split by patient."""

    CLASSES = ("Uninfected", "Parasitized")

    def __init__(
        self, root: str | Path, split: str, max_samples_per_class: int | None = None, seed: int = 0, size: int = 128
    ) -> None:
        _check_split(split)
        folder = _find_class_root(Path(root), self.CLASSES, ["cell_images", "cell_images/cell_images"])
        samples = [
            (path, label)
            for label, name in enumerate(self.CLASSES)
            for path in list_images(folder / name)
            if split_of_group(patient_id(path.name)) == split
        ]
        if not samples:
            raise DatasetError(f"{folder}: no images of the {split} split in Parasitized/ or Uninfected/")
        super().__init__(_subset_per_class(samples, max_samples_per_class, seed), self.CLASSES, size)


class GenderSet(ImageListSet):
    """CelebA faces in the Kaggle layout Dataset/{Train,Validation,Test}/{Female,Male}."""

    CLASSES = ("Female", "Male")
    FOLDERS = {"train": "Train", "val": "Validation", "test": "Test"}

    def __init__(
        self, root: str | Path, split: str, max_samples_per_class: int | None = None, seed: int = 0, size: int = 128
    ) -> None:
        _check_split(split)
        root = Path(root)
        base = root / "Dataset" if (root / "Dataset").is_dir() else root
        folder = base / self.FOLDERS[split]
        if not all((folder / name).is_dir() for name in self.CLASSES):
            raise DatasetError(f"{root}: expected Dataset/{self.FOLDERS[split]}/Female/ and .../Male/ in it")
        samples = [(path, label) for label, name in enumerate(self.CLASSES) for path in list_images(folder / name)]
        if not samples:
            raise DatasetError(f"{folder}: no images in Female/ or Male/")
        super().__init__(_subset_per_class(samples, max_samples_per_class, seed), self.CLASSES, size)


class FolderSet(ImageListSet):
    """Any folder of class sub-folders (classes sorted by name); any number of classes.

    If the folder has train/, val/ and test/ sub-folders they are used as the splits;
    otherwise every file goes to a split by a stable hash of its name (80/10/10).
    """

    def __init__(
        self, root: str | Path, split: str, max_samples_per_class: int | None = None, seed: int = 0, size: int = 128
    ) -> None:
        _check_split(split)
        root = Path(root)
        presplit = all((root / name).is_dir() for name in SPLITS)
        folder = root / split if presplit else root
        if not folder.is_dir():
            raise DatasetError(f"{root}: no such folder")
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if len(classes) < 2:
            raise DatasetError(f"{folder}: expected at least two class sub-folders, found {len(classes)}")
        samples = [
            (path, label)
            for label, name in enumerate(classes)
            for path in list_images(folder / name)
            if presplit or split_of_group(path.name) == split
        ]
        if not samples:
            raise DatasetError(f"{folder}: no images of the {split} split in its class folders")
        super().__init__(_subset_per_class(samples, max_samples_per_class, seed), classes, size)


DATASETS: dict[str, Callable[..., ImageListSet]] = {"malaria": MalariaSet, "gender": GenderSet, "folder": FolderSet}


def make_dataset(name: str, root: str | Path, split: str, **kwargs: object) -> ImageListSet:
    """One split of the named data set ('malaria', 'gender' or 'folder')."""
    if not Path(root).is_dir():
        raise DatasetError(f"{root}: no such folder")
    return DATASETS[name](root, split, **kwargs)


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
