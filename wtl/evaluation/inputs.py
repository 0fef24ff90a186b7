"""What the evaluation drivers read: a map-style data set or any iterable of (image, label), in batches."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sized
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torchvision.transforms import functional as TF


@runtime_checkable
class IndexedImages(Protocol):
    """A map-style data set (model_data.MalariaSet, any torch Dataset with a length): item i is (image, label)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Tensor, Any]: ...


# What the drivers take: a map-style data set, or any iterable of (image, label) pairs.
Images = IndexedImages | Iterable[tuple[Tensor, Any]]


class ModelLike(Protocol):
    """What the drivers need of a checkpoints.loading.LoadedModel."""

    network: nn.Module
    class_names: list[str]
    image_size: int


def count(dataset: Images, limit: int | None) -> int | None:
    """How many images the drivers will read (for the progress bar), when the data set knows its length."""
    if not isinstance(dataset, Sized):
        return None
    return len(dataset) if limit is None else min(len(dataset), limit)


def batches(dataset: Images, batch_size: int, limit: int | None) -> Iterable[tuple[Tensor, Tensor, list[str | None]]]:
    """(uint8 or float images, labels, files) batches from an iterable of (image, label), at most `limit` images.

    A file is the image's path where the data set keeps one (`dataset.samples[i][0]`, as
    model_data's sets do), else None.
    """
    images: list[Tensor] = []
    labels: list[int] = []
    files: list[str | None] = []
    samples = getattr(dataset, "samples", None)
    # A torch Dataset need not be iterable: read a map-style one by index.
    items = (dataset[i] for i in range(len(dataset))) if isinstance(dataset, IndexedImages) else iter(dataset)
    for index, (image, label) in enumerate(itertools.islice(items, limit)):
        images.append(image)
        labels.append(int(label))
        files.append(_file_of(samples, index))
        if len(images) == batch_size:
            yield torch.stack(images), torch.tensor(labels), files
            images, labels, files = [], [], []
    if images:
        yield torch.stack(images), torch.tensor(labels), files


def known_labels(dataset: Images, limit: int | None) -> list[int] | None:
    """The labels of the first `limit` images without decoding any, where the data set lists them (`.labels`)."""
    labels = getattr(dataset, "labels", None)
    if not isinstance(dataset, IndexedImages) or not isinstance(labels, (list, tuple)):
        return None
    return [int(label) for label in labels[: len(dataset) if limit is None else limit]]


def indexed_batches(
    dataset: IndexedImages, batch_size: int, order: Iterable[int]
) -> Iterable[tuple[Tensor, Tensor, list[str | None], list[int]]]:
    """(images, labels, files, indices) batches of a map-style data set read in the given order of indices."""
    samples = getattr(dataset, "samples", None)
    images: list[Tensor] = []
    labels: list[int] = []
    files: list[str | None] = []
    indices: list[int] = []
    for index in order:
        image, label = dataset[index]
        images.append(image)
        labels.append(int(label))
        files.append(_file_of(samples, index))
        indices.append(int(index))
        if len(images) == batch_size:
            yield torch.stack(images), torch.tensor(labels), files, indices
            images, labels, files, indices = [], [], [], []
    if images:
        yield torch.stack(images), torch.tensor(labels), files, indices


def _file_of(samples: Any, index: int) -> str | None:
    """samples[index][0] as a string, when the data set has such a list of (path, label)."""
    try:
        entry = samples[index]
    except (TypeError, IndexError, KeyError):
        return None
    return str(entry[0]) if isinstance(entry, (tuple, list)) and entry else None


def as_input(images: Tensor, size: int, device: torch.device | str) -> Tensor:
    """A batch as network input: float in [0, 1] at the model's size, on the device."""
    images = images.to(device)
    images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if images.shape[-2:] != (size, size):
        images = TF.resize(images, [size, size], antialias=True)
    return images


def model_name(model: ModelLike, index: int) -> str:
    """A model's display name: its checkpoint file's stem when it has one."""
    path = getattr(model, "path", None)
    return f"{index}:{path.name.split('.')[0]}" if path is not None else f"model {index}"
