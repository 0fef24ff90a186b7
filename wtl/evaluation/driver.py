"""How good are a model and its maps? One pass over a data set: accuracy, pointing game, deletion/insertion,
the intervention test, the sanity checks.

The class explained is Parasitized for a malaria model (its maps are judged on the
Parasitized cells, and the pointing game on those whose stain mask is not empty); for any
other model, each image's true class on every image. Every method is judged on the last
block, or for an every-block model on every block and on the fused map. Per image only a
few scalars are kept, so memory stays bounded however large the data set.

Costs stay bounded: the pointing game runs on every explained image, but deletion/insertion,
the intervention and the data-randomisation test (the costly figures) run on a seeded sample of
COSTLY_SAMPLE explained images where there are more (or on --faithful-images of them). A data
set that lists its labels is read in a seeded random order, with the sample chosen up front, so
the costly images are spread evenly over the pass and its progress bar's rate holds from the start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from wtl.evaluation.collect import Reservoir, Views, scatter
from wtl.evaluation.galleries import best_view, galleries, outcome_galleries, rules, suspect_label
from wtl.evaluation.inputs import (
    Images,
    IndexedImages,
    ModelLike,
    as_input,
    batches,
    count,
    indexed_batches,
    known_labels,
)
from wtl.evaluation.interventions import InterventionBatches
from wtl.evaluation.randomisation import RandomisationBatches
from wtl.evaluation.result import FAITHFULNESS, EvaluationResult, ImageRecord
from wtl.evaluation.units import units_of
from wtl.maps import methods as map_methods
from wtl.maps.cam import explain_every_block
from wtl.maps.registry import DEFAULT_FUSION, FUSIONS, METHODS, class_of_interest
from wtl.metrics import ood
from wtl.metrics.bootstrap import DEFAULT_REPLICATES
from wtl.metrics.classification import Classification
from wtl.metrics.faithfulness import deletion_insertion_of_maps, drop_and_increase_of_maps
from wtl.metrics.localisation import peak_distances, relevance_mass, relevance_rank
from wtl.metrics.sanity import MapFunction, cascading_randomisation
from wtl.metrics.stain import stain_mask
from wtl.nets import blocks as net_blocks
from wtl.nets.modes import eval_mode
from wtl.nets.seed import NetworkMultiLoss

# More explained images than this: the costly figures run on a seeded sample of this many.
COSTLY_SAMPLE = 100


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
    grid: int | Sequence[float] | None = None  # deletion/insertion's nodes: None: faithfulness.FRACTIONS; N: N steps
    faithfulness: bool = True  # False: no deletion/insertion and average drop (they cost most)
    fuse: str = DEFAULT_FUSION  # the fused view's rule
    every_block: bool = False  # a Network's Grad-CAM methods on every block too
    sanity_images: int = 0  # the randomisation test on a seeded sample of this many explained images
    sanity_methods: Mapping[str, MapFunction] | Sequence[str] | None = None  # default: sanity_method_names
    seed: int = 0
    # The costly figures on a seeded sample of this many explained images; None: all of them up to
    # COSTLY_SAMPLE, else a sample of COSTLY_SAMPLE.
    faithful_images: int | None = None
    bootstrap: int = DEFAULT_REPLICATES  # replicates of every interval (patients, people or images resampled)
    intervene: bool | None = None  # the intervention test; None: wherever there is ground truth (stain masks)
    extra_fusions: Sequence[str] = ()  # more fused views, 'fused_<rule>', to compare the rules on the same maps
    sanity_model: ModelLike | None = None  # the twin trained on shuffled labels: the data-randomisation test
    truth: MaskSource | None = None  # masks, boxes or points of one's own instead of the stain mask (malaria)
    outcome_galleries: tuple[str, ...] = ()  # galleries.OUTCOMES to add: tp, tn, fp, fn


@dataclass
class _Plan:
    """In which order the images are read, and which explained images get the costly figures."""

    order: list[int] | None  # None: the data set's own order (a stream)
    costly: set[int] | None  # chosen up front; None: a reservoir picks them during the pass
    size: int | None  # the sample's size (None: every explained image)


def _plan(dataset: Images, options: EvaluateOptions, target: int | None) -> _Plan:
    """The reading order and the costly sample: chosen up front where the data set lists its labels."""
    total = count(dataset, options.max_images)
    wanted = options.faithful_images
    labels = known_labels(dataset, options.max_images)
    if labels is None or total is None:
        # A stream: a reservoir picks the sample (all explained images where there are fewer).
        return _Plan(None, None, wanted if wanted is not None else COSTLY_SAMPLE)
    generator = np.random.default_rng(options.seed + 7)
    order = [int(i) for i in generator.permutation(total)]
    explained = [i for i, label in enumerate(labels) if target is None or label == target]
    size = min(len(explained), wanted if wanted is not None else COSTLY_SAMPLE)
    chosen = generator.choice(len(explained), size, replace=False).tolist() if explained else []
    costly = {explained[int(i)] for i in chosen}
    return _Plan(_spread(order, costly), costly, size if size < len(explained) else None)


def _spread(order: list[int], costly: set[int]) -> list[int]:
    """`order` with the costly images at even intervals and the others, in their order, between them.

    A random order alone puts 40 of 100 costly images in one half of a pass and 60 in the other;
    spread evenly, every stretch of the pass costs alike and the progress bar's rate holds from the start.
    """
    picked = [i for i in order if i in costly]
    rest = [i for i in order if i not in costly]
    keys = [(k + 0.5) / len(picked) for k in range(len(picked))] + [(k + 0.5) / len(rest) for k in range(len(rest))]
    return [index for _, index in sorted(zip(keys, picked + rest))]


def sample_note(model: ModelLike, dataset: Images, options: EvaluateOptions) -> str | None:
    """One line saying on how many of the explained images the costly figures will run (None: all, or unknown)."""
    target = class_of_interest(list(model.class_names))
    plan = _plan(dataset, options, target)
    labels = known_labels(dataset, options.max_images)
    if plan.costly is None or plan.size is None or labels is None:
        return None
    explained = sum(1 for label in labels if target is None or label == target)
    return (
        f"deletion/insertion, the intervention and the data randomisation on a seeded sample of {plan.size} of the "
        f"{explained} explained images (--faithful-images N for more); the pointing game on all of them"
    )


def _stream(dataset: Images, options: EvaluateOptions, plan: _Plan) -> Iterable[tuple[Tensor, Tensor, list, list]]:
    if plan.order is not None and isinstance(dataset, IndexedImages):
        yield from indexed_batches(dataset, options.batch_size, plan.order)
        return
    seen = 0
    for raw, labels, files in batches(dataset, options.batch_size, options.max_images):
        yield raw, labels, files, list(range(seen, seen + len(labels)))
        seen += len(labels)


def _ground_truth(
    images: Tensor,
    target: int | None,
    truth: MaskSource | None = None,
    files: Sequence[str | None] = (),
    chosen: Tensor | None = None,
) -> Tensor | None:
    """(B, S, S) bool ground truth of each image, None where there is none: one's own masks where given (empty
    where a picture has none), else the Giemsa stain for a cell model.

    The one place where evaluate's ground truth comes from; the pointing game and the intervention read it.
    One's own ground truth is read for the explained (`chosen`) pictures only, so that only their missing
    or empty masks are counted.
    """
    if truth is not None:
        size = images.shape[-1]
        empty = torch.zeros((size, size), dtype=torch.bool)
        picks = chosen.tolist() if chosen is not None else [True] * len(files)
        found = [truth.mask(file) if pick else None for file, pick in zip(files, picks)]
        return torch.stack([empty if mask is None else mask.to(torch.bool) for mask in found])
    return torch.stack([stain_mask(image.cpu()) for image in images]) if target is not None else None


@dataclass
class _Costly:
    """The costly figures' collectors: deletion/insertion (in Views), the intervention, the data randomisation."""

    faithfulness: bool  # deletion/insertion and average drop, on `grid` (None: the default nodes)
    grid: int | Sequence[float] | None
    intervention: InterventionBatches | None
    randomisation: RandomisationBatches | None


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
        options: EvaluateOptions; `changes` override its fields (evaluate(m, d, grid=4, progress=False)).

    Returns:
        EvaluationResult: classification, per method and view its ViewScores, per image a record,
        the best map, the galleries, the intervention, and with options.sanity_images > 0 (and
        options.sanity_model) the two randomisation tests; every figure with a bootstrap interval.
    """
    options = dataclasses.replace(options or EvaluateOptions(), **changes)  # type: ignore[arg-type]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)} (expected one of {', '.join(METHODS)})")
    for rule in (options.fuse, *options.extra_fusions):
        if rule not in FUSIONS:
            raise ValueError(f"unknown fusion rule {rule!r} (expected one of {', '.join(FUSIONS)})")
    network, names = model.network, list(model.class_names)
    multi = isinstance(network, NetworkMultiLoss)
    target = class_of_interest(names)
    plan = _plan(dataset, options, target)
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {k: [] for k in ("truth", "pred", "conf", "area")}
    block_parts: list[list[tuple[np.ndarray, np.ndarray]]] = []
    files: dict[int, str | None] = {}
    views = Views()
    sanity = Reservoir(options.sanity_images, options.seed)
    reservoir = Reservoir(options.faithful_images or COSTLY_SAMPLE, options.seed + 1)
    # The intervention removes the stain: it runs where the stain is the ground truth, not one's own masks.
    intervene = options.intervene is not False and target is not None and options.truth is None
    costly = _Costly(
        options.faithfulness,
        options.grid,
        InterventionBatches(list(methods)) if intervene else None,
        _randomisation(model, options, methods),
    )
    statistics = ood.statistics_of(getattr(model, "ood", None))
    ood_parts: list[tuple[np.ndarray, np.ndarray]] = []
    seen = 0
    total = count(dataset, options.max_images)
    bar = tqdm(total=total, desc="evaluating", unit="img", disable=not options.progress, leave=False)
    with contextlib.ExitStack() as stack:
        stack.callback(bar.close)
        stack.enter_context(eval_mode(network))  # the caller's train/eval mode comes back afterwards
        if options.sanity_model is not None:
            stack.enter_context(eval_mode(options.sanity_model.network))
        for raw, labels, batch_files, indices in _stream(dataset, options, plan):
            images = as_input(raw, model.image_size, options.device)
            labels = labels.to(images.device)
            classes = torch.full_like(labels, target) if target is not None else labels
            at = np.asarray(indices)
            probabilities = None
            with torch.no_grad():
                # One forward pass per batch: the prediction, the OOD scores and the exact CAMs all read it.
                batch_pass = net_blocks.forward_pass(network, images) if net_blocks.is_known(network) else None
                if multi:
                    explained = explain_every_block(network, images, classes, batch_pass)
                    if not block_parts:
                        block_parts = [[] for _ in explained.block_logits or []]
                    for i, logits in enumerate(explained.block_logits or []):
                        block_parts[i].append((at, logits.argmax(1).cpu().numpy()))
                    logits, probabilities = explained.logits, explained.block_probabilities
                else:
                    logits = batch_pass.logits if batch_pass is not None else network(images)
            if statistics is not None:
                if batch_pass is not None:
                    judged = ood.score_pass(statistics, batch_pass)
                else:
                    judged = ood.score_images(network, statistics, images)
                ood_parts.append((at, judged.score.double().cpu().numpy()))
            confidence, predicted = logits.softmax(dim=1).max(dim=1)
            chosen = labels == target if target is not None else torch.ones_like(labels, dtype=torch.bool)
            masks = _ground_truth(images, target, options.truth, batch_files, chosen.cpu())
            areas = masks.flatten(1).sum(1) if masks is not None else torch.zeros(len(labels), dtype=torch.long)
            for key, values in zip(parts, (labels, predicted, confidence, areas)):
                parts[key].append((at, values.double().cpu().numpy()))
            files.update(zip(indices, batch_files))
            where = chosen.cpu().numpy()
            in_sample = np.array([i in plan.costly for i in at] if plan.costly is not None else [False] * len(at))
            if bool(chosen.any()):
                part = _Batch(images, classes, chosen, masks, probabilities, at, logits, batch_pass)
                _judge(model, part, methods, views, options, costly, in_sample & where)
                if sanity.size:
                    sanity.offer(images[chosen], classes[chosen], at[where])
                if plan.costly is None and plan.size is not None:
                    reservoir.offer(images[chosen], classes[chosen], at[where])
            if costly.intervention is not None and masks is not None and target is not None:
                _suspects(model, images, classes, labels, logits, masks, at, costly, target)
            seen += len(labels)
            bar.update(len(labels))
        if reservoir.images:
            _score_sample(model, reservoir, methods, views, options, costly, target)
    if not parts["truth"]:
        raise ValueError("the data set yielded no images")
    truth, predicted_all = (scatter(parts[k], seen).astype(int) for k in ("truth", "pred"))
    confidences, areas_all = scatter(parts["conf"], seen), scatter(parts["area"], seen).astype(int)
    scores = views.scores(seen, methods)
    best = best_view(scores)
    best_distance = scores[best[0]][best[1]].distance if best is not None else np.full(seen, math.nan)
    ordered_files = [files.get(i) for i in range(seen)]
    records = [
        ImageRecord(file, names[label], names[prediction], float(probability), int(area), _plain(d))
        for file, label, prediction, probability, area, d in zip(
            ordered_files, truth, predicted_all, confidences, areas_all, best_distance
        )
    ]
    if statistics is not None:
        for record, value in zip(records, scatter(ood_parts, seen).tolist()):
            record.ood_score, record.out_of_distribution = value, value > statistics.threshold
    truth_text = options.truth.description if options.truth is not None else None
    unit, units = units_of(dataset, ordered_files)
    result = EvaluationResult(
        classification=Classification.from_predictions(torch.from_numpy(truth), torch.from_numpy(predicted_all), names),
        explained_class=names[target] if target is not None else "true class",
        methods=scores,
        fusion_rule=options.fuse,
        records=records,
        image_size=model.image_size,
        blocks={
            f"block{i}": Classification.from_predictions(
                torch.from_numpy(truth), torch.from_numpy(scatter(p, seen).astype(int)), names
            )
            for i, p in enumerate(block_parts, start=1)
        },
        best_map=best,
        galleries={
            **galleries(records, names, model.image_size**2, suspects=truth_text is None),
            **outcome_galleries(records, names, options.outcome_galleries),
        },
        gallery_rules=rules(model.image_size),
        units=units,
        unit=unit,
        bootstrap=options.bootstrap,
        seed=options.seed,
        block_predictions={f"block{i}": scatter(p, seen).astype(int) for i, p in enumerate(block_parts, start=1)},
        sanity_indices=list(sanity.indices),
        intervention=costly.intervention.scores(seen) if costly.intervention is not None else None,
        data_randomisation=costly.randomisation.scores(seen) if costly.randomisation is not None else None,
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


def _plain(distance: float) -> float | None:
    return None if math.isnan(distance) else float(distance)


def _randomisation(model: ModelLike, options: EvaluateOptions, methods: Sequence[str]) -> RandomisationBatches | None:
    """The data-randomisation collector, comparing the methods the sanity check compares (last-block maps)."""
    twin = options.sanity_model
    if twin is None:
        return None
    if list(twin.class_names) != list(model.class_names):
        raise ValueError("the shuffled-label model must have the same classes as the model")
    names = [m for m in map_methods.sanity_method_names(model.network, methods) if m != "cam fused"]
    if isinstance(model.network, NetworkMultiLoss) and isinstance(twin.network, NetworkMultiLoss):
        names.insert(1, "cam fused")
    return RandomisationBatches(twin, map_methods.heatmap_functions(names, options.fuse))


@dataclass(frozen=True)
class _Batch:
    """One batch of the pass: the network's input, the classes explained, which images are, their masks."""

    images: Tensor  # (B, 3, S, S)
    classes: Tensor  # (B,) the class each map explains
    chosen: Tensor  # (B,) bool: the images that are explained
    masks: Tensor | None  # (B, S, S) bool ground truth, None where there is none
    probabilities: Tensor | None  # (B, n) the block heads' probabilities of the class (NetworkMultiLoss)
    indices: np.ndarray  # (B,) each image's index in the data set
    logits: Tensor  # (B, C) the network's
    record: (
        net_blocks.Pass | None
    )  # the batch's forward pass, which CAM reads (None for a network nets.blocks does not map)


def _judge(
    model: ModelLike,
    part: _Batch,
    methods: Sequence[str],
    views: Views,
    options: EvaluateOptions,
    costly: _Costly,
    sampled: np.ndarray,
) -> None:
    """Add one batch's pointing game for every method's views, and the costly figures of its `sampled` images."""
    batch, masks = len(part.images), part.masks
    where = part.chosen.cpu()
    indices = part.indices[where.numpy()]
    images, classes = part.images[part.chosen], part.classes[part.chosen]
    probabilities = part.probabilities[part.chosen] if part.probabilities is not None else None
    known = part.record.select(part.chosen) if part.record is not None else None
    rows = torch.from_numpy(sampled[where.numpy()])
    every: dict[str, dict[str, Tensor]] = {}
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
            options.extra_fusions,
            known,
        )
        every[method] = heats
        for view, heat in heats.items():
            distance = torch.full((batch,), math.nan, dtype=torch.float64)
            mass, rank = distance.clone(), distance.clone()
            if masks is not None:
                chosen_masks = masks[where].cpu()
                distance[where] = peak_distances(heat.cpu(), chosen_masks)
                mass[where] = relevance_mass(heat.cpu(), chosen_masks)
                rank[where] = relevance_rank(heat.cpu(), chosen_masks)
            localisation = {"relevance_mass": mass.numpy(), "relevance_rank": rank.numpy()}
            views.add_pointing((method, view), part.indices, where.numpy().copy(), distance.numpy(), localisation)
    if bool(rows.any()):
        chosen = rows.to(images.device)
        sample_masks = masks[where][rows] if masks is not None else None
        sample_heats = {m: {v: h[chosen] for v, h in heats.items()} for m, heats in every.items()}
        logits = part.logits[part.chosen][chosen]
        _costly_figures(
            model,
            images[chosen],
            classes[chosen],
            indices[rows.numpy()],
            sample_masks,
            sample_heats,
            views,
            costly,
            logits,
        )


def _main_view(heats: Mapping[str, Tensor]) -> str:
    """The view a method is drawn by: its fused map where it has one, else the last block's."""
    return "fused" if "fused" in heats else next(iter(heats))


def _costly_figures(
    model: ModelLike,
    images: Tensor,
    classes: Tensor,
    indices: np.ndarray,
    masks: Tensor | None,
    heats: Mapping[str, Mapping[str, Tensor]],
    views: Views,
    costly: _Costly,
    logits: Tensor | None = None,
) -> None:
    """Deletion/insertion and average drop of every view, the intervention and the data randomisation of images.

    `logits` (B, C) are the images' own where the pass has them (else the intervention asks for them).
    """
    if costly.faithfulness:
        # Every view's curves at once: the pictures' own and blurred probabilities are asked once for all.
        maps = {(method, view): heat for method, by_view in heats.items() for view, heat in by_view.items()}
        curves = deletion_insertion_of_maps(model.network, images, maps, classes, costly.grid)
        drops = drop_and_increase_of_maps(model.network, images, maps, classes)
        for key in maps:
            (deletion, insertion), (drop, increased) = curves[key], drops[key]
            values = dict(zip(FAITHFULNESS, (deletion, insertion, drop, increased.double() * 100)))
            views.add_faithfulness(key, indices, {k: v.double().cpu().numpy() for k, v in values.items()})
    if costly.intervention is not None and masks is not None:
        stained = masks.flatten(1).any(1)
        if bool(stained.any()):
            tops = {m: by_view[_main_view(by_view)][stained] for m, by_view in heats.items()}
            costly.intervention.add(
                model.network,
                images[stained],
                masks[stained],
                classes[stained],
                indices[stained.cpu().numpy()],
                np.ones(int(stained.sum()), dtype=bool),
                tops,
                logits[stained] if logits is not None else None,
            )
    if costly.randomisation is not None:
        costly.randomisation.add(model, images, classes, indices.tolist())


def _suspects(
    model: ModelLike,
    images: Tensor,
    classes: Tensor,
    labels: Tensor,
    logits: Tensor,
    masks: Tensor,
    indices: np.ndarray,
    costly: _Costly,
    target: int,
) -> None:
    """Intervene on the batch's suspect-label cells that are not explained (labelled other than the target)."""
    assert costly.intervention is not None
    confidence, predicted = logits.softmax(dim=1).max(dim=1)
    pixels = masks.shape[-1] * masks.shape[-2]
    areas = masks.flatten(1).sum(1)
    suspect = [
        int(label) != target and suspect_label(int(label), int(guess), float(p), int(area), pixels, target) is not None
        for label, guess, p, area in zip(labels.tolist(), predicted.tolist(), confidence.tolist(), areas.tolist())
    ]
    rows = torch.tensor(suspect, dtype=torch.bool)
    if bool(rows.any()):
        chosen = rows.to(images.device)
        costly.intervention.add(
            model.network,
            images[chosen],
            masks[rows],
            classes[chosen],
            indices[rows.numpy()],
            np.zeros(int(rows.sum()), dtype=bool),
            logits=logits[chosen],
        )


def _score_sample(
    model: ModelLike,
    sample: Reservoir,
    methods: Sequence[str],
    views: Views,
    options: EvaluateOptions,
    costly: _Costly,
    target: int | None,
) -> None:
    """The costly figures of a reservoir's images (a data set that does not list its labels), in batches."""
    total = len(sample.images)
    bar = tqdm(total=total, desc="costly sample", unit="img", disable=not options.progress, leave=False)
    with bar:
        for start in range(0, total, options.batch_size):
            rows = slice(start, start + options.batch_size)
            images = torch.stack(sample.images[rows]).to(options.device)
            classes = torch.tensor(sample.classes[rows], device=options.device)
            indices = np.asarray(sample.indices[rows])
            heats = {
                method: map_methods.views(
                    model.network,
                    method,
                    images,
                    classes,
                    options.fuse,
                    options.every_block,
                    batch_size=options.batch_size,
                    extra_rules=options.extra_fusions,
                )
                for method in methods
            }
            masks = _ground_truth(images, target) if options.truth is None else None  # no files here
            _costly_figures(model, images, classes, indices, masks, heats, views, costly)
            bar.update(len(images))
