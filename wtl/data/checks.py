"""Is a folder what a prompt asked for? One line saying why not, from the data sets' own rules.

The prompts of both tools ask again with this reason at once, instead of accepting a folder of the
wrong layout and failing after the next question. The layouts are the data sets' (datasets.DATASETS):
whatever they accept, the prompts accept.
"""

from __future__ import annotations

from pathlib import Path

from wtl.data.datasets import DATASETS
from wtl.data.images import IMAGE_SUFFIXES, list_images
from wtl.data.splits import MIN_PER_CLASS
from wtl.errors import DatasetError


def data_set_problem(dataset: str, folder: str | Path) -> str | None:
    """Why `folder` cannot be the `dataset` ('malaria', 'gender', 'folder') to train on or draw from; None if it can."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        return f"{folder}: no such folder"
    try:
        found = DATASETS[dataset](path, "all")
    except DatasetError as error:
        return str(error)
    counts = found.counts()
    short = [name for name, count in zip(found.class_names, counts) if count < MIN_PER_CLASS]
    if short:
        where = getattr(found, "folder", path)
        return f"{where}: no images (or fewer than {MIN_PER_CLASS}) of {', '.join(short)} in it"
    return None


def picture_problem(answer: str | Path) -> str | None:
    """Why `answer` is neither an image file nor a folder holding some; None if it is one of them."""
    path = Path(answer).expanduser()
    if path.is_dir():
        return None if list_images(path) else f"{answer}: the folder holds no image files"
    if not path.exists():
        return f"{answer}: no such file or folder"
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return f"{answer}: not an image file (expected one of {', '.join(sorted(IMAGE_SUFFIXES))})"
    return None
