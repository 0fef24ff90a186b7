"""Which evaluated images the report shows: misclassified ones, map misses and suspect labels, worst first.

A label is suspect when a confident prediction (probability >= SUSPECT_CONFIDENCE) AND the
stain evidence both disagree with it: labelled Parasitized with an empty stain mask, or
labelled Uninfected with a stained area of at least SUSPECT_STAIN_FRACTION of the image
(SUSPECT_STAIN_FRACTION * 128**2 px at 128 px). Why these values: see the README.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

from wtl.evaluation.registry import OUTCOMES  # the galleries by outcome of `evaluate --gallery` (positive_class)
from wtl.evaluation.result import GalleryRules, ImageRecord, ViewScores
from wtl.maps.registry import class_of_interest

SUSPECT_CONFIDENCE = 0.9
SUSPECT_STAIN_FRACTION = 0.006
# A map misses when its peak is further than this from the stain (the pointing game's 8 px).
MAP_MISS_PX = 8.0
GALLERIES = ("misclassified", "map_misses", "suspect_labels")
TITLES = {
    "misclassified": "Misclassified",
    "map_misses": "Map misses",
    "suspect_labels": "Suspect labels",
    "tp": "True positives",
    "tn": "True negatives",
    "fp": "False positives",
    "fn": "False negatives",
}
ORDER = {
    "misclassified": "the most confident wrong prediction first",
    "map_misses": "the peak furthest from the stain first",
    "suspect_labels": "the most confident prediction first, then the larger stain",
    # Right calls: the clearest examples first; wrong calls: the worst (most confident) first.
    "tp": "the most confident first",
    "tn": "the most confident first",
    "fp": "the most confident (the worst) first",
    "fn": "the most confident (the worst) first",
}


def rules(image_size: int) -> GalleryRules:
    """The galleries' thresholds at a model's input size."""
    return GalleryRules(SUSPECT_CONFIDENCE, math.ceil(SUSPECT_STAIN_FRACTION * image_size**2), MAP_MISS_PX, image_size)


def suspect_label(
    label: int, prediction: int, probability: float, stain_area: int, pixels: int, target: int
) -> str | None:
    """Why the label of one cell is suspect (a short phrase), or None when it is not.

    `target` is the Parasitized class, `probability` that of `prediction`, `stain_area`
    the stain mask's pixel count out of `pixels`.
    """
    if probability < SUSPECT_CONFIDENCE or prediction == label:
        return None
    if label == target and stain_area == 0:
        return "labelled Parasitized, but no stain and a confident Uninfected prediction"
    if label != target and prediction == target and stain_area >= SUSPECT_STAIN_FRACTION * pixels:
        return "labelled Uninfected, but a sizeable stain and a confident Parasitized prediction"
    return None


def best_view(methods: Mapping[str, Mapping[str, ViewScores]]) -> tuple[str, str] | None:
    """The (method, view) with the best pointing game: highest at 8 px, then at 4 px, then at 0 px; first if tied."""
    scored = [
        ((scores.pointing(8.0) or 0.0, scores.pointing(4.0) or 0.0, scores.pointing(0.0) or 0.0), (method, view))
        for method, views in methods.items()
        for view, scores in views.items()
        if scores.counted
    ]
    if not scored:
        return None
    best = max(score for score, _ in scored)
    return next(key for score, key in scored if score == best)


def galleries(
    records: Sequence[ImageRecord], class_names: Sequence[str], image_pixels: int, suspects: bool = True
) -> dict[str, list[ImageRecord]]:
    """The three gallery lists of per-image records, each sorted worst first.

    - misclassified: prediction != label, the most confident wrong prediction first;
    - map_misses: Parasitized cells (any picture, for a model of other classes) predicted right
      whose best map's peak lies more than MAP_MISS_PX from the ground truth, the furthest first;
    - suspect_labels (with `suspects`: the ground truth is the stain): `suspect_label` holds (its
      reason kept), the most confident first, then the larger stain first.
    """
    names = list(class_names)
    target = class_of_interest(names)
    out: dict[str, list[ImageRecord]] = {name: [] for name in GALLERIES}
    for record in records:
        label, prediction = names.index(record.label), names.index(record.prediction)
        if label != prediction:
            out["misclassified"].append(record)
        explained = target is None or label == target
        if explained and label == prediction and record.distance is not None and record.distance > MAP_MISS_PX:
            out["map_misses"].append(record)
        if target is None or not suspects:
            continue
        reason = suspect_label(label, prediction, record.probability, record.stain_area, image_pixels, target)
        if reason is not None:
            out["suspect_labels"].append(dataclasses.replace(record, reason=reason))
    out["misclassified"].sort(key=lambda r: -r.probability)
    out["map_misses"].sort(key=lambda r: -(r.distance or 0.0))
    out["suspect_labels"].sort(key=lambda r: (-r.probability, -r.stain_area))
    return out


def positive_class(class_names: Sequence[str]) -> int:
    """The class a positive is: Parasitized for cells, else the second of two classes (Male for faces)."""
    names = list(class_names)
    target = class_of_interest(names)
    if target is not None:
        return target
    if len(names) != 2:
        raise ValueError(
            f"true/false positives need two classes or a Parasitized class, not {len(names)}: {', '.join(names)}"
        )
    return 1


def outcome_galleries(
    records: Sequence[ImageRecord], class_names: Sequence[str], wanted: Sequence[str]
) -> dict[str, list[ImageRecord]]:
    """The asked galleries of OUTCOMES (tp, tn, fp, fn) against positive_class, each the most confident first."""
    unknown = [name for name in wanted if name not in OUTCOMES]
    if unknown:
        raise ValueError(f"unknown gallery {unknown[0]!r} (expected one of {', '.join(OUTCOMES)})")
    if not wanted:
        return {}
    names = list(class_names)
    positive = names[positive_class(names)]
    out: dict[str, list[ImageRecord]] = {name: [] for name in wanted}
    for record in records:
        truth, called = record.label == positive, record.prediction == positive
        outcome = ("t" if truth == called else "f") + ("p" if called else "n")
        if outcome in out:
            out[outcome].append(record)
    for gallery in out.values():
        gallery.sort(key=lambda r: -r.probability)
    return out
