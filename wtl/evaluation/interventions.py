"""evaluate's intervention test, image by image: remove the ground truth, an equal control, and the map's top region.

For each explained picture with ground truth (the stain mask, or any mask a user gives) in the
seeded sample, metrics.intervention fills the dilated region from the cell around it, a region of
the same shape and area elsewhere in the cell (the control), and each method's own top region of
that area; the explained class's probability is asked again after each. Cells with a suspect
label (galleries.suspect_label) are intervened on too, whether sampled or not, for the report's
gallery; the figures are computed over the sample alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from wtl.metrics.bootstrap import Resampler, interval
from wtl.metrics.intervention import DILATION_PX, FILL, intervention_regions, probabilities_after, top_region

REGIONS = ("truth", "control")


def _nan(count: int) -> np.ndarray:
    return np.full(count, np.nan)


@dataclass
class InterventionScores:
    """Per image (N,) the explained class's probability before and after each removal, NaN where not done.

    `top[method]` is after removing that method's own top region; `flipped_*` 1.0 where the
    prediction changed, 0.0 where not; `sampled` marks the images the figures are over.
    """

    before: np.ndarray
    after: dict[str, np.ndarray]  # 'truth', 'control' -> (N,)
    top: dict[str, np.ndarray]  # method -> (N,)
    flipped: dict[str, np.ndarray]  # 'truth', 'control', 'top:<method>' -> (N,)
    sampled: np.ndarray  # (N,) bool
    translated: np.ndarray  # (N,) 1.0 where the control is the region moved, 0.0 where it had no room (NaN: none)
    area: np.ndarray  # (N,) px of the dilated region
    fill: str = FILL
    dilation: int = DILATION_PX

    @classmethod
    def empty(cls, count: int, methods: Sequence[str]) -> InterventionScores:
        """Nothing measured yet, for `count` images."""
        return cls(
            before=_nan(count),
            after={r: _nan(count) for r in REGIONS},
            top={m: _nan(count) for m in methods},
            flipped={**{r: _nan(count) for r in REGIONS}, **{f"top:{m}": _nan(count) for m in methods}},
            sampled=np.zeros(count, dtype=bool),
            translated=_nan(count),
            area=_nan(count),
        )

    @property
    def images(self) -> int:
        """How many sampled images were intervened on."""
        return int((self.sampled & ~np.isnan(self.before)).sum())

    def drop(self, region: str) -> np.ndarray:
        """(N,) before minus after for 'truth', 'control' or 'top:<method>'."""
        after = self.top[region[4:]] if region.startswith("top:") else self.after[region]
        return self.before - after

    def rows(self) -> list[str]:
        """The regions reported, in order: the ground truth, the control, each method's top region."""
        return [*REGIONS, *(f"top:{m}" for m in self.top)]

    def to_json(self, resampler: Resampler | None = None) -> dict[str, Any]:
        """Mean drop and share flipped per region (over the sample), with their intervals and the paired difference."""
        where = self.sampled & ~np.isnan(self.before)
        out: dict[str, Any] = {
            "fill": self.fill,
            "dilation_px": self.dilation,
            "images": self.images,
            "controls_not_translated": int(np.nansum(1 - self.translated[where])) if where.any() else 0,
            "mean_area_px": float(np.nanmean(self.area[where])) if where.any() else None,
            "before": _mean(self.before, where),
        }
        for region in self.rows():
            drop, flipped = self.drop(region), self.flipped[region]
            row: dict[str, Any] = {"mean_drop": _mean(drop, where), "flipped": _mean(flipped, where)}
            if resampler is not None:
                row["mean_drop_ci95"] = _ci(resampler.mean(drop, where))
                row["flipped_ci95"] = _ci(resampler.mean(flipped, where))
                if region != "control":
                    paired = resampler.mean(drop, where) - resampler.mean(self.drop("control"), where)
                    row["drop_minus_control_ci95"] = _ci(paired)
            out[region] = row
        return out


def _mean(values: np.ndarray, where: np.ndarray) -> float | None:
    chosen = values[where & ~np.isnan(values)]
    return float(chosen.mean()) if len(chosen) else None


def _ci(replicates: np.ndarray) -> list[float] | None:
    bounds = interval(replicates)
    return None if bounds is None else [bounds[0], bounds[1]]


@dataclass
class InterventionBatches:
    """Collects the per-image numbers batch by batch (original indices), made InterventionScores at the end."""

    methods: Sequence[str]
    parts: list[tuple[np.ndarray, dict[str, np.ndarray]]] = field(default_factory=list)

    @torch.no_grad()
    def add(
        self,
        network: nn.Module,
        images: Tensor,
        masks: Tensor,
        classes: Tensor,
        indices: np.ndarray,
        sampled: np.ndarray,
        heats: Mapping[str, Tensor] | None = None,
        logits: Tensor | None = None,
    ) -> None:
        """Intervene on (B, 3, S, S) images with non-empty (B, S, S) masks; `heats` method -> (B, S, S) maps.

        `logits` (B, C) are the images' own, where the caller has them (else they are asked here).
        """
        if not len(images):
            return
        regions = intervention_regions(images, masks)
        if logits is None:
            logits = network(images)
        before = logits.softmax(1).gather(1, classes[:, None]).squeeze(1)
        predicted = logits.argmax(1)
        values: dict[str, np.ndarray] = {
            "before": before.double().cpu().numpy(),
            "sampled": sampled.astype(float),
            "translated": regions.translated.double().numpy(),
            "area": regions.truth.flatten(1).sum(1).double().cpu().numpy(),
        }
        chosen = {"truth": regions.truth, "control": regions.control}
        for method, heat in (heats or {}).items():
            chosen[f"top:{method}"] = torch.stack(
                [
                    top_region(heat[b].cpu(), regions.cells[b].cpu(), int(regions.truth[b].sum()))
                    for b in range(len(images))
                ]
            ).to(images.device)
        # Every region of every picture is filled and asked again in one pass (the fill is picture by picture).
        times = len(chosen)
        after, now = probabilities_after(
            network,
            images.repeat(times, 1, 1, 1),
            torch.cat(list(chosen.values())),
            classes.repeat(times),
            regions.cells.repeat(times, 1, 1),
        )
        for name, part, guess in zip(chosen, after.split(len(images)), now.split(len(images))):
            values[f"after:{name}"] = part.double().cpu().numpy()
            values[f"flipped:{name}"] = (guess != predicted).double().cpu().numpy()
        self.parts.append((np.asarray(indices), values))

    def scores(self, total: int) -> InterventionScores:
        """The collected numbers over `total` images."""
        scores = InterventionScores.empty(total, self.methods)
        for indices, values in self.parts:
            scores.before[indices] = values["before"]
            scores.sampled[indices] = values["sampled"] > 0
            scores.translated[indices] = values["translated"]
            scores.area[indices] = values["area"]
            for key, value in values.items():
                kind, _, name = key.partition(":")
                if kind == "after":
                    target = scores.top[name[4:]] if name.startswith("top:") else scores.after[name]
                    target[indices] = value
                elif kind == "flipped":
                    scores.flipped[name][indices] = value
        return scores
