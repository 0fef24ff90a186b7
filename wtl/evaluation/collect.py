"""evaluate's per-image bookkeeping: a seeded reservoir of images, and per view the numbers at original indices."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from wtl.evaluation.result import ViewScores


class Reservoir:
    """A uniform random sample of at most `size` (image, class, index) from a stream (Algorithm R), seeded."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seen = 0
        self.images: list[Tensor] = []
        self.classes: list[int] = []
        self.indices: list[int] = []
        self.generator = torch.Generator().manual_seed(seed)

    def offer(self, images: Tensor, classes: Tensor, indices: Sequence[int]) -> None:
        """Consider every image of a batch for the sample."""
        for image, cls, index in zip(images, classes.tolist(), indices):
            item = (image.detach().cpu().clone(), int(cls), int(index))
            if len(self.images) < self.size:
                self.images.append(item[0])
                self.classes.append(item[1])
                self.indices.append(item[2])
            else:
                slot = int(torch.randint(0, self.seen + 1, (1,), generator=self.generator))
                if slot < self.size:
                    self.images[slot], self.classes[slot], self.indices[slot] = item
            self.seen += 1


class Views:
    """Per (method, view) the per-image numbers of a stream of batches, at the images' indices -> ViewScores."""

    def __init__(self) -> None:
        self.explained: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray]]] = {}
        self.distance: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray]]] = {}
        self.localisation: dict[tuple[str, str], list[tuple[np.ndarray, dict[str, np.ndarray]]]] = {}
        self.faithful: dict[tuple[str, str], list[tuple[np.ndarray, dict[str, np.ndarray]]]] = {}

    def add_pointing(
        self,
        key: tuple[str, str],
        indices: np.ndarray,
        explained: np.ndarray,
        distance: np.ndarray,
        localisation: dict[str, np.ndarray] | None = None,
    ) -> None:
        """One batch's explained mask, distances and mask metrics (NaN where not measured) at `indices`."""
        self.explained.setdefault(key, []).append((np.asarray(indices), explained))
        self.distance.setdefault(key, []).append((np.asarray(indices), distance))
        self.localisation.setdefault(key, []).append((np.asarray(indices), localisation or {}))

    def add_faithfulness(self, key: tuple[str, str], indices: np.ndarray, values: dict[str, np.ndarray]) -> None:
        """Faithfulness numbers of the images at `indices`."""
        self.faithful.setdefault(key, []).append((np.asarray(indices), values))

    def scores(self, total: int, order: Sequence[str]) -> dict[str, dict[str, ViewScores]]:
        """method -> view -> ViewScores over `total` images, methods in `order`."""
        out: dict[str, dict[str, ViewScores]] = {method: {} for method in order}
        for key in self.explained:
            scores = ViewScores.empty(total)
            for indices, part in self.explained[key]:
                scores.explained[indices] = part
            for indices, part in self.distance[key]:
                scores.distance[indices] = part
            for indices, values in self.localisation.get(key, []):
                for name, value in values.items():
                    scores.localisation[name][indices] = value
            for indices, values in self.faithful.get(key, []):
                for name, value in values.items():
                    scores.faithfulness[name][indices] = value
            out[key[0]][key[1]] = scores
        return out


def scatter(parts: Sequence[tuple[np.ndarray, np.ndarray]], total: int, fill: float = np.nan) -> np.ndarray:
    """(total,) values from batches of (indices, values)."""
    out = np.full(total, fill, dtype=float)
    for indices, values in parts:
        out[indices] = values
    return out
