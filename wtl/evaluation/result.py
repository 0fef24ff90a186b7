"""What `evaluate` returns: typed fields for the report, the charts and the CLI, and `to_json()` for the file.

Every per-image number is kept (a few floats per image and view), aligned with `records`:
the means the tables print are computed from them, and so can anything else be (intervals,
other subsets) without running the model again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch

from wtl.evaluation.interventions import InterventionScores
from wtl.evaluation.randomisation import DataRandomisation
from wtl.metrics.bootstrap import DEFAULT_REPLICATES, Interval, Resampler, classification_replicates, interval
from wtl.metrics.classification import Classification
from wtl.metrics.localisation import POINTING_TOLERANCES, hit_rate, within
from wtl.metrics.sanity import SanityResult

# The faithfulness numbers of a view, by key: deletion/insertion AUCs, average drop (%), increase (0 or 100).
FAITHFULNESS = ("deletion_auc", "insertion_auc", "average_drop", "increase_in_confidence")
# The mask metrics beside the pointing game (metrics.localisation): relevance mass and relevance rank, in [0, 1].
LOCALISATION = ("relevance_mass", "relevance_rank")
# Which way is better, per figure of a view (for the paired differences between views).
HIGHER_IS_BETTER = {
    **{f"pointing_{t:g}px": True for t in POINTING_TOLERANCES},
    "relevance_mass": True,
    "relevance_rank": True,
    "deletion_auc": False,
    "insertion_auc": True,
    "average_drop": False,
    "increase_in_confidence": True,
}


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

    def hits(self, tolerance: float) -> np.ndarray:
        """(N,) 1.0 where the peak is within `tolerance` px of the ground truth, 0.0 where not, NaN where unmeasured."""
        measured = ~np.isnan(self.distance)
        hit = within(torch.from_numpy(np.nan_to_num(self.distance)), tolerance).numpy().astype(float)
        return np.where(measured, hit, np.nan)

    def per_image(self, figure: str) -> np.ndarray:
        """(N,) the per-image values behind one figure of to_json (pointing_<t>px or a faithfulness key)."""
        if figure.startswith("pointing_"):
            return self.hits(float(figure.removeprefix("pointing_").removesuffix("px")))
        if figure in LOCALISATION:
            return self.localisation.get(figure, _nan(len(self.distance)))
        return self.faithfulness[figure]

    def replicates(self, resampler: Resampler, figure: str) -> np.ndarray:
        """(B,) bootstrap replicates of one figure (its mean over the images it was measured on)."""
        return resampler.mean(self.per_image(figure))

    def to_json(self, resampler: Resampler | None = None) -> dict[str, Any]:
        """The view's figures as evaluate's JSON has them, each with `<figure>_ci95` where a resampler is given."""
        out: dict[str, Any] = {}
        for t in POINTING_TOLERANCES:
            out[f"pointing_{t:g}px"] = self.pointing(t)
            if resampler is not None:
                out[f"pointing_{t:g}px_ci95"] = _ci(self.replicates(resampler, f"pointing_{t:g}px"))
        out.update(pointing_counted=self.counted, images=self.images, faithful_images=self.faithful_images)
        for key in (*LOCALISATION, *FAITHFULNESS):
            out[key] = self.mean(key)
            if resampler is not None:
                out[f"{key}_ci95"] = _ci(self.replicates(resampler, key))
        return out


def _ci(replicates: np.ndarray) -> list[float] | None:
    """An interval as the JSON keeps it: [low, high], or None where no replicate is defined."""
    bounds = interval(replicates)
    return None if bounds is None else [bounds[0], bounds[1]]


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
    details: dict[str, Any] = field(default_factory=dict)  # what the CLI adds: model, data_dir, split
    # The bootstrap: each record's resampling unit (its patient, person, or the image itself), the
    # unit's name, replicates and seed; each block head's predictions; which records the sanity check used.
    units: list[str] = field(default_factory=list)
    unit: str = "image"
    bootstrap: int = DEFAULT_REPLICATES
    seed: int = 0
    block_predictions: dict[str, np.ndarray] = field(default_factory=dict)
    sanity_indices: list[int] = field(default_factory=list)
    intervention: InterventionScores | None = None  # the intervention test (where there is ground truth)
    data_randomisation: DataRandomisation | None = None  # the shuffled-label twin's maps compared (--sanity-model)
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

    @cached_property
    def resampler(self) -> Resampler:
        """The bootstrap draws every interval of this result shares (so differences between figures are paired)."""
        units = self.units or [f"image:{i}" for i in range(len(self.records))]
        return Resampler.draw(units, self.unit if self.units else "image", self.bootstrap, self.seed)

    def ci(self, method: str, view: str, figure: str) -> Interval | None:
        """The 95 % interval of one view's figure (pointing_<t>px or a faithfulness key)."""
        return interval(self.methods[method][view].replicates(self.resampler, figure))

    def classification_intervals(self) -> dict[str, Interval | None]:
        """Intervals of accuracy ('accuracy'), and of 'precision/<class>', ..., 'f1/macro', 'f1/weighted'."""
        names = list(self.classification.class_names)
        truth = np.array([names.index(r.label) for r in self.records])
        predicted = np.array([names.index(r.prediction) for r in self.records])
        reps = classification_replicates(self.resampler, truth, predicted, len(names))
        out = {}
        for key, values in reps.items():
            head, _, tail = key.partition("/")
            label = names[int(tail)] if tail.isdigit() else tail
            out[f"{head}/{label}" if tail else head] = interval(values)
        return out

    def block_intervals(self) -> dict[str, Interval | None]:
        """The interval of each block head's accuracy."""
        names = list(self.classification.class_names)
        truth = np.array([names.index(r.label) for r in self.records])
        ones = np.ones(len(truth))
        return {
            block: interval(self.resampler.ratio((predicted == truth).astype(float), ones))
            for block, predicted in self.block_predictions.items()
        }

    def sanity_intervals(self) -> dict[str, dict[str, Interval | None]]:
        """Per method and stage the interval of the mean rank correlation (over the sanity check's images)."""
        if self.sanity is None or len(self.sanity_indices) != self.sanity.images:
            return {}
        out: dict[str, dict[str, Interval | None]] = {}
        for method, stages in self.sanity.rhos.items():
            out[method] = {}
            for stage, rhos in stages.items():
                values = np.full(len(self.records), np.nan)
                values[self.sanity_indices] = rhos
                out[method][stage] = interval(self.resampler.mean(values))
        return out

    def intervention_galleries(self, limit: int = 60) -> dict[str, list[tuple[int, ImageRecord]]]:
        """(index, record) of the report's two intervention galleries, the largest drop first.

        'largest_flips': sampled images whose prediction flips when their ground truth is removed;
        'suspect_label_flips': suspect-label cells (galleries) whose prediction flips so.
        """
        scores = self.intervention
        if scores is None:
            return {}
        drop = np.nan_to_num(scores.drop("truth"), nan=-np.inf)
        flipped = np.nan_to_num(scores.flipped["truth"]) > 0
        order = [int(i) for i in np.argsort(-drop, kind="stable") if flipped[i]]
        suspects = {r.file for r in self.galleries.get("suspect_labels", []) if r.file}
        return {
            "largest_flips": [(i, self.records[i]) for i in order if scores.sampled[i]][:limit],
            "suspect_label_flips": [(i, self.records[i]) for i in order if self.records[i].file in suspects][:limit],
        }

    def differences(self) -> dict[str, Any]:
        """Per figure: the best view, and each other view's paired difference from it with its 95 % interval.

        A difference whose interval contains 0 cannot be told from none: `tied` lists those views
        (the best among them), which the tables mark.
        """
        views = [(f"{m} {v}", s) for m, v, s in self.views() if s.images]
        out: dict[str, Any] = {}
        for figure, higher in HIGHER_IS_BETTER.items():
            scored = [(name, s, s.replicates(self.resampler, figure)) for name, s in views]
            values = [
                (name, s.pointing(_tolerance(figure)) if figure.startswith("pointing_") else s.mean(figure))
                for name, s, _ in scored
            ]
            present = [(name, value) for name, value in values if value is not None]
            if len(present) < 2:
                continue
            best = (max if higher else min)(present, key=lambda item: item[1])[0]
            reference = next(r for name, _, r in scored if name == best)
            diffs, tied = {}, [best]
            for name, _, reps in scored:
                if name == best or dict(values)[name] is None:
                    continue
                bounds = interval(reps - reference)
                diffs[name] = None if bounds is None else [bounds[0], bounds[1]]
                if bounds is None or bounds[0] <= 0 <= bounds[1]:
                    tied.append(name)
            out[figure] = {"best": best, "tied_with_best": tied, "difference_from_best_ci95": diffs}
        return out

    def to_json(self) -> dict[str, Any]:
        """Everything as one JSON-able dict (the layout of evaluate_<model>_<split>.json), figures with `_ci95`."""
        resampler = self.resampler
        out: dict[str, Any] = {
            "classification": _with_intervals(self.classification.to_json(), self.classification_intervals()),
            "explained_class": self.explained_class,
            "methods": {m: {v: s.to_json(resampler) for v, s in views.items()} for m, views in self.methods.items()},
            "fusion_rule": self.fusion_rule,
            "bootstrap": resampler.describe(),
            "differences": self.differences(),
        }
        if self.blocks:
            intervals = self.block_intervals()
            out["blocks"] = {
                name: {**report.to_json(), "accuracy_ci95": _listed(intervals.get(name))}
                for name, report in self.blocks.items()
            }
        out["per_image"] = [record.to_json() for record in self.records]
        out["best_map"] = {"method": self.best_map[0], "view": self.best_map[1]} if self.best_map else None
        out.update({name: [r.to_json() for r in records] for name, records in self.galleries.items()})
        if self.gallery_rules is not None:
            out["gallery_rules"] = self.gallery_rules.to_json()
        if self.intervention is not None:
            out["intervention"] = self.intervention.to_json(resampler)
            scores = self.intervention
            out["intervention_galleries"] = {
                name: [
                    {
                        **record.to_json(),
                        "before": float(scores.before[i]),
                        "after": float(scores.after["truth"][i]),
                        "after_control": float(scores.after["control"][i]),
                    }
                    for i, record in rows
                ]
                for name, rows in self.intervention_galleries().items()
            }
        if self.data_randomisation is not None:
            out["data_randomisation"] = self.data_randomisation.to_json(resampler)
        if self.sanity is not None:
            sanity = self.sanity.to_json()
            sanity["methods_ci95"] = {
                m: {stage: _listed(b) for stage, b in stages.items()} for m, stages in self.sanity_intervals().items()
            }
            out["sanity"] = sanity
        if self.truth is not None:
            out["ground_truth"] = self.truth
        out.update(self.details)
        return out


def _tolerance(figure: str) -> float:
    return float(figure.removeprefix("pointing_").removesuffix("px"))


def _listed(bounds: Interval | None) -> list[float] | None:
    return None if bounds is None else [bounds[0], bounds[1]]


def _with_intervals(report: dict[str, Any], intervals: dict[str, Interval | None]) -> dict[str, Any]:
    """Classification.to_json with `accuracy_ci95`, and `<figure>_ci95` inside per_class, macro_avg, weighted_avg."""
    report["accuracy_ci95"] = _listed(intervals.get("accuracy"))
    places = {**report["per_class"], "macro": report["macro_avg"], "weighted": report["weighted_avg"]}
    for name, scores in places.items():
        for figure in ("precision", "recall", "f1"):
            scores[f"{figure}_ci95"] = _listed(intervals.get(f"{figure}/{name}"))
    return report
