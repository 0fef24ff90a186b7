"""Who a picture belongs to (a patient, a person), and which split that puts it in.

The malaria split is by patient: an NIH file name starts with its slide/patient id, and each
patient goes to train, validation or test (80/10/10) by a stable hash of that id. People in
faces come from a manifest beside the data, an --identities CSV, or the file names.
"""

from __future__ import annotations

import csv
import re
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wtl.data.registry import SPLIT_BY, SPLIT_CHOICES
from wtl.errors import DatasetError

# NIH cell names start with the slide id, e.g. C100P61ThinF_IMG_..., C1_thinF_IMG_...
# The number after 'C' identifies the patient: C47P8thin_Original_Motic and
# C47P8thinOriginalOlympusCX21 are one patient under two microscopes.
_PATIENT = re.compile(r"^(C\d+)")
# The shared CelebA faces are named <identity>_<celeba image>.jpg, e.g. 10000_028381.jpg.
_CELEBA_IDENTITY = re.compile(r"^(\d+)_\d+\.[A-Za-z]+$")


def is_nih_name(filename: str) -> bool:
    """True for a file named as the NIH cells are (C<number>...): its patient can be read off."""
    return _PATIENT.match(filename) is not None


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


def check_split(split: str, split_by: str = "group") -> None:
    if split not in SPLIT_CHOICES:
        raise ValueError(f"split must be one of {SPLIT_CHOICES}, not {split!r}")
    if split_by not in SPLIT_BY:
        raise ValueError(f"split_by must be one of {SPLIT_BY}, not {split_by!r}")


def in_split(group: str, split: str) -> bool:
    return split == "all" or split_of_group(group) == split


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
    splits: dict[str, Any], group: Callable[[str], str | None], known: dict[str, str] | None = None
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
