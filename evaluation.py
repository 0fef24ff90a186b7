"""How good are a model and its heatmaps? Accuracy, pointing game, deletion/insertion, average drop.

Pure tensor functions (stain_mask, pointing_hit, deletion_insertion,
average_drop_increase) and drivers (evaluate, compare_models) that run them over
a data set in batches. The drivers return plain dicts of numbers (JSON-able) so a
CLI can print them with `format_table`, save them, or chart them (charts.py).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence, Sized
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
POINTING_TOLERANCES = (15.0, 8.0, 0.0)
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


def pointing_hit(heatmap: Tensor, mask: Tensor, tolerance_px: float) -> bool | None:
    """Whether the heatmap's maximum lies within tolerance_px (Euclidean) of a mask pixel; None for an empty mask."""
    if heatmap.shape != mask.shape or heatmap.ndim != 2:
        raise ValueError(f"heatmap {tuple(heatmap.shape)} and mask {tuple(mask.shape)} must be the same (H, W)")
    points = torch.nonzero(mask).float()
    if len(points) == 0:
        return None
    width = heatmap.shape[1]
    peak = int(heatmap.flatten().argmax())
    where = torch.tensor([peak // width, peak % width], dtype=torch.float32, device=points.device)
    return bool(((points - where).pow(2).sum(dim=1).min()) <= tolerance_px**2)


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


def _batches(dataset: Images, batch_size: int, limit: int | None) -> Iterable[tuple[Tensor, Tensor]]:
    """(uint8 or float images, labels) batches from an iterable of (image, label), at most `limit` images."""
    images: list[Tensor] = []
    labels: list[int] = []
    # A torch Dataset need not be iterable: read a map-style one by index.
    items = (dataset[i] for i in range(len(dataset))) if isinstance(dataset, IndexedImages) else iter(dataset)
    for image, label in itertools.islice(items, limit):
        images.append(image)
        labels.append(int(label))
        if len(images) == batch_size:
            yield torch.stack(images), torch.tensor(labels)
            images, labels = [], []
    if images:
        yield torch.stack(images), torch.tensor(labels)


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


def _views(model: ModelLike, method: str, images: Tensor, classes: Tensor) -> dict[str, Tensor]:
    """One method's (B, H, W) heatmaps in [0, 1]: view 'last', or 'block1'..'block4' and 'fused' (every-block)."""
    network, size = model.network, (images.shape[-2], images.shape[-1])
    if method == "cam":
        maps = _cam_maps(network, images, classes)
    else:
        every = isinstance(network, NetworkMultiLoss)
        layers = gradcams.block_layers(network) if every else [gradcams.default_target_layer(network)]
        maps = [gradcams.make_method(method, network, layer)(images, classes).maps for layer in layers]
    if len(maps) == 1:
        return {"last": cams.heatmap(maps[0], size)}
    views = {f"block{i}": cams.heatmap(m, size) for i, m in enumerate(maps, start=1)}
    views["fused"] = gradcams.fuse_maps(maps, size)
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
        out.update({k: (v / self.faithful if self.faithful else None) for k, v in self.sums.items()})
        return out


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
) -> dict[str, Any]:
    """Accuracy and heatmap quality of a model on a data set of (uint8 image, label); a JSON-able dict.

    The class explained is Parasitized for a malaria model (its maps are judged on
    the Parasitized cells, and the pointing game on those whose stain mask is not
    empty); for any other model, each image's true class on every image.
    Methods: 'cam' (cams.py) and the keys of gradcams.METHODS; for an every-block
    model each method is judged on every block and on the fused map. `steps` is
    deletion/insertion's; faithfulness=False skips those and the average drop (the
    costly part, steps + 2 forward passes per map), leaving the pointing game.
    """
    unknown = [m for m in methods if m != "cam" and m not in gradcams.METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)} (expected cam or {', '.join(gradcams.METHODS)})")
    network, names = model.network, list(model.class_names)
    target = names.index(PARASITIZED) if PARASITIZED in names else None
    truths: list[Tensor] = []
    predictions: list[Tensor] = []
    block_predictions: list[list[Tensor]] = [[] for _ in range(4)]
    tallies: dict[str, dict[str, _Tally]] = {m: {} for m in methods}
    bar = tqdm(total=_count(dataset, max_images), desc="evaluating", unit="img", disable=not progress, leave=False)
    with contextlib.ExitStack() as stack:
        stack.callback(bar.close)
        stack.enter_context(gradcams.eval_mode(network))  # the caller's train/eval mode comes back afterwards
        for raw, labels in _batches(dataset, batch_size, max_images):
            images = _as_input(raw, model.image_size, device)
            labels = labels.to(images.device)
            with torch.no_grad():
                if isinstance(network, NetworkMultiLoss):
                    block_logits = cams.explain_every_block(network, images).block_logits
                    for i, logits in enumerate(block_logits):
                        block_predictions[i].append(logits.argmax(1).cpu())
                    logits = block_logits[-1]
                else:
                    logits = network(images)
            truths.append(labels.cpu())
            predictions.append(logits.argmax(1).cpu())
            chosen = labels == target if target is not None else torch.ones_like(labels, dtype=torch.bool)
            if bool(chosen.any()):
                _judge(model, images[chosen], labels[chosen], target, methods, tallies, steps if faithfulness else 0)
            bar.update(len(labels))
    if not truths:
        raise ValueError("the data set yielded no images")
    truth = torch.cat(truths)
    result: dict[str, Any] = {
        "classification": classification_report(truth, torch.cat(predictions), names),
        "explained_class": names[target] if target is not None else "true class",
        "methods": {m: {view: tally.result() for view, tally in views.items()} for m, views in tallies.items()},
    }
    if isinstance(network, NetworkMultiLoss):
        result["blocks"] = {
            f"block{i}": classification_report(truth, torch.cat(p), names)
            for i, p in enumerate(block_predictions, start=1)
        }
    return result


def _judge(
    model: ModelLike,
    images: Tensor,
    labels: Tensor,
    target: int | None,
    methods: Sequence[str],
    tallies: dict[str, dict[str, _Tally]],
    steps: int,
) -> None:
    """Add one batch's pointing game and, unless steps is 0, its faithfulness numbers to every method's tallies."""
    classes = torch.full_like(labels, target) if target is not None else labels
    masks = [stain_mask(image.cpu()) for image in images] if target is not None else []
    for method in methods:
        for view, heat in _views(model, method, images, classes).items():
            tally = tallies[method].setdefault(view, _Tally())
            for heatmap, mask in zip(heat.cpu(), masks):
                for tolerance in POINTING_TOLERANCES:
                    hit = pointing_hit(heatmap, mask, tolerance)
                    tally.hits[tolerance] += int(bool(hit))
                tally.counted += int(bool(mask.any()))
            tally.images += len(images)
            if not steps:
                continue
            deletion, insertion = deletion_insertion(model.network, images, heat, classes, steps)
            drop, increased = drop_and_increase(model.network, images, heat, classes)
            tally.sums["deletion_auc"] += float(deletion.sum())
            tally.sums["insertion_auc"] += float(insertion.sum())
            tally.sums["average_drop"] += float(drop.sum())
            tally.sums["increase_in_confidence"] += float(increased.float().sum() * 100)
            tally.faithful += len(images)


def _number(value: Any, percent: bool = False) -> str:
    """A table cell: '-' for None, else 3 decimals (or a percentage with 1)."""
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if percent else f"{value:.3f}"


def format_table(result: Mapping[str, Any]) -> str:
    """The evaluation as readable text: accuracy per head, then one row per method and view."""
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
    header = f"{'method':<10}{'view':<8}{'point@15':>9}{'point@8':>9}{'inside':>8}{'counted':>8}{'deletion':>9}"
    header += f"{'insertion':>10}"
    header += f"{'avg drop':>10}{'increase':>10}"
    lines += [header, "-" * len(header)]
    for method, views in result["methods"].items():
        for view, m in views.items():
            lines.append(
                f"{method:<10}{view:<8}{_number(m['pointing_15px'], True):>9}{_number(m['pointing_8px'], True):>9}"
                f"{_number(m['pointing_0px'], True):>8}{m['pointing_counted']:>8}"
                f"{_number(m['deletion_auc']):>9}{_number(m['insertion_auc']):>10}"
                f"{_number(m['average_drop'] and m['average_drop'] / 100, True):>10}"
                f"{_number(m['increase_in_confidence'] and m['increase_in_confidence'] / 100, True):>10}"
            )
    lines.append("(deletion: lower is better; insertion: higher; average drop: lower; increase: higher)")
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
    neither map is flat, counted in 'spearman_images') and mean top-10% IoU,
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
        for raw, labels in _batches(dataset, batch_size, max_images):
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
    numbers = {
        "method": method,
        "images": count,
        "images_per_class": {class_names[i]: int(per_class[i]) for i in seen},
        "pairs": {f"{a} vs {b}": _pair_means(s, count) for (a, b), s in sums.items()},
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
