"""What `evaluate` returns: typed fields for the report, the charts and the CLI, and `to_json()` for the file.

Every per-image number is kept (a few floats per image and view), aligned with `records`:
the means the tables print are computed from them, and so can anything else be (intervals,
other subsets) without running the model again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from wtl.metrics.classification import Classification
from wtl.metrics.localisation import POINTING_TOLERANCES, hit_rate
from wtl.metrics.sanity import SanityResult

# The faithfulness numbers of a view, by key: deletion/insertion AUCs, average drop (%), increase (0 or 100).
FAITHFULNESS = ("deletion_auc", "insertion_auc", "average_drop", "increase_in_confidence")
# The mask metrics beside the pointing game (metrics.localisation): relevance mass and relevance rank, in [0, 1].
LOCALISATION = ("relevance_mass", "relevance_rank")


def _nan(count: int) -> np.ndarray:
    return np.full(count, math.nan)


@dataclass
class ViewScores:
    """One method's map in one view (last block, a block, the fused map), scored image by image.

    Arrays are (N,) over all evaluated images, NaN where the number was not measured: `distance`
    (px from the map's peak to the ground truth) where the image was explained and has a mask,
    the faithfulness numbers where the image was in the faithfulness sample.
    """

    explained: np.ndarray  # (N,) bool: the images this view explained
    distance: np.ndarray
    faithfulness: dict[str, np.ndarray]
    # Relevance mass and rank (LOCALISATION), NaN where the distance is: measured on the same images.
    localisation: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def empty(cls, count: int) -> ViewScores:
        """Scores of `count` images, nothing measured yet."""
        return cls(
            np.zeros(count, dtype=bool),
            _nan(count),
            {key: _nan(count) for key in FAITHFULNESS},
            {key: _nan(count) for key in LOCALISATION},
        )

    @property
    def images(self) -> int:
        """How many images the view explained."""
        return int(self.explained.sum())

    @property
    def counted(self) -> int:
        """How many explained images had ground truth to point at."""
        return int((~np.isnan(self.distance)).sum())

    @property
    def faithful_images(self) -> int:
        """How many images deletion/insertion and the average drop were measured on."""
        return int((~np.isnan(self.faithfulness["deletion_auc"])).sum())

    def pointing(self, tolerance: float) -> float | None:
        """The pointing game's hit rate at `tolerance` px over the counted images (None without any)."""
        return hit_rate(torch.from_numpy(self.distance), tolerance)

    def mean(self, key: str) -> float | None:
        """The mean of one faithfulness or localisation number over the images it was measured on (None without any)."""
        values = self.localisation.get(key) if key in LOCALISATION else self.faithfulness[key]
        if values is None:
            return None
        values = values[~np.isnan(values)]
        return float(values.mean()) if len(values) else None

    def to_json(self) -> dict[str, Any]:
        """The view's figures as evaluate's JSON has them."""
        out: dict[str, Any] = {f"pointing_{t:g}px": self.pointing(t) for t in POINTING_TOLERANCES}
        out.update(pointing_counted=self.counted, images=self.images, faithful_images=self.faithful_images)
        out.update({key: self.mean(key) for key in LOCALISATION})
        out.update({key: self.mean(key) for key in FAITHFULNESS})
        return out


@dataclass
class ImageRecord:
    """One evaluated image: its file, label, prediction, the stain's area and the best map's miss distance."""

    file: str | None
    label: str
    prediction: str
    probability: float  # of the prediction
    stain_area: int  # px at the model's input size
    distance: float | None = None  # the best map's peak to the ground truth, px (None: not measured)
    reason: str | None = None  # why the label is suspect (suspect-label gallery only)
    ood_score: float | None = None  # how unlike the training pictures (metrics.ood; None: the model has no statistics)
    out_of_distribution: bool | None = None  # ood_score above the model's threshold

    @property
    def correct(self) -> bool:
        """Whether the prediction is the label."""
        return self.label == self.prediction

    def to_json(self) -> dict[str, Any]:
        """The record as evaluate's JSON has it."""
        out: dict[str, Any] = {
            "file": self.file,
            "label": self.label,
            "prediction": self.prediction,
            "probability": round(self.probability, 6),
            "stain_area": self.stain_area,
            "distance": None if self.distance is None else round(self.distance, 3),
        }
        if self.reason is not None:
            out["reason"] = self.reason
        if self.ood_score is not None:
            out.update(ood_score=round(self.ood_score, 4), out_of_distribution=self.out_of_distribution)
        return out


@dataclass(frozen=True)
class GalleryRules:
    """The thresholds the galleries were chosen by (see galleries.py)."""

    suspect_confidence: float
    suspect_stain_area: int
    map_miss_px: float
    image_size: int

    def to_json(self) -> dict[str, Any]:
        """The rules as evaluate's JSON has them."""
        return dict(self.__dict__)


@dataclass
class EvaluationResult:
    """Accuracy and map quality of one model on one data set."""

    classification: Classification
    explained_class: str  # 'Parasitized' for a malaria model, else 'true class'
    methods: dict[str, dict[str, ViewScores]]  # method -> view -> scores
    fusion_rule: str
    records: list[ImageRecord]
    image_size: int
    blocks: dict[str, Classification] = field(default_factory=dict)  # each block head's own (NetworkMultiLoss)
    best_map: tuple[str, str] | None = None  # (method, view) with the best pointing game
    galleries: dict[str, list[ImageRecord]] = field(default_factory=dict)
    gallery_rules: GalleryRules | None = None
    sanity: SanityResult | None = None
    details: dict[str, str] = field(default_factory=dict)  # what the CLI adds: model, data_dir, split
    truth: str | None = None  # the ground truth of one's own ('masks from DIR'); None: the stain mask, if any

    @property
    def truth_name(self) -> str:
        """What the maps are judged against, in a few words: 'the stain' or 'the ground truth'."""
        return "the stain" if self.truth is None else "the ground truth"

    @property
    def unlike_training(self) -> list[ImageRecord]:
        """The records of pictures unlike the model's training pictures (empty without statistics)."""
        return [record for record in self.records if record.out_of_distribution]

    def views(self) -> list[tuple[str, str, ViewScores]]:
        """(method, view, scores) in the evaluation's order."""
        return [(method, view, scores) for method, views in self.methods.items() for view, scores in views.items()]

    def to_json(self) -> dict[str, Any]:
        """Everything as one JSON-able dict (the layout of evaluate_<model>_<split>.json)."""
        out: dict[str, Any] = {
            "classification": self.classification.to_json(),
            "explained_class": self.explained_class,
            "methods": {m: {v: s.to_json() for v, s in views.items()} for m, views in self.methods.items()},
            "fusion_rule": self.fusion_rule,
        }
        if self.blocks:
            out["blocks"] = {name: report.to_json() for name, report in self.blocks.items()}
        out["per_image"] = [record.to_json() for record in self.records]
        out["best_map"] = {"method": self.best_map[0], "view": self.best_map[1]} if self.best_map else None
        out.update({name: [r.to_json() for r in records] for name, records in self.galleries.items()})
        if self.gallery_rules is not None:
            out["gallery_rules"] = self.gallery_rules.to_json()
        if self.sanity is not None:
            out["sanity"] = self.sanity.to_json()
        if self.truth is not None:
            out["ground_truth"] = self.truth
        out.update(self.details)
        return out
