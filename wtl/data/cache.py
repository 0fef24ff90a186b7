"""An in-memory cache of decoded images, filled once (in parallel) before training."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from wtl.data.datasets import ImageListSet
from wtl.errors import ImageError


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
