"""How good are a model and its heatmaps? Accuracy, pointing game, deletion/insertion, average drop.

Pure tensor functions (stain_mask, pointing_hit, deletion_insertion,
average_drop_increase) and drivers (evaluate, compare_models) that run them over
a data set in batches. The drivers return plain dicts of numbers (JSON-able) so a
CLI can print them with `format_table`, save them, or chart them (charts.py).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torchvision.transforms import functional as TF
from tqdm import tqdm

import cams
import gradcams
from model_network import Network, NetworkMultiLoss
from model_trainer import classification_report

# The pointing game's tolerances: 15 px follows Zhang et al. (at 128 px a cell's parasite
# is ~10-20 px across); 8 px asks for the spot itself.
# 15 px is the usual tolerance, 8 px a stricter one, 0 px "the peak lies inside the stain".
POINTING_TOLERANCES = (15.0, 8.0, 4.0, 0.0)
PARASITIZED = "Parasitized"


@runtime_checkable
class IndexedImages(Protocol):
    """A map-style data set (model_data.MalariaSet, any torch Dataset with a length): item i is (image, label)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Tensor, Any]: ...


# What the drivers take: a map-style data set, or any iterable of (image, label) pairs.
Images = IndexedImages | Iterable[tuple[Tensor, Any]]


class ModelLike(Protocol):
    """What the drivers need of a weights.LoadedModel."""

    network: nn.Module
    kind: str
    class_names: list[str]
    image_size: int


# --------------------------------------------------------------------------- stain


def stain_mask(
    image: Tensor,
    cell_threshold: float = 0.15,
    ratio_drop: float = 0.15,
    darkness: float = 0.9,
    min_pixels: int = 10,
) -> Tensor:
    """Where an NIH cell's Giemsa-stained parasite is: a (H, W) bool mask, empty for a clean cell.

    `image` is (3, H, W), float in [0, 1] (uint8 is scaled).
    NIH cells are pink discs on black; Giemsa stains the parasite's chromatin and
    cytoplasm dark purple/magenta, i.e. it absorbs green more than red and blue, and
    it is darker than the rest of the cell. Measured against the cell's own medians
    (so staining strength and exposure, which vary by slide, cancel out):

    - the cell is every pixel whose brightest channel exceeds `cell_threshold`;
    - a cell pixel is stain when its green / mean(red, blue) ratio is more than
      `ratio_drop` below the cell's median ratio, AND its mean brightness is below
      `darkness` times the cell's median brightness;
    - fewer than `min_pixels` such pixels count as noise: the mask is then empty.

    Calibrated at 128 px on 400 random cells per class of the NIH set: the mask is
    non-empty for 94% of Parasitized and 5% of Uninfected cells, and on the cells
    inspected it lies on the dark purple spot. Medians assume the stain is a minority
    of the cell, which holds for all but late-stage cells filled by the parasite.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"stain_mask expects one RGB image (3, H, W), not {tuple(image.shape)}")
    image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    cell = image.amax(dim=0) > cell_threshold
    empty = torch.zeros(image.shape[1:], dtype=torch.bool, device=image.device)
    if int(cell.sum()) < max(min_pixels, 16):  # no cell to speak of (a black or a blank image)
        return empty
    red, green, blue = image
    ratio = green / ((red + blue) / 2).clamp_min(1e-3)
    brightness = image.mean(dim=0)
    stain = cell & (ratio < ratio[cell].median() - ratio_drop) & (brightness < darkness * brightness[cell].median())
    return stain if int(stain.sum()) >= min_pixels else empty


# --------------------------------------------------------------------------- pointing game


def peak_distance(heatmap: Tensor, mask: Tensor) -> float | None:
    """Euclidean distance in px from the heatmap's maximum (the first, if tied) to the nearest mask pixel.

    0 when the peak lies inside the mask; None for an empty mask (nothing to point at).
    """
    if heatmap.shape != mask.shape or heatmap.ndim != 2:
        raise ValueError(f"heatmap {tuple(heatmap.shape)} and mask {tuple(mask.shape)} must be the same (H, W)")
    points = torch.nonzero(mask).float()
    if len(points) == 0:
        return None
    width = heatmap.shape[1]
    peak = int(heatmap.flatten().argmax())
    where = torch.tensor([peak // width, peak % width], dtype=torch.float32, device=points.device)
    return float((points - where).pow(2).sum(dim=1).min().sqrt())


def peak_distances(heatmaps: Tensor, masks: Tensor) -> Tensor:
    """peak_distance of each of (B, H, W) heatmaps to its (B, H, W) mask: (B,) float, NaN where a mask is empty."""
    if heatmaps.shape != masks.shape or heatmaps.ndim != 3:
        raise ValueError(f"heatmaps {tuple(heatmaps.shape)} and masks {tuple(masks.shape)} must be the same (B, H, W)")
    distances = [peak_distance(h, m) for h, m in zip(heatmaps, masks)]
    return torch.tensor([math.nan if d is None else d for d in distances], dtype=torch.float64)


def pointing_hit(heatmap: Tensor, mask: Tensor, tolerance_px: float) -> bool | None:
    """Whether the heatmap's maximum lies within tolerance_px (Euclidean) of a mask pixel; None for an empty mask."""
    distance = peak_distance(heatmap, mask)
    # Squared distances are whole numbers of px^2: compare those, so that 5.0 px counts as within 5 px exactly.
    return None if distance is None else round(distance**2) <= tolerance_px**2


# --------------------------------------------------------------------------- faithfulness


def _classes(class_index: int | Tensor, batch: int, device: torch.device) -> Tensor:
    """(B,) long tensor from one class or one per image."""
    classes = torch.as_tensor(class_index, dtype=torch.long, device=device)
    return classes.expand(batch) if classes.ndim == 0 else classes


@torch.no_grad()
def _probability(model: nn.Module, images: Tensor, classes: Tensor) -> Tensor:
    """Softmax probability of each image's class, (B,)."""
    return model(images).softmax(dim=1).gather(1, classes[:, None]).squeeze(1)


def blurred(images: Tensor, sigma: float | None = None) -> Tensor:
    """A heavily Gaussian-blurred copy of (B, 3, H, W) images: 'the pixel removed', keeping its colour."""
    side = min(images.shape[-2:])
    sigma = sigma if sigma is not None else max(1.0, side / 12)
    kernel = 2 * math.ceil(3 * sigma) + 1
    # Reflect padding needs the half kernel below the image side.
    kernel = min(kernel, side - 1 if side % 2 == 0 else side)
    kernel = max(kernel if kernel % 2 == 1 else kernel - 1, 1)
    return TF.gaussian_blur(images, [kernel, kernel], [sigma, sigma])


@torch.no_grad()
def deletion_insertion(
    model: nn.Module,
    images: Tensor,
    heatmaps: Tensor,
    class_index: int | Tensor,
    steps: int = 16,
    blur: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-image deletion and insertion AUCs (B,), RISE-style (Petsiuk et al.).

    Pixels are taken in decreasing heatmap order, `steps` equal chunks at a time.
    Deletion replaces them with a blurred copy of the image (Gaussian, sigma `blur`
    px, default side/12) and tracks the class probability: a good map drops it fast
    (low AUC). Insertion starts from the blurred image and puts the original pixels
    back in the same order: a good map raises it fast (high AUC). Both AUCs are the
    trapezoid over the fraction of pixels 0, 1/steps, ..., 1.
    """
    if steps < 1:
        raise ValueError("steps must be at least 1")
    batch, _, height, width = images.shape
    if heatmaps.shape != (batch, height, width):
        raise ValueError(f"heatmaps {tuple(heatmaps.shape)} do not match images {tuple(images.shape)}")
    classes = _classes(class_index, batch, images.device)
    base = blurred(images, blur)
    pixels = height * width
    # rank[b, p] = position of pixel p in image b's decreasing-heat order (ties: lower index first).
    order = heatmaps.reshape(batch, pixels).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(pixels, device=order.device).expand(batch, -1))
    curves = torch.empty((2, steps + 1, batch), dtype=images.dtype, device=images.device)
    with gradcams.eval_mode(model):
        for step in range(steps + 1):
            count = round(step * pixels / steps)
            taken = (rank < count).view(batch, 1, height, width)
            deleted = torch.where(taken, base, images)
            inserted = torch.where(taken, images, base)
            # Both curves in one forward pass.
            both = _probability(model, torch.cat([deleted, inserted]), torch.cat([classes, classes]))
            curves[0, step], curves[1, step] = both[:batch], both[batch:]
    fractions = torch.linspace(0.0, 1.0, steps + 1, device=images.device)
    auc = torch.trapezoid(curves, fractions, dim=1)
    return auc[0], auc[1]


@torch.no_grad()
def drop_and_increase(
    model: nn.Module, images: Tensor, heatmaps: Tensor, class_index: int | Tensor
) -> tuple[Tensor, Tensor]:
    """Per image: the relative drop max(0, Y - O) / Y in % and whether O > Y (the explanation map raised it)."""
    classes = _classes(class_index, images.shape[0], images.device)
    with gradcams.eval_mode(model):
        full = _probability(model, images, classes)
        explained = _probability(model, images * heatmaps[:, None], classes)
    drop = (full - explained).clamp_min(0) / full.clamp_min(1e-12) * 100
    return drop, explained > full


def average_drop_increase(
    model: nn.Module, images: Tensor, heatmaps: Tensor, class_index: int | Tensor
) -> tuple[float, float]:
    """(average drop %, increase in confidence %) of Chattopadhay et al., the image times its heatmap as explanation."""
    drop, increased = drop_and_increase(model, images, heatmaps, class_index)
    return float(drop.mean()), float(increased.float().mean() * 100)


# --------------------------------------------------------------------------- the driver


def _count(dataset: Images, limit: int | None) -> int | None:
    """How many images the drivers will read (for the progress bar), when the data set knows its length."""
    if not isinstance(dataset, Sized):
        return None
    return len(dataset) if limit is None else min(len(dataset), limit)


def _batches(dataset: Images, batch_size: int, limit: int | None) -> Iterable[tuple[Tensor, Tensor, list[str | None]]]:
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


def _file_of(samples: Any, index: int) -> str | None:
    """samples[index][0] as a string, when the data set has such a list of (path, label)."""
    try:
        entry = samples[index]
    except (TypeError, IndexError, KeyError):
        return None
    return str(entry[0]) if isinstance(entry, (tuple, list)) and entry else None


def _as_input(images: Tensor, size: int, device: torch.device | str) -> Tensor:
    """A batch as network input: float in [0, 1] at the model's size, on the device."""
    images = images.to(device)
    images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if images.shape[-2:] != (size, size):
        images = TF.resize(images, [size, size], antialias=True)
    return images


@torch.no_grad()
def _cam_maps(network: nn.Module, images: Tensor, classes: Tensor) -> list[Tensor]:
    """Exact CAMs with a class per image: every block's for a NetworkMultiLoss, the last block's for a Network."""
    if isinstance(network, NetworkMultiLoss):
        return cams.explain_every_block(network, images, classes).cams
    if isinstance(network, Network):
        return [cams.explain_last_block(network, images, classes).cam]
    raise TypeError("the 'cam' method needs one of Where to look's GAP networks; use a Grad-CAM method")


@torch.no_grad()
def block_probabilities(network: nn.Module, images: Tensor, classes: Tensor, blocks: int = 4) -> Tensor:
    """(B, blocks): each block head's probability of the class, for the 'confidence' fusion rule.

    A NetworkMultiLoss has a head per block; any other network only its final one, whose
    probability then stands for every block (so 'confidence' weighs the blocks equally).
    """
    if isinstance(network, NetworkMultiLoss):
        return cams.explain_every_block(network, images, classes).block_probabilities
    return cams.block_probabilities([network(images)] * blocks, classes)


def view_heatmaps(
    model: ModelLike,
    method: str,
    images: Tensor,
    classes: Tensor,
    fuse: str = cams.DEFAULT_FUSION,
    every_block: bool = False,
    probabilities: Tensor | None = None,
) -> dict[str, Tensor]:
    """One method's (B, H, W) heatmaps in [0, 1], by view.

    A NetworkMultiLoss gives 'block1'..'block4' and 'fused' (cams.fuse with rule `fuse`);
    a Network gives 'last', or with every_block=True and a Grad-CAM method (CAM has no
    per-block heads there) 'block1'..'block4' and 'fused'. `probabilities` (B, 4) are the
    block heads' probabilities of the class for the 'confidence' rule (computed when needed
    and not given).
    """
    network, size = model.network, (images.shape[-2], images.shape[-1])
    multi = isinstance(network, NetworkMultiLoss)
    if method == "cam":
        maps = _cam_maps(network, images, classes)
    else:
        blocks = multi or every_block
        layers = gradcams.block_layers(network) if blocks else [gradcams.default_target_layer(network)]
        maps = [gradcams.make_method(method, network, layer)(images, classes).maps for layer in layers]
    if len(maps) == 1:
        return {"last": cams.heatmap(maps[0], size)}
    views = {f"block{i}": cams.heatmap(m, size) for i, m in enumerate(maps, start=1)}
    if probabilities is None and cams.FUSION_RULES[fuse].needs_probabilities:
        probabilities = block_probabilities(network, images, classes, len(maps))
    views["fused"] = cams.fuse(maps, size, fuse, probabilities)
    return views


class _Tally:
    """Running sums of one view's metrics."""

    def __init__(self) -> None:
        self.hits = {t: 0 for t in POINTING_TOLERANCES}
        self.counted = 0
        self.images = 0
        self.faithful = 0  # images with deletion/insertion and drop/increase (all, unless switched off)
        self.sums = {"deletion_auc": 0.0, "insertion_auc": 0.0, "average_drop": 0.0, "increase_in_confidence": 0.0}

    def result(self) -> dict[str, Any]:
        """Means over the images (pointing game over the cells it counted)."""
        out: dict[str, Any] = {
            f"pointing_{t:g}px": (self.hits[t] / self.counted if self.counted else None) for t in POINTING_TOLERANCES
        }
        out["pointing_counted"] = self.counted
        out["images"] = self.images
        out["faithful_images"] = self.faithful
        out.update({k: (v / self.faithful if self.faithful else None) for k, v in self.sums.items()})
        return out


# --------------------------------------------------------------------------- per-image records and galleries

# A label is suspect when a confident prediction (probability >= SUSPECT_CONFIDENCE) AND the
# stain evidence both disagree with it: labelled Parasitized with an empty stain mask, or
# labelled Uninfected with a stained area of at least SUSPECT_STAIN_FRACTION of the image
# (SUSPECT_STAIN_FRACTION * 128**2 px at 128 px). Why these values: see the README.
SUSPECT_CONFIDENCE = 0.9
SUSPECT_STAIN_FRACTION = 0.006
# A map misses when its peak is further than this from the stain (the pointing game's 8 px).
MAP_MISS_PX = 8.0
GALLERIES = ("misclassified", "map_misses", "suspect_labels")


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


def best_view(methods: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> tuple[str, str] | None:
    """The (method, view) with the best pointing game: highest at 8 px, then at 4 px, then at 0 px; first if tied."""
    scored = [
        ((m["pointing_8px"], m.get("pointing_4px") or 0.0, m["pointing_0px"] or 0.0), (method, view))
        for method, views in methods.items()
        for view, m in views.items()
        if m.get("pointing_counted") and m.get("pointing_8px") is not None
    ]
    if not scored:
        return None
    best = max(score for score, _ in scored)
    return next(key for score, key in scored if score == best)


def galleries(
    records: Sequence[Mapping[str, Any]], class_names: Sequence[str], image_pixels: int
) -> dict[str, list[dict[str, Any]]]:
    """The three gallery lists of per-image records, each sorted worst first.

    - misclassified: prediction != label, the most confident wrong prediction first;
    - map_misses: Parasitized cells predicted right whose best map's peak lies more than
      MAP_MISS_PX from the stain (record key 'distance'), the furthest first;
    - suspect_labels: `suspect_label` holds (key 'reason' added), the most confident first,
      then the larger stain first.
    """
    names = list(class_names)
    target = names.index(PARASITIZED) if PARASITIZED in names else None
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in GALLERIES}
    for record in records:
        label, prediction = names.index(record["label"]), names.index(record["prediction"])
        if label != prediction:
            out["misclassified"].append(dict(record))
        if target is None:
            continue
        distance = record.get("distance")
        if label == target == prediction and distance is not None and distance > MAP_MISS_PX:
            out["map_misses"].append(dict(record))
        reason = suspect_label(label, prediction, record["probability"], record["stain_area"], image_pixels, target)
        if reason is not None:
            out["suspect_labels"].append({**record, "reason": reason})
    out["misclassified"].sort(key=lambda r: -r["probability"])
    out["map_misses"].sort(key=lambda r: -r["distance"])
    out["suspect_labels"].sort(key=lambda r: (-r["probability"], -r["stain_area"]))
    return out


class _Reservoir:
    """A uniform random sample of at most `size` (image, class) pairs from a stream (Algorithm R), seeded."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seen = 0
        self.images: list[Tensor] = []
        self.classes: list[int] = []
        self.generator = torch.Generator().manual_seed(seed)

    def offer(self, images: Tensor, classes: Tensor) -> None:
        """Consider every image of a batch for the sample."""
        for image, cls in zip(images, classes.tolist()):
            if len(self.images) < self.size:
                self.images.append(image.detach().cpu().clone())
                self.classes.append(int(cls))
            else:
                slot = int(torch.randint(0, self.seen + 1, (1,), generator=self.generator))
                if slot < self.size:
                    self.images[slot], self.classes[slot] = image.detach().cpu().clone(), int(cls)
            self.seen += 1


# --------------------------------------------------------------------------- the driver


def evaluate(
    model: ModelLike,
    dataset: Images,
    methods: Sequence[str],
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    max_images: int | None = None,
    progress: bool = True,
    steps: int = 16,
    faithfulness: bool = True,
    fuse: str = cams.DEFAULT_FUSION,
    every_block: bool = False,
    sanity_images: int = 0,
    sanity_methods: Mapping[str, MapFunction] | Sequence[str] | None = None,
    seed: int = 0,
    faithful_images: int | None = None,
) -> dict[str, Any]:
    """Accuracy and heatmap quality of a model on a data set of (uint8 image, label); a JSON-able dict.

    The class explained is Parasitized for a malaria model (its maps are judged on
    the Parasitized cells, and the pointing game on those whose stain mask is not
    empty); for any other model, each image's true class on every image.
    Methods: 'cam' (cams.py) and the keys of gradcams.METHODS; for an every-block
    model each method is judged on every block and on the 'fused' map (cams.fuse with
    rule `fuse`; every_block=True does the same for a Network's Grad-CAM methods). `steps`
    is deletion/insertion's; faithfulness=False skips those and the average drop (the
    costly part, 2 (steps + 2) image passes per map), leaving the pointing game.
    faithful_images=N computes them on a seeded uniform sample of N explained images
    instead of all (kept in memory, N x 3 x S x S floats, and scored after the pass over
    the data); each view's 'faithful_images' says on how many.

    Besides 'classification', 'explained_class', 'methods' (and 'blocks' for an every-block
    model), the result holds 'fusion_rule'; 'per_image': one record per image, in order,
    {file, label, prediction, probability (of the prediction), stain_area (px at the
    model's input size), distance (the best map's peak to the stain in px, None where
    not measured)}; 'best_map' {method, view} (see best_view); the galleries
    'misclassified', 'map_misses', 'suspect_labels' (see galleries) and 'gallery_rules'
    (their thresholds); with sanity_images > 0, 'sanity': cascading_randomisation on a
    seeded uniform sample of that many explained images, for `sanity_methods` (default:
    sanity_method_names). Memory stays bounded: per image only these scalars are kept.
    """
    unknown = [m for m in methods if m != "cam" and m not in gradcams.METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)} (expected cam or {', '.join(gradcams.METHODS)})")
    if fuse not in cams.FUSION_RULES:
        raise ValueError(f"unknown fusion rule {fuse!r} (expected one of {', '.join(cams.FUSION_RULES)})")
    network, names = model.network, list(model.class_names)
    multi = isinstance(network, NetworkMultiLoss)
    target = names.index(PARASITIZED) if PARASITIZED in names else None
    truths: list[Tensor] = []
    predictions: list[Tensor] = []
    confidences: list[Tensor] = []
    areas: list[Tensor] = []
    files: list[str | None] = []
    block_predictions: list[list[Tensor]] = [[] for _ in range(4)]
    tallies: dict[str, dict[str, _Tally]] = {m: {} for m in methods}
    distances: dict[tuple[str, str], list[tuple[int, Tensor]]] = {}  # (offset of the batch, its (B,) distances)
    seen = 0
    sample = _Reservoir(sanity_images, seed)
    sampled = faithfulness and faithful_images is not None
    faithful_sample = _Reservoir(faithful_images or 0, seed + 1)
    settings = _Settings(target, steps if faithfulness and not sampled else 0, fuse, every_block)
    bar = tqdm(total=_count(dataset, max_images), desc="evaluating", unit="img", disable=not progress, leave=False)
    with contextlib.ExitStack() as stack:
        stack.callback(bar.close)
        stack.enter_context(gradcams.eval_mode(network))  # the caller's train/eval mode comes back afterwards
        for raw, labels, batch_files in _batches(dataset, batch_size, max_images):
            images = _as_input(raw, model.image_size, device)
            labels = labels.to(images.device)
            classes = torch.full_like(labels, target) if target is not None else labels
            probabilities = None
            with torch.no_grad():
                if isinstance(network, NetworkMultiLoss):
                    explained = cams.explain_every_block(network, images, classes)
                    for i, logits in enumerate(explained.block_logits):
                        block_predictions[i].append(logits.argmax(1).cpu())
                    logits, probabilities = explained.logits, explained.block_probabilities
                else:
                    logits = network(images)
            truths.append(labels.cpu())
            confidence, predicted = logits.softmax(dim=1).max(dim=1)
            predictions.append(predicted.cpu())
            confidences.append(confidence.cpu())
            files.extend(batch_files)
            masks = torch.stack([stain_mask(image.cpu()) for image in images]) if target is not None else None
            areas.append(masks.flatten(1).sum(1) if masks is not None else torch.zeros(len(labels), dtype=torch.long))
            chosen = labels == target if target is not None else torch.ones_like(labels, dtype=torch.bool)
            batch_distances = _judge(model, images, classes, chosen, masks, probabilities, methods, tallies, settings)
            for key, values in batch_distances.items():
                distances.setdefault(key, []).append((seen, values))
            seen += len(labels)
            if sanity_images and bool(chosen.any()):
                sample.offer(images[chosen], classes[chosen])
            if sampled and bool(chosen.any()):
                faithful_sample.offer(images[chosen], classes[chosen])
            bar.update(len(labels))
        if faithful_sample.images:
            _score_sample(model, faithful_sample, methods, tallies, settings, steps, batch_size, device, progress)
    if not truths:
        raise ValueError("the data set yielded no images")
    truth = torch.cat(truths)
    result: dict[str, Any] = {
        "classification": classification_report(truth, torch.cat(predictions), names),
        "explained_class": names[target] if target is not None else "true class",
        "methods": {m: {view: tally.result() for view, tally in views.items()} for m, views in tallies.items()},
        "fusion_rule": fuse,
    }
    if multi:
        result["blocks"] = {
            f"block{i}": classification_report(truth, torch.cat(p), names)
            for i, p in enumerate(block_predictions, start=1)
        }
    best = best_view(result["methods"])
    best_distances = torch.full((len(truth),), math.nan, dtype=torch.float64)
    for offset, values in distances.get(best, []) if best is not None else []:
        best_distances[offset : offset + len(values)] = values
    result["per_image"] = [
        {
            "file": file,
            "label": names[label],
            "prediction": names[prediction],
            "probability": round(probability, 6),
            "stain_area": area,
            "distance": None if math.isnan(distance) else round(distance, 3),
        }
        for file, label, prediction, probability, area, distance in zip(
            files,
            truth.tolist(),
            torch.cat(predictions).tolist(),
            torch.cat(confidences).tolist(),
            torch.cat(areas).tolist(),
            best_distances.tolist(),
        )
    ]
    result["best_map"] = {"method": best[0], "view": best[1]} if best is not None else None
    pixels = model.image_size**2
    result.update(galleries(result["per_image"], names, pixels))
    result["gallery_rules"] = {
        "suspect_confidence": SUSPECT_CONFIDENCE,
        "suspect_stain_area": math.ceil(SUSPECT_STAIN_FRACTION * pixels),
        "map_miss_px": MAP_MISS_PX,
        "image_size": model.image_size,
    }
    if sample.images:
        chosen_methods = sanity_methods if sanity_methods is not None else sanity_method_names(network, methods)
        functions = map_functions(chosen_methods, fuse) if not isinstance(chosen_methods, Mapping) else chosen_methods
        result["sanity"] = cascading_randomisation(
            network, torch.stack(sample.images).to(device), torch.tensor(sample.classes, device=device), functions, seed
        )
    return result


def _score_sample(
    model: ModelLike,
    sample: _Reservoir,
    methods: Sequence[str],
    tallies: dict[str, dict[str, _Tally]],
    settings: _Settings,
    steps: int,
    batch_size: int,
    device: torch.device | str,
    progress: bool,
) -> None:
    """Deletion/insertion and average drop of every method's views on the sampled images, in batches."""
    count = len(sample.images)
    bar = tqdm(total=count, desc="deletion/insertion", unit="img", disable=not progress, leave=False)
    with bar:
        for start in range(0, count, batch_size):
            images = torch.stack(sample.images[start : start + batch_size]).to(device)
            classes = torch.tensor(sample.classes[start : start + batch_size], device=device)
            for method in methods:
                views = view_heatmaps(model, method, images, classes, settings.fuse, settings.every_block)
                _add_faithfulness(model.network, images, classes, views, tallies[method], steps)
            bar.update(len(images))


@dataclass(frozen=True)
class _Settings:
    """What _judge needs besides the batch: the explained class, deletion steps (0: none) and the fused views' rule."""

    target: int | None
    steps: int
    fuse: str
    every_block: bool


def _judge(
    model: ModelLike,
    images: Tensor,
    classes: Tensor,
    chosen: Tensor,
    masks: Tensor | None,
    probabilities: Tensor | None,
    methods: Sequence[str],
    tallies: dict[str, dict[str, _Tally]],
    settings: _Settings,
) -> dict[tuple[str, str], Tensor]:
    """Add one batch's pointing game and (unless steps is 0) faithfulness numbers to every method's tallies.

    Only the `chosen` images are explained. Returns per (method, view) the (B,) peak-to-stain
    distances of the whole batch (NaN where an image was not explained or has no stain);
    nothing for a batch without a chosen image.
    """
    batch = len(images)
    out: dict[tuple[str, str], Tensor] = {}
    if not bool(chosen.any()):
        return out
    images, classes = images[chosen], classes[chosen]
    probabilities = probabilities[chosen] if probabilities is not None else None
    where = chosen.cpu()
    for method in methods:
        views = view_heatmaps(model, method, images, classes, settings.fuse, settings.every_block, probabilities)
        for view, heat in views.items():
            tally = tallies[method].setdefault(view, _Tally())
            distance = torch.full((batch,), math.nan, dtype=torch.float64)
            if masks is not None:
                distance[where] = peak_distances(heat.cpu(), masks[where])
                measured = distance[where]
                for tolerance in POINTING_TOLERANCES:
                    tally.hits[tolerance] += int((measured <= tolerance).sum())
                tally.counted += int((~measured.isnan()).sum())
            out[(method, view)] = distance
            tally.images += len(images)
        if settings.steps:
            _add_faithfulness(model.network, images, classes, views, tallies[method], settings.steps)
    return out


def _add_faithfulness(
    network: nn.Module,
    images: Tensor,
    classes: Tensor,
    views: Mapping[str, Tensor],
    tallies: dict[str, _Tally],
    steps: int,
) -> None:
    """Add deletion/insertion AUCs and the average drop / increase of each view's heatmaps to its tally."""
    for view, heat in views.items():
        tally = tallies.setdefault(view, _Tally())
        deletion, insertion = deletion_insertion(network, images, heat, classes, steps)
        drop, increased = drop_and_increase(network, images, heat, classes)
        tally.sums["deletion_auc"] += float(deletion.sum())
        tally.sums["insertion_auc"] += float(insertion.sum())
        tally.sums["average_drop"] += float(drop.sum())
        tally.sums["increase_in_confidence"] += float(increased.float().sum() * 100)
        tally.faithful += len(images)


# --------------------------------------------------------------------------- the sanity check

# A map method for the sanity check: (network, images (B, 3, H, W) in [0, 1], classes (B,)) -> (B, H, W) heatmaps.
MapFunction = Callable[[nn.Module, Tensor, Tensor], Tensor]


def map_function(name: str, fuse: str = cams.DEFAULT_FUSION) -> MapFunction:
    """A named method's heatmaps at the network's last block: 'cam', a key of gradcams.METHODS, or 'cam fused'.

    'cam fused' is an every-block network's CAMs fused by rule `fuse`, the map the every-block view draws.
    """
    if name == "cam":

        def cam(network: nn.Module, images: Tensor, classes: Tensor) -> Tensor:
            return cams.heatmap(_cam_maps(network, images, classes)[-1], tuple(images.shape[-2:]))

        return cam
    if name == "cam fused":

        def fused(network: nn.Module, images: Tensor, classes: Tensor) -> Tensor:
            if not isinstance(network, NetworkMultiLoss):
                raise TypeError("'cam fused' needs a NetworkMultiLoss")
            return cams.explain_every_block(network, images, classes).fused_heatmap(fuse)

        return fused
    if name in gradcams.METHODS:

        def gradient(network: nn.Module, images: Tensor, classes: Tensor) -> Tensor:
            return gradcams.make_method(name, network)(images, classes).heatmaps(tuple(images.shape[-2:]))

        return gradient
    raise ValueError(f"unknown method {name!r} (expected cam, cam fused or one of {', '.join(gradcams.METHODS)})")


def map_functions(names: Sequence[str], fuse: str = cams.DEFAULT_FUSION) -> dict[str, MapFunction]:
    """map_function of each name, by name."""
    return {name: map_function(name, fuse) for name in names}


def sanity_method_names(network: nn.Module, methods: Sequence[str] = ()) -> list[str]:
    """The sanity check's default methods: cam (and 'cam fused' for an every-block network) and every
    Grad-CAM method, Score-CAM only when it is among `methods` (it costs a forward pass per channel)."""
    names = ["cam"] + (["cam fused"] if isinstance(network, NetworkMultiLoss) else [])
    return names + [m for m in gradcams.METHODS if m != "scorecam" or m in methods]


def randomisation_stages(network: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """The cascade of Adebayo et al.: (stage name, modules to re-initialise), from the top layer down.

    Our networks: 'head' (the classifier and, for NetworkMultiLoss, the blocks' transforms),
    then 'block4', 'block3', 'block2', 'block1' (each block's conv and batch norm). Any other
    model: each module with parameters of its own, last registered first, named by its path.
    """
    if isinstance(network, NetworkMultiLoss):
        head: list[nn.Module] = [network.classifier, network.transform1, network.transform2, network.transform3]
        blocks = [
            [network.conv1, network.bn1],
            [network.conv2, network.bn2],
            [network.conv3, network.bn3],
            [network.conv4, network.bn4],
        ]
    elif isinstance(network, Network):
        features = network.features
        head = [network.classifier]
        blocks = [[features[0]], [features[2]], [features[4]], [features[6], features[8]]]
    else:
        own = [(name, m) for name, m in network.named_modules() if any(True for _ in m.parameters(recurse=False))]
        return [(name, [module]) for name, module in reversed(own)]
    return [("head", head)] + [(f"block{i}", blocks[i - 1]) for i in range(len(blocks), 0, -1)]


def _reinitialise(modules: Sequence[nn.Module], seed: int) -> None:
    """reset_parameters() of every submodule that has one, under `seed`, leaving the caller's RNG state alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in modules:
            for sub in module.modules():
                reset = getattr(sub, "reset_parameters", None)
                if callable(reset):
                    reset()


def cascading_randomisation(
    network: nn.Module,
    images: Tensor,
    classes: Tensor,
    methods: Mapping[str, MapFunction],
    seed: int = 0,
    stages: Sequence[tuple[str, Sequence[nn.Module]]] | None = None,
) -> dict[str, Any]:
    """The model-parameter randomisation test (Adebayo et al. 2018): do the maps depend on the weights?

    On a deep copy of `network` (the original is never touched), the stages of
    randomisation_stages are re-initialised one after another, cumulatively, each with
    its modules' own reset_parameters under seed + stage number. After each stage every
    method's heatmaps of `images` (explaining `classes`) are compared with the trained
    network's by Spearman's rank correlation, per image, and averaged over the images
    where both maps are not constant. A method whose maps keep rho near 1 while the
    weights are destroyed explains the image, not the model.

    Returns {'images': n, 'stages': [names, top first], 'methods': {method: {stage: mean
    rho or None}}, 'defined': {method: {stage: images averaged}}}.
    """
    randomised = copy.deepcopy(network)  # re-initialised in place, stage after stage
    if stages is None:
        cascade = randomisation_stages(randomised)
    else:
        # The caller names the original's modules: re-initialise their twins in the copy.
        path = {id(module): name for name, module in network.named_modules()}
        twin = dict(randomised.named_modules())
        cascade = [(stage, [twin[path[id(m)]] for m in modules]) for stage, modules in stages]
    if not cascade:
        raise ValueError("the network has nothing to randomise")
    size = tuple(images.shape[-2:])
    out: dict[str, Any] = {"images": len(images), "stages": [name for name, _ in cascade], "methods": {}, "defined": {}}
    with gradcams.eval_mode(network):
        reference = {name: fn(network, images, classes).detach().cpu() for name, fn in methods.items()}
    for name, maps in reference.items():
        if tuple(maps.shape) != (len(images), *size):
            raise ValueError(f"method {name!r} gave maps of {tuple(maps.shape)}, not (B, {size[0]}, {size[1]})")
        out["methods"][name], out["defined"][name] = {}, {}
    for number, (stage, modules) in enumerate(cascade):
        _reinitialise(modules, seed + number)
        with gradcams.eval_mode(randomised):
            for name, fn in methods.items():
                maps = fn(randomised, images, classes).detach().cpu()
                rhos = [spearman(a, b) for a, b in zip(reference[name], maps)]
                defined = [r for r in rhos if not math.isnan(r)]
                out["methods"][name][stage] = sum(defined) / len(defined) if defined else None
                out["defined"][name][stage] = len(defined)
    return out


def _number(value: Any, percent: bool = False) -> str:
    """A table cell: '-' for None, else 3 decimals (or a percentage with 1)."""
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if percent else f"{value:.3f}"


def format_table(result: Mapping[str, Any]) -> str:
    """The evaluation as readable text: accuracy per head, one row per method and view, galleries, sanity check."""
    report = result["classification"]
    lines = [f"accuracy {100 * report['accuracy']:.2f}% on {report['images']} images"]
    names = report["class_names"]
    for name in names:
        m = report["per_class"][name]
        lines.append(
            f"  {name:<14} precision {m['precision']:.3f}  recall {m['recall']:.3f}  f1 {m['f1']:.3f}  n={m['support']}"
        )
    lines.append("  confusion (rows true): " + "  ".join(str(row) for row in report["confusion_matrix"]))
    for block, block_report in result.get("blocks", {}).items():
        lines.append(f"  {block} head accuracy {100 * block_report['accuracy']:.2f}%")
    lines += ["", f"heatmaps explaining {result['explained_class']}:"]
    header = f"{'method':<10}{'view':<8}{'point@15':>9}{'point@8':>9}{'point@4':>9}{'inside':>8}{'counted':>8}"
    header += f"{'deletion':>9}{'insertion':>10}{'avg drop':>10}{'increase':>10}"
    lines += [header, "-" * len(header)]
    for method, views in result["methods"].items():
        for view, m in views.items():
            lines.append(
                f"{method:<10}{view:<8}{_number(m['pointing_15px'], True):>9}{_number(m['pointing_8px'], True):>9}"
                f"{_number(m.get('pointing_4px'), True):>9}{_number(m['pointing_0px'], True):>8}"
                f"{m['pointing_counted']:>8}{_number(m['deletion_auc']):>9}{_number(m['insertion_auc']):>10}"
                f"{_number(m['average_drop'] and m['average_drop'] / 100, True):>10}"
                f"{_number(m['increase_in_confidence'] and m['increase_in_confidence'] / 100, True):>10}"
            )
    lines.append("(deletion: lower is better; insertion: higher; average drop: lower; increase: higher)")
    scored = {m.get("faithful_images") for views in result["methods"].values() for m in views.values()}
    explained = {m["images"] for views in result["methods"].values() for m in views.values()}
    if len(scored) == 1 and len(explained) == 1 and 0 < (next(iter(scored)) or 0) < next(iter(explained)):
        lines.append(f"(deletion to increase: on a seeded sample of {next(iter(scored))} of those images)")
    if any(view == "fused" for views in result["methods"].values() for view in views):
        rule = result.get("fusion_rule", cams.DEFAULT_FUSION)
        if rule in cams.FUSION_RULES:
            lines.append(f"fused: {rule}, {cams.FUSION_RULES[rule].description}")
    if result.get("best_map"):
        lines.append(f"best map (pointing game at 8 px): {result['best_map']['method']} {result['best_map']['view']}")
    if all(name in result for name in GALLERIES):
        lines.append(
            f"galleries: {len(result['misclassified'])} misclassified, {len(result['map_misses'])} map misses, "
            f"{len(result['suspect_labels'])} suspect labels"
        )
    if "sanity" in result:
        lines += ["", format_sanity(result["sanity"])]
    return "\n".join(lines)


def format_sanity(sanity: Mapping[str, Any]) -> str:
    """The randomisation test as text: per method the mean Spearman rho after each cumulative stage."""
    stages = list(sanity["stages"])
    lines = [
        f"sanity check: rank correlation of each method's maps with the trained model's, after re-initialising "
        f"from the top down ({sanity['images']} images; near 1 = the map ignores the weights)",
        f"{'method':<12}" + "".join(f"{'+' + s if i else s:>10}" for i, s in enumerate(stages)),
    ]
    for method, values in sanity["methods"].items():
        cells = "".join(f"{_number(values.get(stage)):>10}" for stage in stages)
        lines.append(f"{method:<12}{cells}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- comparing models


def rank(values: Tensor) -> Tensor:
    """Ranks (1-based) of a 1-D tensor, ties sharing their average rank (as Spearman's rho needs)."""
    _, inverse, counts = torch.unique(values, sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    average = ends - (counts.double() - 1) / 2
    return average[inverse]


def spearman(first: Tensor, second: Tensor) -> float:
    """Spearman's rank correlation of two maps of the same shape; NaN when either is constant (undefined)."""
    a, b = rank(first.flatten()), rank(second.flatten())
    a, b = a - a.mean(), b - b.mean()
    scale = float(a.norm() * b.norm())
    return float((a * b).sum()) / scale if scale > 0 else math.nan


def top_overlap(first: Tensor, second: Tensor, fraction: float = 0.1) -> float:
    """IoU of the two maps' top `fraction` of pixels (ties broken by position)."""
    count = max(1, round(fraction * first.numel()))
    a = torch.zeros(first.numel(), dtype=torch.bool)
    b = torch.zeros(second.numel(), dtype=torch.bool)
    a[first.flatten().cpu().topk(count).indices] = True
    b[second.flatten().cpu().topk(count).indices] = True
    return float((a & b).sum()) / float((a | b).sum())


def _method_maps(model: ModelLike, method: str, images: Tensor, classes: Tensor, size: int) -> Tensor:
    """(B, size, size) heatmaps of one method at the model's last block."""
    if method == "cam":
        maps = _cam_maps(model.network, images, classes)[-1]
    else:
        maps = gradcams.make_method(method, model.network)(images, classes).maps
    return cams.heatmap(maps, (size, size))


def compare_models(
    models: Mapping[str, ModelLike] | Sequence[ModelLike],
    dataset: Images,
    method: str = "cam",
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    max_images: int | None = None,
    class_index: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """How alike two or more models' maps are, image by image; plus their per-class average maps.

    Every model explains the same class per image (class_index, or the image's true
    label), its map at its last block upsampled to the first model's image size.
    Returns {'numbers': JSON-able per-pair mean Spearman rho (over the images where
    neither map is flat, counted in 'spearman_images'), mean top-10% IoU and, per class,
    the Spearman rho of the two models' average maps ('average_map_spearman'),
    'maps': {model: {class: (S, S) array}} the average heatmaps, 'std': {class:
    (S, S) array} their pixel-wise standard deviation across models}.
    """
    named = dict(models) if isinstance(models, Mapping) else {_name(m, i): m for i, m in enumerate(models)}
    if len(named) < 2:
        raise ValueError("compare_models needs at least two models")
    first = next(iter(named.values()))
    size, class_names = first.image_size, list(first.class_names)
    pairs = list(itertools.combinations(named, 2))
    sums = {pair: {"spearman": 0.0, "spearman_images": 0, "top10_iou": 0.0} for pair in pairs}
    totals = {name: torch.zeros((len(class_names), size, size)) for name in named}
    per_class = torch.zeros(len(class_names))
    count = 0
    bar = tqdm(total=_count(dataset, max_images), desc="comparing", unit="img", disable=not progress, leave=False)
    with contextlib.ExitStack() as stack:
        stack.callback(bar.close)
        for model in named.values():
            stack.enter_context(gradcams.eval_mode(model.network))
        for raw, labels, _ in _batches(dataset, batch_size, max_images):
            classes = torch.full_like(labels, class_index) if class_index is not None else labels
            heat = {
                name: _method_maps(m, method, _as_input(raw, m.image_size, device), classes.to(device), size).cpu()
                for name, m in named.items()
            }
            for a, b in pairs:
                for first_map, second_map in zip(heat[a], heat[b]):
                    rho = spearman(first_map, second_map)
                    if not math.isnan(rho):  # a flat map has no ranking to compare
                        sums[(a, b)]["spearman"] += rho
                        sums[(a, b)]["spearman_images"] += 1
                    sums[(a, b)]["top10_iou"] += top_overlap(first_map, second_map)
            for name, maps in heat.items():
                totals[name].index_add_(0, labels, maps)
            per_class += torch.bincount(labels, minlength=len(class_names)).float()
            count += len(labels)
            bar.update(len(labels))
    if count == 0:
        raise ValueError("the data set yielded no images")
    averages = {name: t / per_class.clamp_min(1)[:, None, None] for name, t in totals.items()}
    stacked = torch.stack(list(averages.values()))
    seen = [i for i, n in enumerate(per_class.tolist()) if n > 0]
    pair_numbers = {}
    for (a, b), s in sums.items():
        # Gender100's question: do the per-class averages agree, however much single maps differ?
        average_rho = {class_names[i]: spearman(averages[a][i], averages[b][i]) for i in seen}
        pair_numbers[f"{a} vs {b}"] = {
            **_pair_means(s, count),
            "average_map_spearman": {c: None if math.isnan(r) else r for c, r in average_rho.items()},
        }
    numbers = {
        "method": method,
        "images": count,
        "images_per_class": {class_names[i]: int(per_class[i]) for i in seen},
        "pairs": pair_numbers,
    }
    return {
        "numbers": numbers,
        "maps": {name: {class_names[i]: avg[i].numpy() for i in seen} for name, avg in averages.items()},
        "std": {class_names[i]: stacked[:, i].std(dim=0, unbiased=False).numpy() for i in seen},
    }


def _pair_means(sums: Mapping[str, float], count: int) -> dict[str, Any]:
    """Mean rho over the images where it is defined (None if none), mean IoU over all images."""
    defined = int(sums["spearman_images"])
    return {
        "spearman": sums["spearman"] / defined if defined else None,
        "spearman_images": defined,
        "top10_iou": sums["top10_iou"] / count,
    }


def _name(model: ModelLike, index: int) -> str:
    """A model's display name: its checkpoint file's stem when it has one."""
    path = getattr(model, "path", None)
    return f"{index}:{path.name.split('.')[0]}" if path is not None else f"model {index}"
