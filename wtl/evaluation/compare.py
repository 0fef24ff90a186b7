"""Do two or more models look at the same places? Image by image rank correlation and overlap of their maps."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from wtl.evaluation.inputs import Images, ModelLike, as_input, batches, count, model_name
from wtl.evaluation.units import resampler_of, units_of
from wtl.maps import methods as map_methods
from wtl.maps.ops import heatmap
from wtl.metrics.agreement import spearman, top_overlap
from wtl.metrics.bootstrap import DEFAULT_REPLICATES, Resampler, interval
from wtl.nets.modes import eval_mode

# The average maps' rank correlation is recomputed per replicate on whole maps: fewer replicates for it.
AVERAGE_MAP_REPLICATES = 1000


@dataclass(frozen=True)
class CompareOptions:
    """How `compare_models` runs."""

    device: torch.device | str = "cpu"
    batch_size: int = 32
    max_images: int | None = None
    class_index: int | None = None  # explain this class on every image (default: each image's true label)
    progress: bool = True
    bootstrap: int = DEFAULT_REPLICATES  # replicates of the intervals (patients, people or images resampled)
    seed: int = 0


@dataclass
class PairScores:
    """Two models' maps of the same images, compared: per image rho (NaN where a map is flat) and top-10% IoU."""

    spearman: list[float] = field(default_factory=list)
    top10_iou: list[float] = field(default_factory=list)
    average_map_spearman: dict[str, float | None] = field(default_factory=dict)  # per class, of the average maps
    # 95 % bootstrap intervals: of the two means, and per class of the average maps' rho.
    spearman_ci95: list[float] | None = None
    top10_iou_ci95: list[float] | None = None
    average_map_spearman_ci95: dict[str, list[float] | None] = field(default_factory=dict)

    def mean_spearman(self) -> float | None:
        """Mean rho over the images where it is defined (None if none)."""
        defined = [r for r in self.spearman if not math.isnan(r)]
        return sum(defined) / len(defined) if defined else None

    def add_intervals(self, resampler: Resampler) -> None:
        """The intervals of the two per-image means (the resampler's images are this pair's, in order)."""
        for name in ("spearman", "top10_iou"):
            bounds = interval(resampler.mean(np.asarray(getattr(self, name), dtype=float)))
            setattr(self, f"{name}_ci95", None if bounds is None else [bounds[0], bounds[1]])

    def to_json(self) -> dict[str, Any]:
        """The pair's figures as compare.json has them, each with its `_ci95`."""
        return {
            "spearman": self.mean_spearman(),
            "spearman_ci95": self.spearman_ci95,
            "spearman_images": sum(not math.isnan(r) for r in self.spearman),
            "top10_iou": sum(self.top10_iou) / len(self.top10_iou) if self.top10_iou else None,
            "top10_iou_ci95": self.top10_iou_ci95,
            "average_map_spearman": dict(self.average_map_spearman),
            "average_map_spearman_ci95": dict(self.average_map_spearman_ci95),
        }


@dataclass
class Comparison:
    """compare_models' result: per pair of models their scores; per model and class the average map."""

    method: str
    images_per_class: dict[str, int]
    pairs: dict[str, PairScores]  # 'a vs b' -> scores
    maps: dict[str, dict[str, np.ndarray]]  # model -> class -> (S, S) average heatmap
    std: dict[str, np.ndarray]  # class -> (S, S) pixel-wise std of the average maps across models
    bootstrap: dict[str, Any] = field(default_factory=dict)  # the resampling: unit, units, replicates

    @property
    def images(self) -> int:
        """How many images were compared."""
        return sum(self.images_per_class.values())

    def to_json(self) -> dict[str, Any]:
        """The numbers as compare.json has them."""
        return {
            "method": self.method,
            "images": self.images,
            "images_per_class": dict(self.images_per_class),
            "pairs": {pair: scores.to_json() for pair, scores in self.pairs.items()},
            "bootstrap": dict(self.bootstrap),
        }


def compare_models(
    models: Mapping[str, ModelLike] | Sequence[ModelLike],
    dataset: Images,
    method: str = "cam",
    options: CompareOptions | None = None,
    **changes: object,
) -> Comparison:
    """How alike two or more models' maps are, image by image; plus their per-class average maps.

    Every model explains the same class per image (options.class_index, or the image's true
    label), its map at its last block upsampled to the first model's image size. Per pair:
    Spearman's rho and the IoU of the top 10 % of pixels per image, and the rho of the two
    models' per-class average maps (Gender100's question: do the averages agree, however much
    single maps differ?).
    """
    options = dataclasses.replace(options or CompareOptions(), **changes)  # type: ignore[arg-type]
    named = dict(models) if isinstance(models, Mapping) else {model_name(m, i): m for i, m in enumerate(models)}
    if len(named) < 2:
        raise ValueError("compare_models needs at least two models")
    first = next(iter(named.values()))
    size, class_names = first.image_size, list(first.class_names)
    pairs = {pair: PairScores() for pair in itertools.combinations(named, 2)}
    totals = {name: torch.zeros((len(class_names), size, size)) for name in named}
    per_class = torch.zeros(len(class_names))
    files: list[str | None] = []
    unit_sums: dict[str, dict[str, torch.Tensor]] = {name: {} for name in named}  # model -> unit -> (C, S, S)
    unit_counts: dict[str, torch.Tensor] = {}  # unit -> (C,) images per class
    total = count(dataset, options.max_images)
    bar = tqdm(total=total, desc="comparing", unit="img", disable=not options.progress, leave=False)
    with contextlib.ExitStack() as stack:
        stack.callback(bar.close)
        for model in named.values():
            stack.enter_context(eval_mode(model.network))
        for raw, labels, batch_files in batches(dataset, options.batch_size, options.max_images):
            classes = torch.full_like(labels, options.class_index) if options.class_index is not None else labels
            heat = {}
            for name, m in named.items():
                images = as_input(raw, m.image_size, options.device)
                raw_maps = map_methods.last_block(m.network, method, images, classes.to(options.device)).cam
                heat[name] = heatmap(raw_maps, (size, size)).cpu()  # every model's map at the first one's size
            for (a, b), scores in pairs.items():
                for first_map, second_map in zip(heat[a], heat[b]):
                    scores.spearman.append(spearman(first_map, second_map))
                    scores.top10_iou.append(top_overlap(first_map, second_map))
            for name, maps in heat.items():
                totals[name].index_add_(0, labels, maps.float())
            per_class += torch.bincount(labels, minlength=len(class_names)).float()
            _, keys = units_of(dataset, batch_files)
            keys = [f"{len(files) + i}:{k}" if k.startswith("image:") else k for i, k in enumerate(keys)]
            for key, label, row in zip(keys, labels.tolist(), range(len(labels))):
                unit_counts.setdefault(key, torch.zeros(len(class_names)))[label] += 1
                for name, maps in heat.items():
                    sums = unit_sums[name].setdefault(key, torch.zeros((len(class_names), size, size)))
                    sums[label] += maps[row].float()
            files.extend(batch_files)
            bar.update(len(labels))
    if not per_class.sum():
        raise ValueError("the data set yielded no images")
    averages = {name: t / per_class.clamp_min(1)[:, None, None] for name, t in totals.items()}
    stacked = torch.stack(list(averages.values()))
    seen = [i for i, n in enumerate(per_class.tolist()) if n > 0]
    unit, keys = units_of(dataset, files)
    resampler = resampler_of(unit, keys, options.bootstrap, options.seed)
    order = list(unit_counts)
    counts = torch.stack([unit_counts[k] for k in order])  # (G, C)
    averaged = resampler_of(unit, order, min(options.bootstrap, AVERAGE_MAP_REPLICATES), options.seed)
    for (a, b), scores in pairs.items():
        rhos = {class_names[i]: spearman(averages[a][i], averages[b][i]) for i in seen}
        scores.average_map_spearman = {c: None if math.isnan(r) else r for c, r in rhos.items()}
        scores.add_intervals(resampler)
        stacked_a = torch.stack([unit_sums[a][k] for k in order])
        stacked_b = torch.stack([unit_sums[b][k] for k in order])
        for i in seen:
            reps = average_map_replicates(averaged, stacked_a[:, i], stacked_b[:, i], counts[:, i])
            bounds = interval(reps)
            scores.average_map_spearman_ci95[class_names[i]] = None if bounds is None else [bounds[0], bounds[1]]
    return Comparison(
        method=method,
        images_per_class={class_names[i]: int(per_class[i]) for i in seen},
        pairs={f"{a} vs {b}": scores for (a, b), scores in pairs.items()},
        maps={name: {class_names[i]: avg[i].numpy() for i in seen} for name, avg in averages.items()},
        std={class_names[i]: stacked[:, i].std(dim=0, unbiased=False).numpy() for i in seen},
        bootstrap={
            **resampler.describe(),
            "average_map_replicates": averaged.replicates,
        },
    )


def average_map_replicates(
    resampler: Resampler, sums_a: torch.Tensor, sums_b: torch.Tensor, counts: torch.Tensor, chunk: int = 100
) -> np.ndarray:
    """(B,) replicates of Spearman's rho between two models' average maps of one class.

    sums_* (G, S, S): per unit the sum of that model's maps of the class, counts (G,) their images;
    a replicate's average map is sum_g n*_g sums_g / sum_g n*_g counts_g (ranks without tie averaging:
    averaged maps are continuous).
    """
    flat_a, flat_b = sums_a.flatten(1).double(), sums_b.flatten(1).double()
    out = np.full(resampler.replicates, np.nan)
    for start in range(0, resampler.replicates, chunk):
        weights = torch.from_numpy(resampler.counts[start : start + chunk].astype(np.float64))
        images = weights @ counts.double()
        ranks = []
        for flat in (flat_a, flat_b):
            mean = (weights @ flat) / images.clamp_min(1)[:, None]
            ranks.append(mean.argsort(dim=1).argsort(dim=1).double())
        first, second = (r - r.mean(dim=1, keepdim=True) for r in ranks)
        rho = (first * second).sum(1) / (first.norm(dim=1) * second.norm(dim=1)).clamp_min(1e-12)
        out[start : start + len(rho)] = np.where(images.numpy() > 0, rho.numpy(), np.nan)
    return out
