"""How bright is a healthy cell's picture against an infected one's, per image and on the model's shared scale?

`scale_study` reads a data set once and keeps, per picture, what the default picture (the last
block's CAM of its predicted class) looks like under each scale: per image the map is stretched
to [0, 1], so its peak is always 1; on the model's scale its strength is |evidence| / scale,
clipped to 1. It also keeps the evidence's own numbers (log-odds, bias, how concentrated the
positive evidence is, how much of it lies on the cell) and, for the Parasitized cells with a
stain, the pointing game of the Parasitized map under each scale. The summary carries bootstrap
intervals over patients (the units of evaluation.units).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from wtl.evaluation.inputs import Images, ModelLike, as_input, batches, count
from wtl.evaluation.units import resampler_of, units_of
from wtl.maps.cam import explain_every_block, explain_last_block
from wtl.maps.ops import heatmap, upsample
from wtl.maps.registry import class_of_interest
from wtl.metrics.bootstrap import DEFAULT_REPLICATES, Resampler, interval, unit_count
from wtl.metrics.localisation import peak_distances, within
from wtl.metrics.stain import cell_mask, stain_mask
from wtl.nets.modes import eval_mode
from wtl.nets.seed import NetworkMultiLoss

# The share of positions whose positive evidence is summed for "how concentrated is it".
TOP_SHARE = 0.1
PER_IMAGE = (
    "label",
    "predicted",
    "image_peak",
    "image_mean",
    "model_peak",
    "model_mean",
    "evidence_peak",
    "log_odds",
    "bias",
    "top10_share",
    "cell_excess",
    "distance_image",
    "distance_model",
)


@dataclass
class ScaleStudy:
    """Per picture (N,) arrays of PER_IMAGE, the scale they were drawn against, and the pictures' units."""

    scale: float
    scale_source: str
    class_names: list[str]
    values: dict[str, np.ndarray]
    unit: str = "image"
    units: list[str] = field(default_factory=list)

    def resampler(self, replicates: int = DEFAULT_REPLICATES, seed: int = 0) -> Resampler:
        """The bootstrap draws of the pictures' units."""
        return resampler_of(self.unit, self.units, replicates, seed)

    def summary(self, replicates: int = DEFAULT_REPLICATES, seed: int = 0) -> dict[str, Any]:
        """Means with 95 % intervals per true class (the picture as drawn) and the pointing game under each scale."""
        resampler = self.resampler(replicates, seed)
        label, predicted = self.values["label"], self.values["predicted"]
        out: dict[str, Any] = {"scale": self.scale, "scale_source": self.scale_source, **resampler.describe()}
        per_class: dict[str, Any] = {}
        for c, name in enumerate(self.class_names):
            chosen = label == c
            row: dict[str, Any] = {"images": int(chosen.sum())}
            for key in ("image_peak", "image_mean", "model_peak", "model_mean"):
                row[key], row[f"{key}_ci95"] = _mean(resampler, self.values[key], chosen)
            # The evidence of cells predicted right: what the class's own picture is made of.
            right = chosen & (predicted == c)
            row["right"] = int(right.sum())
            for key in ("evidence_peak", "log_odds", "bias", "top10_share", "cell_excess"):
                row[key], row[f"{key}_ci95"] = _mean(resampler, self.values[key], right)
            per_class[name] = row
        out["classes"] = per_class
        if len(self.class_names) == 2:
            healthy = np.where(label == 0, 1.0, 0.0)
            infected = np.where(label == 1, 1.0, 0.0)
            for key in ("image_peak", "image_mean", "model_peak", "model_mean"):
                ratio = resampler.ratio(self.values[key] * healthy, healthy) / resampler.ratio(
                    self.values[key] * infected, infected
                )
                healthy_mean = _plain_mean(self.values[key], label == 0)
                infected_mean = _plain_mean(self.values[key], label == 1)
                first = healthy_mean / infected_mean if healthy_mean is not None and infected_mean else None
                out[f"{key}_ratio"], out[f"{key}_ratio_ci95"] = first, interval(ratio)
        measured = ~np.isnan(self.values["distance_image"]) & ~np.isnan(self.values["distance_model"])
        out["pointing_counted"] = int(measured.sum())
        for tolerance in (0.0, 8.0):
            paired: dict[str, np.ndarray] = {}
            for scale in ("image", "model"):
                distance = np.nan_to_num(self.values[f"distance_{scale}"])
                hits = np.where(measured, within(torch.from_numpy(distance), tolerance).numpy(), 0.0)
                key = f"pointing_{tolerance:g}px_{scale}"
                out[key] = _plain_mean(hits, measured)
                paired[scale] = resampler.ratio(hits * measured, measured.astype(float))
                out[f"{key}_ci95"] = interval(paired[scale])
            # Paired: the same cells resampled for both scales.
            out[f"pointing_{tolerance:g}px_difference_ci95"] = interval(paired["model"] - paired["image"])
        return out


def _plain_mean(values: np.ndarray, where: np.ndarray) -> float | None:
    chosen = values[where & ~np.isnan(values)]
    return float(chosen.mean()) if len(chosen) else None


def _mean(resampler: Resampler, values: np.ndarray, where: np.ndarray) -> tuple[float | None, Any]:
    return _plain_mean(values, where), interval(resampler.mean(values, where))


def picture_numbers(
    evidence: torch.Tensor, bias: torch.Tensor, cam: torch.Tensor, images: torch.Tensor, scale: float
) -> dict[str, torch.Tensor]:
    """Per picture the brightness of its map under each scale and the evidence's numbers, (B,) each.

    evidence (B, h, w) log-odds, bias (B,), cam (B, h, w) the map the per-image picture stretches,
    images (B, 3, S, S). image_peak/mean: the stretched map's max and mean; model_peak/mean: those
    of min(1, |evidence| / scale) at the input size; top10_share: the share of the positive evidence
    in the top TOP_SHARE of positions; cell_excess: the share of positive evidence on the cell divided
    by the cell's share of the picture (1: spread like the cell, > 1: on the cell more than off it).
    """
    size = tuple(images.shape[-2:])
    stretched = heatmap(cam, size)
    strength = (upsample(evidence, size).abs() / scale).clamp(max=1.0)
    positive = evidence.clamp_min(0).flatten(1)
    top = max(1, round(TOP_SHARE * positive.shape[1]))
    total = positive.sum(1)
    top_share = positive.topk(top, dim=1).values.sum(1) / total.clamp_min(1e-12)
    cells = torch.stack([cell_mask(image) for image in images]).float()
    spread = upsample(evidence, size).clamp_min(0)
    on_cell = (spread * cells).flatten(1).sum(1) / spread.flatten(1).sum(1).clamp_min(1e-12)
    excess = on_cell / cells.flatten(1).mean(1).clamp_min(1e-12)
    nothing = total <= 0
    return {
        "image_peak": stretched.flatten(1).amax(1),
        "image_mean": stretched.flatten(1).mean(1),
        "model_peak": strength.flatten(1).amax(1),
        "model_mean": strength.flatten(1).mean(1),
        "evidence_peak": evidence.flatten(1).amax(1),
        "log_odds": evidence.flatten(1).mean(1) + bias,
        "bias": bias,
        "top10_share": torch.where(nothing, torch.nan, top_share),
        "cell_excess": torch.where(nothing, torch.nan, excess),
    }


def _last_block(network: torch.nn.Module, images: torch.Tensor, classes: torch.Tensor | None) -> Any:
    if isinstance(network, NetworkMultiLoss):
        every = explain_every_block(network, images, classes)
        assert every.evidences is not None and every.evidence_biases is not None
        return every.logits, every.class_index, every.cams[-1], every.evidences[-1], every.evidence_biases[-1]
    last = explain_last_block(network, images, classes)
    return last.logits, last.class_index, last.cam, last.evidence, last.evidence_bias


def scale_study(
    model: ModelLike,
    dataset: Images,
    scale: float,
    scale_source: str = "",
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    progress: bool = True,
) -> ScaleStudy:
    """Read `dataset` once: per picture its default picture's brightness under each scale (see picture_numbers).

    For a model with a Parasitized class, the Parasitized cells with a stain also get the pointing
    game of the Parasitized map stretched per image (distance_image) and on the shared scale
    (distance_model); NaN elsewhere.
    """
    network, names = model.network, list(model.class_names)
    target = class_of_interest(names)
    parts: dict[str, list[np.ndarray]] = {key: [] for key in PER_IMAGE}
    files: list[str | None] = []
    bar = tqdm(total=count(dataset, None), desc="scale study", unit="img", disable=not progress, leave=False)
    with contextlib.ExitStack() as stack, torch.no_grad():
        stack.callback(bar.close)
        stack.enter_context(eval_mode(network))
        for raw, labels, batch_files in batches(dataset, batch_size, None):
            images = as_input(raw, model.image_size, device)
            logits, classes, cam, evidence, bias = _last_block(network, images, None)
            numbers = picture_numbers(evidence, bias, cam, images, scale)
            distances = {"image": np.full(len(labels), np.nan), "model": np.full(len(labels), np.nan)}
            if target is not None:
                masks = torch.stack([stain_mask(image.cpu()) for image in images])
                chosen = (labels == target) & masks.flatten(1).any(1)
                if bool(chosen.any()):
                    where = chosen.to(images.device)
                    _, _, cam_t, evidence_t, _ = _last_block(network, images[where], torch.tensor(target))
                    size = tuple(images.shape[-2:])
                    index = chosen.numpy()
                    distances["image"][index] = peak_distances(heatmap(cam_t, size).cpu(), masks[chosen]).numpy()
                    model_map = upsample(evidence_t, size).cpu()
                    distances["model"][index] = peak_distances(model_map, masks[chosen]).numpy()
            parts["label"].append(labels.numpy().astype(float))
            parts["predicted"].append(classes.cpu().numpy().astype(float))
            for key, value in numbers.items():
                parts[key].append(value.double().cpu().numpy())
            parts["distance_image"].append(distances["image"])
            parts["distance_model"].append(distances["model"])
            files.extend(batch_files)
            bar.update(len(labels))
    values = {key: np.concatenate(chunks) for key, chunks in parts.items()}
    unit, units = units_of(dataset, files)
    return ScaleStudy(scale, scale_source, names, values, unit, units)


def format_study(summary: dict[str, Any], class_names: list[str]) -> str:
    """The study as the text `where_to_look.py scale` prints."""

    def cell(value: float | None, bounds: Any, digits: int = 2) -> str:
        if value is None:
            return "-"
        text = f"{value:.{digits}f}"
        return text + (f" [{bounds[0]:.{digits}f}, {bounds[1]:.{digits}f}]" if bounds else "")

    lines = [
        f"shared scale: {summary['scale']:.3g} ({summary['scale_source']}); intervals: 95 % bootstrap over "
        f"{unit_count(summary['units'], summary['unit'])}, {summary['replicates']} replicates",
        "",
        "brightness of the default picture (the last block's CAM of the predicted class), mean [95 % interval]:",
        f"{'true class':<14}{'n':>6}  {'per image: peak':>24}{'mean':>24}  {'model scale: peak':>24}{'mean':>24}",
    ]
    for name in class_names:
        row = summary["classes"][name]
        lines.append(
            f"{name:<14}{row['images']:>6}  "
            + "".join(
                f"{cell(row[k], row[k + '_ci95']):>24}"
                for k in ("image_peak", "image_mean", "model_peak", "model_mean")
            )
        )
    if "model_peak_ratio" in summary:
        lines.append(
            f"{class_names[0] + '/' + class_names[1]:<20}  "  # class 0 over class 1: healthy over infected
            + "".join(
                f"{cell(summary[k + '_ratio'], summary[k + '_ratio_ci95']):>24}"
                for k in ("image_peak", "image_mean", "model_peak", "model_mean")
            )
        )
    lines += ["", "the evidence of pictures predicted right (log-odds of their class against the other):"]
    lines.append(
        f"{'class':<14}{'n':>6}{'peak':>22}{'log-odds':>22}{'bias':>22}{'top-10% share':>22}{'on cell / area':>22}"
    )
    for name in class_names:
        row = summary["classes"][name]
        keys = ("evidence_peak", "log_odds", "bias", "top10_share", "cell_excess")
        lines.append(f"{name:<14}{row['right']:>6}" + "".join(f"{cell(row[k], row[k + '_ci95']):>22}" for k in keys))
    if summary.get("pointing_counted"):
        lines += [
            "",
            f"pointing game of the Parasitized map on {summary['pointing_counted']} stained Parasitized cells:",
        ]
        for scale in ("image", "model"):
            inside = cell(summary[f"pointing_0px_{scale}"], summary[f"pointing_0px_{scale}_ci95"], 3)
            near = cell(summary[f"pointing_8px_{scale}"], summary[f"pointing_8px_{scale}_ci95"], 3)
            lines.append(f"  {scale + ' scale':<12} inside the stain {inside}   within 8 px {near}")
        differences = [
            f"{label} {interval_text(summary[f'pointing_{t}px_difference_ci95'])}"
            for t, label in (("0", "inside"), ("8", "within 8 px"))
        ]
        lines.append(f"  model minus image, paired 95 % interval: {', '.join(differences)}")
    return "\n".join(lines)


def interval_text(bounds: Any) -> str:
    """[low, high] with 3 decimals ('-' without an interval)."""
    return "-" if bounds is None else f"[{bounds[0]:+.3f}, {bounds[1]:+.3f}]"
