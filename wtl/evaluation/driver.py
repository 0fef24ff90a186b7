"""How good are a model and its maps? One pass over a data set: accuracy, pointing game, deletion/insertion.

The class explained is Parasitized for a malaria model (its maps are judged on the
Parasitized cells, and the pointing game on those whose stain mask is not empty); for any
other model, each image's true class on every image. Every method is judged on the last
block, or for an every-block model on every block and on the fused map. Per image only a
few scalars are kept, so memory stays bounded however large the data set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from wtl.evaluation.galleries import best_view, galleries, outcome_galleries, rules
from wtl.evaluation.inputs import Images, ModelLike, as_input, batches, count
from wtl.evaluation.result import FAITHFULNESS, EvaluationResult, ImageRecord, ViewScores
from wtl.maps import methods as map_methods
from wtl.maps.cam import explain_every_block
from wtl.maps.registry import DEFAULT_FUSION, FUSIONS, METHODS, class_of_interest
from wtl.metrics import ood
from wtl.metrics.classification import Classification
from wtl.metrics.faithfulness import deletion_insertion, drop_and_increase
from wtl.metrics.localisation import peak_distances, relevance_mass, relevance_rank
from wtl.metrics.sanity import MapFunction, cascading_randomisation
from wtl.metrics.stain import stain_mask
from wtl.nets.modes import eval_mode
from wtl.nets.seed import NetworkMultiLoss


class MaskSource(Protocol):
    """Ground truth of one's own (data.truth.GroundTruth): a picture's mask at the model's input size, or None."""

    @property
    def description(self) -> str: ...

    def mask(self, file: str | None, count: bool = True) -> Tensor | None: ...


@dataclass(frozen=True)
class EvaluateOptions:
    """How `evaluate` runs; every field has the CLI's default."""

    device: torch.device | str = "cpu"
    batch_size: int = 32
    max_images: int | None = None  # read at most this many images of the data set
    progress: bool = True
    steps: int = 16  # deletion/insertion steps
    faithfulness: bool = True  # False: pointing game only (deletion/insertion and average drop cost most)
    fuse: str = DEFAULT_FUSION  # the fused view's rule
    every_block: bool = False  # a Network's Grad-CAM methods on every block too
    sanity_images: int = 0  # the randomisation test on a seeded sample of this many explained images
    sanity_methods: Mapping[str, MapFunction] | Sequence[str] | None = None  # default: sanity_method_names
    seed: int = 0
    faithful_images: int | None = None  # deletion/insertion on a seeded sample of this many explained images
    truth: MaskSource | None = None  # masks, boxes or points of one's own instead of the stain mask (malaria)
    outcome_galleries: tuple[str, ...] = ()  # galleries.OUTCOMES to add: tp, tn, fp, fn


class _Reservoir:
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


class _Views:
    """Per (method, view) the per-image numbers of a growing stream of batches, made ViewScores at the end."""

    def __init__(self) -> None:
        self.explained: dict[tuple[str, str], list[tuple[int, np.ndarray]]] = {}
        self.distance: dict[tuple[str, str], list[tuple[int, np.ndarray]]] = {}
        self.localisation: dict[tuple[str, str], list[tuple[int, dict[str, np.ndarray]]]] = {}
        self.faithful: dict[tuple[str, str], list[tuple[np.ndarray, dict[str, np.ndarray]]]] = {}

    def add_pointing(
        self,
        key: tuple[str, str],
        offset: int,
        explained: np.ndarray,
        distance: np.ndarray,
        localisation: dict[str, np.ndarray] | None = None,
    ) -> None:
        """One batch's explained mask, distances and mask metrics (NaN where not measured), from image `offset`."""
        self.explained.setdefault(key, []).append((offset, explained))
        self.distance.setdefault(key, []).append((offset, distance))
        self.localisation.setdefault(key, []).append((offset, localisation or {}))

    def add_faithfulness(self, key: tuple[str, str], indices: np.ndarray, values: dict[str, np.ndarray]) -> None:
        """Faithfulness numbers of the images at `indices`."""
        self.faithful.setdefault(key, []).append((indices, values))

    def scores(self, total: int, order: Sequence[str]) -> dict[str, dict[str, ViewScores]]:
        """method -> view -> ViewScores over `total` images, methods in `order`."""
        out: dict[str, dict[str, ViewScores]] = {method: {} for method in order}
        for key in self.explained:
            scores = ViewScores.empty(total)
            for offset, part in self.explained[key]:
                scores.explained[offset : offset + len(part)] = part
            for offset, part in self.distance[key]:
                scores.distance[offset : offset + len(part)] = part
            for offset, values in self.localisation.get(key, []):
                for name, value in values.items():
                    scores.localisation[name][offset : offset + len(value)] = value
            for indices, values in self.faithful.get(key, []):
                for name, value in values.items():
                    scores.faithfulness[name][indices] = value
            out[key[0]][key[1]] = scores
        return out


def evaluate(
    model: ModelLike,
    dataset: Images,
    methods: Sequence[str] = ("cam", "gradcam"),
    options: EvaluateOptions | None = None,
    **changes: object,
) -> EvaluationResult:
    """Accuracy and heatmap quality of a model on a data set of (uint8 or float image, label).

    Args:
        model: a LoadedModel (network, class_names, image_size).
        dataset: a map-style data set (wtl.data.datasets) or any iterable of (image, label).
        methods: names of wtl.maps.registry.METHODS.
        options: EvaluateOptions; `changes` override its fields (evaluate(m, d, steps=4, progress=False)).

    Returns:
        EvaluationResult: classification, per method and view its ViewScores, per image a record,
        the best map, the galleries, and with options.sanity_images > 0 the randomisation test.
    """
    options = dataclasses.replace(options or EvaluateOptions(), **changes)  # type: ignore[arg-type]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)} (expected one of {', '.join(METHODS)})")
    if options.fuse not in FUSIONS:
        raise ValueError(f"unknown fusion rule {options.fuse!r} (expected one of {', '.join(FUSIONS)})")
    network, names = model.network, list(model.class_names)
    multi = isinstance(network, NetworkMultiLoss)
    target = class_of_interest(names)
    truths: list[Tensor] = []
    predictions: list[Tensor] = []
    confidences: list[Tensor] = []
    areas: list[Tensor] = []
    files: list[str | None] = []
    block_predictions: list[list[Tensor]] = []
    statistics = ood.statistics_of(getattr(model, "ood", None))
    ood_scores: list[Tensor] = []
    views = _Views()
    sanity = _Reservoir(options.sanity_images, options.seed)
    sampled = options.faithfulness and options.faithful_images is not None
    faithful = _Reservoir(options.faithful_images or 0, options.seed + 1)
    steps = options.steps if options.faithfulness and not sampled else 0
    seen = 0
    total = count(dataset, options.max_images)
    bar = tqdm(total=total, desc="evaluating", unit="img", disable=not options.progress, leave=False)
    with contextlib.ExitStack() as stack:
        stack.callback(bar.close)
        stack.enter_context(eval_mode(network))  # the caller's train/eval mode comes back afterwards
        for raw, labels, batch_files in batches(dataset, options.batch_size, options.max_images):
            images = as_input(raw, model.image_size, options.device)
            labels = labels.to(images.device)
            classes = torch.full_like(labels, target) if target is not None else labels
            probabilities = None
            with torch.no_grad():
                if multi:
                    explained = explain_every_block(network, images, classes)
                    if not block_predictions:
                        block_predictions = [[] for _ in explained.block_logits or []]
                    for i, logits in enumerate(explained.block_logits or []):
                        block_predictions[i].append(logits.argmax(1).cpu())
                    logits, probabilities = explained.logits, explained.block_probabilities
                else:
                    logits = network(images)
            truths.append(labels.cpu())
            if statistics is not None:
                ood_scores.append(ood.score_images(network, statistics, images).score)
            confidence, predicted = logits.softmax(dim=1).max(dim=1)
            predictions.append(predicted.cpu())
            confidences.append(confidence.cpu())
            files.extend(batch_files)
            chosen = labels == target if target is not None else torch.ones_like(labels, dtype=torch.bool)
            masks = _masks(images, batch_files, chosen.cpu(), options.truth, target is not None, model.image_size)
            areas.append(masks.flatten(1).sum(1) if masks is not None else torch.zeros(len(labels), dtype=torch.long))
            indices = np.arange(seen, seen + len(labels))[chosen.cpu().numpy()]
            if bool(chosen.any()):
                part = _Batch(images, classes, chosen, masks, probabilities, seen)
                _judge(model, part, methods, views, options, steps)
                if sanity.size:
                    sanity.offer(images[chosen], classes[chosen], indices)
                if sampled:
                    faithful.offer(images[chosen], classes[chosen], indices)
            seen += len(labels)
            bar.update(len(labels))
        if faithful.images:
            _score_sample(model, faithful, methods, views, options)
    if not truths:
        raise ValueError("the data set yielded no images")
    truth, predicted = torch.cat(truths), torch.cat(predictions)
    scores = views.scores(seen, methods)
    best = best_view(scores)
    best_distance = scores[best[0]][best[1]].distance if best is not None else np.full(seen, math.nan)
    truth_text = options.truth.description if options.truth is not None else None
    records = [
        ImageRecord(file, names[label], names[prediction], probability, area, None if math.isnan(d) else float(d))
        for file, label, prediction, probability, area, d in zip(
            files,
            truth.tolist(),
            predicted.tolist(),
            torch.cat(confidences).tolist(),
            torch.cat(areas).tolist(),
            best_distance.tolist(),
        )
    ]
    if statistics is not None:
        for record, value in zip(records, torch.cat(ood_scores).tolist()):
            record.ood_score, record.out_of_distribution = value, value > statistics.threshold
    result = EvaluationResult(
        classification=Classification.from_predictions(truth, predicted, names),
        explained_class=names[target] if target is not None else "true class",
        methods=scores,
        fusion_rule=options.fuse,
        records=records,
        image_size=model.image_size,
        blocks={
            f"block{i}": Classification.from_predictions(truth, torch.cat(p), names)
            for i, p in enumerate(block_predictions, start=1)
        },
        best_map=best,
        galleries={
            **galleries(records, names, model.image_size**2, suspects=truth_text is None),
            **outcome_galleries(records, names, options.outcome_galleries),
        },
        gallery_rules=rules(model.image_size),
        truth=truth_text,
    )
    if sanity.images:
        chosen_methods = options.sanity_methods
        if chosen_methods is None:
            chosen_methods = map_methods.sanity_method_names(network, methods)
        functions = (
            chosen_methods
            if isinstance(chosen_methods, Mapping)
            else map_methods.heatmap_functions(chosen_methods, options.fuse)
        )
        device = options.device
        result.sanity = cascading_randomisation(
            network,
            torch.stack(sanity.images).to(device),
            torch.tensor(sanity.classes, device=device),
            functions,
            options.seed,
        )
    return result


def _masks(
    images: Tensor, files: Sequence[str | None], chosen: Tensor, truth: MaskSource | None, stain: bool, size: int
) -> Tensor | None:
    """(B, S, S) bool ground truth of a batch: one's own where given (empty where a picture has none), else the
    stain mask of a malaria model's cells, else None.

    One's own ground truth is read for the explained (`chosen`) pictures only, so that only their
    missing or empty masks are counted.
    """
    if truth is not None:
        empty = torch.zeros((size, size), dtype=torch.bool)
        found = [truth.mask(file) if bool(pick) else None for file, pick in zip(files, chosen)]
        return torch.stack([empty if mask is None else mask.to(torch.bool) for mask in found])
    if stain:
        return torch.stack([stain_mask(image.cpu()) for image in images])
    return None


@dataclass(frozen=True)
class _Batch:
    """One batch of the pass: the network's input, the classes explained, which images are, their masks."""

    images: Tensor  # (B, 3, S, S)
    classes: Tensor  # (B,) the class each map explains
    chosen: Tensor  # (B,) bool: the images that are explained
    masks: Tensor | None  # (B, S, S) bool ground truth, None where there is none
    probabilities: Tensor | None  # (B, n) the block heads' probabilities of the class (NetworkMultiLoss)
    offset: int  # the index of its first image in the data set


def _judge(
    model: ModelLike, part: _Batch, methods: Sequence[str], views: _Views, options: EvaluateOptions, steps: int
) -> None:
    """Add one batch's pointing game (and, with steps > 0, faithfulness) numbers for every method's views."""
    batch, offset, masks = len(part.images), part.offset, part.masks
    where = part.chosen.cpu()
    indices = np.arange(offset, offset + batch)[where.numpy()]
    images, classes = part.images[part.chosen], part.classes[part.chosen]
    probabilities = part.probabilities[part.chosen] if part.probabilities is not None else None
    for method in methods:
        heats = map_methods.views(
            model.network,
            method,
            images,
            classes,
            options.fuse,
            options.every_block,
            probabilities,
            options.batch_size,
        )
        for view, heat in heats.items():
            distance = torch.full((batch,), math.nan, dtype=torch.float64)
            mass, rank = distance.clone(), distance.clone()
            if masks is not None:
                chosen_masks = masks[where].cpu()
                distance[where] = peak_distances(heat.cpu(), chosen_masks)
                mass[where] = relevance_mass(heat.cpu(), chosen_masks)
                rank[where] = relevance_rank(heat.cpu(), chosen_masks)
            localisation = {"relevance_mass": mass.numpy(), "relevance_rank": rank.numpy()}
            views.add_pointing((method, view), offset, where.numpy().copy(), distance.numpy(), localisation)
        if steps:
            _add_faithfulness(model, images, classes, indices, heats, method, views, steps)


def _add_faithfulness(
    model: ModelLike,
    images: Tensor,
    classes: Tensor,
    indices: np.ndarray,
    heats: Mapping[str, Tensor],
    method: str,
    views: _Views,
    steps: int,
) -> None:
    """Deletion/insertion AUCs and the drop / increase of each view's heatmaps, for the images at `indices`."""
    for view, heat in heats.items():
        deletion, insertion = deletion_insertion(model.network, images, heat, classes, steps)
        drop, increased = drop_and_increase(model.network, images, heat, classes)
        values = dict(zip(FAITHFULNESS, (deletion, insertion, drop, increased.double() * 100)))
        views.add_faithfulness((method, view), indices, {k: v.double().cpu().numpy() for k, v in values.items()})


def _score_sample(
    model: ModelLike, sample: _Reservoir, methods: Sequence[str], views: _Views, options: EvaluateOptions
) -> None:
    """Deletion/insertion and average drop of every method's views on the sampled images, in batches."""
    total = len(sample.images)
    bar = tqdm(total=total, desc="deletion/insertion", unit="img", disable=not options.progress, leave=False)
    with bar:
        for start in range(0, total, options.batch_size):
            rows = slice(start, start + options.batch_size)
            images = torch.stack(sample.images[rows]).to(options.device)
            classes = torch.tensor(sample.classes[rows], device=options.device)
            indices = np.asarray(sample.indices[rows])
            for method in methods:
                heats = map_methods.views(
                    model.network,
                    method,
                    images,
                    classes,
                    options.fuse,
                    options.every_block,
                    batch_size=options.batch_size,
                )
                _add_faithfulness(model, images, classes, indices, heats, method, views, options.steps)
            bar.update(len(images))
