"""Adebayo et al.'s data-randomisation test in evaluate: the same pictures explained by the model and by its twin
trained on shuffled labels (model_main.py --shuffle-labels), per method the rank correlation of the two maps.

A method whose maps barely change when the labels were random explains the image, not what the
model learned. Per image only the correlation is kept, so the intervals come from the same
bootstrap as every other figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

from wtl.evaluation.inputs import ModelLike, as_input
from wtl.maps.methods import MapFunction
from wtl.maps.ops import upsample
from wtl.metrics.agreement import spearman
from wtl.metrics.bootstrap import Resampler, interval
from wtl.nets.modes import eval_mode


@dataclass
class DataRandomisation:
    """Per method (N,) Spearman's rho between the model's and the shuffled-label model's maps (NaN: not measured)."""

    model: str  # the shuffled-label model's file name
    rhos: dict[str, np.ndarray]
    shuffled_labels: bool = True  # whether that model's checkpoint says it was trained on shuffled labels

    def mean(self, method: str) -> float | None:
        """The mean rho over the images where it is defined."""
        values = self.rhos[method][~np.isnan(self.rhos[method])]
        return float(values.mean()) if len(values) else None

    def images(self, method: str) -> int:
        """On how many images rho is defined."""
        return int((~np.isnan(self.rhos[method])).sum())

    def to_json(self, resampler: Resampler | None = None) -> dict[str, Any]:
        """{'model', 'shuffled_labels', 'methods': {m: {'spearman', 'spearman_ci95', 'images'}}}."""
        methods = {}
        for method, values in self.rhos.items():
            row: dict[str, Any] = {"spearman": self.mean(method), "images": self.images(method)}
            if resampler is not None:
                bounds = interval(resampler.mean(values))
                row["spearman_ci95"] = None if bounds is None else [bounds[0], bounds[1]]
            methods[method] = row
        return {"model": self.model, "shuffled_labels": self.shuffled_labels, "methods": methods}


@dataclass
class RandomisationBatches:
    """Collects the per-image correlations batch by batch, at original indices."""

    twin: ModelLike
    functions: Mapping[str, MapFunction]
    parts: list[tuple[np.ndarray, dict[str, list[float]]]] = field(default_factory=list)

    def add(self, model: ModelLike, images: Tensor, classes: Tensor, indices: Sequence[int]) -> None:
        """Both models' maps of (B, 3, S, S) images explaining `classes`, compared per image."""
        if not len(images):
            return
        other = as_input(images, self.twin.image_size, images.device)
        values: dict[str, list[float]] = {}
        with eval_mode(model.network), eval_mode(self.twin.network):
            for name, fn in self.functions.items():
                mine = fn(model.network, images, classes).detach().cpu()
                theirs = fn(self.twin.network, other, classes).detach().cpu()
                if theirs.shape != mine.shape:
                    theirs = upsample(theirs, tuple(mine.shape[-2:]))
                values[name] = [spearman(a, b) for a, b in zip(mine, theirs)]
        self.parts.append((np.asarray(indices), values))

    def scores(self, total: int) -> DataRandomisation:
        """The correlations over `total` images."""
        rhos = {name: np.full(total, math.nan) for name in self.functions}
        for indices, values in self.parts:
            for name, rho in values.items():
                rhos[name][indices] = rho
        path = getattr(self.twin, "path", None)
        checkpoint = getattr(self.twin, "checkpoint", {}) or {}
        return DataRandomisation(
            str(path.name) if path is not None else "twin", rhos, bool(checkpoint.get("shuffled_labels"))
        )
