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
from wtl.maps import methods as map_methods
from wtl.maps.ops import heatmap
from wtl.metrics.agreement import spearman, top_overlap
from wtl.nets.modes import eval_mode


@dataclass(frozen=True)
class CompareOptions:
    """How `compare_models` runs."""

    device: torch.device | str = "cpu"
    batch_size: int = 32
    max_images: int | None = None
    class_index: int | None = None  # explain this class on every image (default: each image's true label)
    progress: bool = True


@dataclass
class PairScores:
    """Two models' maps of the same images, compared: per image rho (NaN where a map is flat) and top-10% IoU."""

    spearman: list[float] = field(default_factory=list)
    top10_iou: list[float] = field(default_factory=list)
    average_map_spearman: dict[str, float | None] = field(default_factory=dict)  # per class, of the average maps

    def mean_spearman(self) -> float | None:
        """Mean rho over the images where it is defined (None if none)."""
        defined = [r for r in self.spearman if not math.isnan(r)]
        return sum(defined) / len(defined) if defined else None

    def to_json(self) -> dict[str, Any]:
        """The pair's figures as compare.json has them."""
        return {
            "spearman": self.mean_spearman(),
            "spearman_images": sum(not math.isnan(r) for r in self.spearman),
            "top10_iou": sum(self.top10_iou) / len(self.top10_iou) if self.top10_iou else None,
            "average_map_spearman": dict(self.average_map_spearman),
        }


@dataclass
class Comparison:
    """compare_models' result: per pair of models their scores; per model and class the average map."""

    method: str
    images_per_class: dict[str, int]
    pairs: dict[str, PairScores]  # 'a vs b' -> scores
    maps: dict[str, dict[str, np.ndarray]]  # model -> class -> (S, S) average heatmap
    std: dict[str, np.ndarray]  # class -> (S, S) pixel-wise std of the average maps across models

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
    total = count(dataset, options.max_images)
    bar = tqdm(total=total, desc="comparing", unit="img", disable=not options.progress, leave=False)
    with contextlib.ExitStack() as stack:
        stack.callback(bar.close)
        for model in named.values():
            stack.enter_context(eval_mode(model.network))
        for raw, labels, _ in batches(dataset, options.batch_size, options.max_images):
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
            bar.update(len(labels))
    if not per_class.sum():
        raise ValueError("the data set yielded no images")
    averages = {name: t / per_class.clamp_min(1)[:, None, None] for name, t in totals.items()}
    stacked = torch.stack(list(averages.values()))
    seen = [i for i, n in enumerate(per_class.tolist()) if n > 0]
    for (a, b), scores in pairs.items():
        rhos = {class_names[i]: spearman(averages[a][i], averages[b][i]) for i in seen}
        scores.average_map_spearman = {c: None if math.isnan(r) else r for c, r in rhos.items()}
    return Comparison(
        method=method,
        images_per_class={class_names[i]: int(per_class[i]) for i in seen},
        pairs={f"{a} vs {b}": scores for (a, b), scores in pairs.items()},
        maps={name: {class_names[i]: avg[i].numpy() for i in seen} for name, avg in averages.items()},
        std={class_names[i]: stacked[:, i].std(dim=0, unbiased=False).numpy() for i in seen},
    )
