"""The original project's data sets under their original names (the code lives in wtl.data)."""

from wtl.data.cache import DatasetCache
from wtl.data.datasets import FolderSet, GenderSet, ImageListSet, MalariaSet, make_dataset
from wtl.data.images import list_images, load_image, original_image, read_image_uint8
from wtl.data.splits import training_splits
from wtl.errors import DatasetError, ImageError

__all__ = [
    "DatasetCache",
    "DatasetError",
    "FolderSet",
    "GenderSet",
    "ImageError",
    "ImageListSet",
    "MalariaSet",
    "list_images",
    "load_image",
    "make_dataset",
    "original_image",
    "read_image_uint8",
    "training_splits",
]
