"""Is this picture like the training pictures? Scores on the network's own features, and thresholds.

Every score grows as a picture gets less like the training data:

- mahalanobis_last: min_c (f - mu_c)^T P (f - mu_c), f the picture's globally average-pooled last-block
  features (what the classifier reads), mu_c the mean of class c's training pictures, P the inverse
  of the classes' shared (pooled within-class) covariance, shrunk towards its mean variance
  (Sigma_s = (1 - a) Sigma + a tr(Sigma)/D I, a = SHRINKAGE) so that it can be inverted
  (Lee et al., NeurIPS 2018).
- mahalanobis: the same distance d_b for the pooled features of every block b, each divided by its
  own threshold t_b (its QUANTILE-quantile over the validation pictures), combined over the blocks
  by their geometric mean: exp(mean_b log(d_b / t_b)) (Lee et al.'s feature ensemble, with equal
  weights). A picture somewhat far from the training pictures at every depth scores high: the last
  block of a malaria model sees a face much as an uninfected cell (no parasite anywhere), its
  first blocks see colours no cell has. The geometric mean rather than the largest ratio: one block's
  heavy tail on validation pictures raised the maximum's threshold so far that the gender model let
  7.5 % of a sample of the shared cells through (the geometric mean: 4.3 % of all of them at the 99th
  percentile, 0.9 % at the 98th; docs/ood.md).
- energy: -T logsumexp(logits / T), T = 1 (Liu et al., NeurIPS 2020): low where some class is confident.

The threshold of each score is its QUANTILE-quantile over the validation split's pictures (the
training split's where there is none), so about 1 - QUANTILE of new pictures like the training
data are flagged. Which score decides is DEFAULT_SCORE, picked by the measurements in docs/ood.md.
The statistics travel in a checkpoint under the key 'ood' (`to_dict`), or beside it as
`<name>.ood.npz` (names.ood_file) for checkpoints trained before them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from wtl.maps.explain import Result
from wtl.nets import blocks as net_blocks
from wtl.nets.modes import eval_mode

SCORES = ("mahalanobis", "mahalanobis_last", "energy")
DEFAULT_SCORE = "mahalanobis"
# The 98th percentile of the validation pictures: with the 99th the gender model let 4.3 % of the shared cells
# through and the last-block malaria model 4.7 % of the faces; with the 98th 0.9 % and 0.7 %, at 1.8 % of unseen
# faces and 2.3 % of unseen cells flagged (docs/ood.md).
QUANTILE = 0.98
SHRINKAGE = 0.001
TEMPERATURE = 1.0
CHUNK = 64  # pictures per forward pass
DESCRIPTIONS = {
    "mahalanobis": "geometric mean over the blocks of the Mahalanobis distance relative to its threshold",
    "mahalanobis_last": "Mahalanobis distance of the last block's pooled features",
    "energy": "energy of the logits",
}


@dataclass(frozen=True)
class OODStatistics:
    """What scoring a picture needs: per block the class means and shared precision of its pooled features."""

    means: list[Tensor]  # per block (C, D_b): each class's mean pooled features over the training pictures
    precisions: list[Tensor]  # per block (D_b, D_b): inverse of the shrunk shared covariance
    block_thresholds: list[float]  # per block t_b: its distance's QUANTILE-quantile over the validation pictures
    thresholds: dict[str, float]  # per score of SCORES: above it a picture is unlike the training data
    score: str = DEFAULT_SCORE  # the score that decides
    quantile: float = QUANTILE
    fitted_on: str = ""  # e.g. 'training split, 4004 pictures'
    chosen_on: str = ""  # e.g. 'validation split, 557 pictures'

    @property
    def threshold(self) -> float:
        """The deciding score's threshold."""
        return self.thresholds[self.score]

    def to_dict(self) -> dict[str, Any]:
        """Plain tensors, floats and strings (what a weights_only checkpoint can hold)."""
        return {
            "means": [m.detach().cpu().float() for m in self.means],
            "precisions": [p.detach().cpu().float() for p in self.precisions],
            "block_thresholds": [float(t) for t in self.block_thresholds],
            "thresholds": {k: float(v) for k, v in self.thresholds.items()},
            "score": self.score,
            "quantile": float(self.quantile),
            "fitted_on": self.fitted_on,
            "chosen_on": self.chosen_on,
        }

    @classmethod
    def from_dict(cls, content: dict[str, Any]) -> OODStatistics:
        """The statistics from `to_dict`'s layout (a checkpoint's 'ood' entry) or from `save_npz`'s arrays."""
        if "means" in content:
            means, precisions = list(content["means"]), list(content["precisions"])
            block_thresholds = [float(t) for t in content["block_thresholds"]]
            thresholds = {str(k): float(v) for k, v in content["thresholds"].items()}
        else:  # an npz: one array per block, and the thresholds as names and values
            count = int(content["blocks"])
            means = [content[f"means_block{b}"] for b in range(1, count + 1)]
            precisions = [content[f"precision_block{b}"] for b in range(1, count + 1)]
            block_thresholds = [float(t) for t in np.asarray(content["block_thresholds"])]
            thresholds = dict(zip(map(str, content["threshold_names"]), map(float, content["thresholds"])))
        return cls(
            [torch.as_tensor(np.asarray(m), dtype=torch.float32) for m in means],
            [torch.as_tensor(np.asarray(p), dtype=torch.float32) for p in precisions],
            block_thresholds,
            thresholds,
            str(content.get("score", DEFAULT_SCORE)),
            float(content.get("quantile", QUANTILE)),
            str(content.get("fitted_on", "")),
            str(content.get("chosen_on", "")),
        )

    def save_npz(self, path: Path) -> Path:
        """Write the statistics as an npz (the sidecar of a checkpoint that lacks them); no pickles."""
        names = list(self.thresholds)
        arrays: dict[str, Any] = {
            "blocks": np.array(len(self.means)),
            "block_thresholds": np.array(self.block_thresholds),
            "threshold_names": np.array(names),
            "thresholds": np.array([self.thresholds[n] for n in names]),
            "score": np.array(self.score),
            "quantile": np.array(self.quantile),
            "fitted_on": np.array(self.fitted_on),
            "chosen_on": np.array(self.chosen_on),
        }
        for b, (mean, precision) in enumerate(zip(self.means, self.precisions), start=1):
            arrays[f"means_block{b}"] = mean.numpy()
            arrays[f"precision_block{b}"] = precision.numpy()
        with open(path, "wb") as file:
            np.savez_compressed(file, **arrays)
        return path


@dataclass
class OODScores:
    """Every score of a batch of pictures, and which ones are unlike the training data by the deciding score."""

    scores: dict[str, Tensor]  # score name -> (N,)
    statistics: OODStatistics
    flagged: Tensor = field(init=False)  # (N,) bool

    def __post_init__(self) -> None:
        self.flagged = self.scores[self.statistics.score] > self.statistics.threshold

    @property
    def score(self) -> Tensor:
        """(N,) the deciding score."""
        return self.scores[self.statistics.score]


# --------------------------------------------------------------------------- the math


def pooled_features(network: nn.Module, images: Tensor) -> tuple[list[Tensor], Tensor]:
    """(per block the pooled features (N, D_b), logits (N, C)): each block's output averaged over space; the logits."""
    device = next(network.parameters()).device
    pooled: list[list[Tensor]] = []
    logits = []
    with eval_mode(network), torch.no_grad():
        for start in range(0, len(images), CHUNK):
            logits_part, outputs = net_blocks.logits_and_block_outputs(
                network, images[start : start + CHUNK].to(device)
            )
            if not pooled:
                pooled = [[] for _ in outputs]
            for part, output in zip(pooled, outputs):
                part.append(output.mean(dim=(2, 3)).float().cpu())
            logits.append(logits_part.float().cpu())
    return [torch.cat(part) for part in pooled], torch.cat(logits)


def fit_gaussians(
    features: Tensor, labels: Tensor, classes: int, shrinkage: float = SHRINKAGE
) -> tuple[Tensor, Tensor]:
    """(means (C, D), precision (D, D)): class means and the inverse of the shrunk pooled within-class covariance.

    Sigma = 1/N sum_i (f_i - mu_{y_i})(f_i - mu_{y_i})^T; Sigma_s = (1 - a) Sigma + a tr(Sigma)/D I.
    A class without pictures gets the overall mean (it never wins the minimum unless it is nearest).
    """
    x = features.double()
    overall = x.mean(dim=0)
    means = torch.stack([x[labels == c].mean(dim=0) if bool((labels == c).any()) else overall for c in range(classes)])
    centred = x - means[labels.long()]
    covariance = centred.T @ centred / max(len(x), 1)
    dimension = covariance.shape[0]
    scale = float(torch.trace(covariance)) / dimension or 1.0
    shrunk = (1 - shrinkage) * covariance + shrinkage * scale * torch.eye(dimension, dtype=torch.float64)
    precision = torch.linalg.inv(shrunk)
    return means.float(), ((precision + precision.T) / 2).float()


def mahalanobis(features: Tensor, means: Tensor, precision: Tensor) -> Tensor:
    """(N,) min_c (f - mu_c)^T P (f - mu_c), computed in float64."""
    x, mu, p = features.double(), means.double().to(features.device), precision.double().to(features.device)
    difference = x[:, None, :] - mu[None, :, :]  # (N, C, D)
    distances = torch.einsum("ncd,de,nce->nc", difference, p, difference)
    return distances.min(dim=1).values.float()


def energy(logits: Tensor, temperature: float = TEMPERATURE) -> Tensor:
    """(N,) -T logsumexp(logits / T): higher for a picture no class claims."""
    return -temperature * torch.logsumexp(logits.double() / temperature, dim=1).float()


def score_features(pooled: list[Tensor], logits: Tensor, statistics: OODStatistics) -> dict[str, Tensor]:
    """Every score of SCORES for the blocks' pooled features and the logits."""
    distances = [mahalanobis(f, m, p) for f, m, p in zip(pooled, statistics.means, statistics.precisions)]
    return scores_of(distances, logits, statistics.block_thresholds)


def scores_of(distances: list[Tensor], logits: Tensor, block_thresholds: list[float]) -> dict[str, Tensor]:
    """The scores from the blocks' distances: exp(mean_b log(d_b / t_b)), the last block's d, and the energy."""
    ratios = torch.stack([d.double() / max(t, 1e-12) for d, t in zip(distances, block_thresholds)])
    relative = ratios.clamp_min(1e-12).log().mean(dim=0).exp().float()
    return {"mahalanobis": relative, "mahalanobis_last": distances[-1], "energy": energy(logits)}


def quantile_threshold(scores: Tensor, quantile: float = QUANTILE) -> float:
    """The `quantile`-quantile of the scores (linear interpolation): the share below it is about `quantile`."""
    if scores.numel() == 0:
        raise ValueError("no scores to choose a threshold from")
    return float(torch.quantile(scores.double(), quantile))


# --------------------------------------------------------------------------- fitting and scoring


def _features_of(network: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> tuple[list[Tensor], Tensor, Tensor]:
    """(per block pooled features, logits, labels) of every (images in [0, 1] or uint8, labels) batch."""
    pooled: list[list[Tensor]] = []
    logits, labels = [], []
    for images, label in batches:
        images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        blocks, lg = pooled_features(network, images)
        pooled = pooled or [[] for _ in blocks]
        for part, block in zip(pooled, blocks):
            part.append(block)
        logits.append(lg)
        labels.append(torch.as_tensor(label).reshape(-1).long())
    if not logits:
        raise ValueError("no pictures to fit the statistics on")
    return [torch.cat(part) for part in pooled], torch.cat(logits), torch.cat(labels)


def fit(
    network: nn.Module,
    training: Iterable[tuple[Tensor, Tensor]],
    validation: Iterable[tuple[Tensor, Tensor]] | None,
    classes: int,
    quantile: float = QUANTILE,
    score: str = DEFAULT_SCORE,
) -> OODStatistics:
    """Fit each block's class Gaussians on the training batches, the thresholds on the validation batches.

    Without validation batches the thresholds come from the training pictures themselves (which
    lie closer to their own means, so new pictures are flagged a little more often).
    """
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r} (expected one of {', '.join(SCORES)})")
    pooled, logits, labels = _features_of(network, training)
    fitted = [fit_gaussians(block, labels, classes) for block in pooled]
    means, precisions = [m for m, _ in fitted], [p for _, p in fitted]
    fitted_on = f"training split, {len(labels)} pictures"
    held = _features_of(network, validation) if validation is not None else None
    if held is not None and len(held[2]):
        pooled, logits, chosen_on = held[0], held[1], f"validation split, {len(held[2])} pictures"
    else:
        chosen_on = f"training split, {len(labels)} pictures (no validation split)"
    distances = [mahalanobis(f, m, p) for f, m, p in zip(pooled, means, precisions)]
    block_thresholds = [quantile_threshold(d, quantile) for d in distances]
    scores = scores_of(distances, logits, block_thresholds)
    thresholds = {name: quantile_threshold(values, quantile) for name, values in scores.items()}
    return OODStatistics(means, precisions, block_thresholds, thresholds, score, quantile, fitted_on, chosen_on)


def statistics_of(content: dict[str, Any] | None) -> OODStatistics | None:
    """A LoadedModel's `ood` entry as OODStatistics (None where the model has none)."""
    return None if content is None else OODStatistics.from_dict(content)


def score_images(network: nn.Module, statistics: OODStatistics, images: Tensor) -> OODScores:
    """Every score of a batch of network inputs (N, 3, S, S) in [0, 1], and which are flagged."""
    pooled, logits = pooled_features(network, images)
    return OODScores(score_features(pooled, logits, statistics), statistics)


def score_pass(statistics: OODStatistics, record: net_blocks.Pass) -> OODScores:
    """Every score of a batch from a forward pass already made (nets.blocks.forward_pass), and which are flagged."""
    pooled = [output.mean(dim=(2, 3)).float().cpu() for output in record.blocks]
    return OODScores(score_features(pooled, record.logits.float().cpu(), statistics), statistics)


def assess(result: Result) -> Result:
    """The result with its pictures judged: ood_score, ood_threshold, out_of_distribution (unchanged without stats)."""
    statistics = statistics_of(result.model.ood)
    if statistics is None:
        return result
    judged = score_images(result.model.network, statistics, result.inputs.images)
    return replace(
        result,
        ood_score=judged.score,
        out_of_distribution=judged.flagged,
        ood_threshold=statistics.threshold,
        ood_method=statistics.score,
    )


def warning(name: str, score: float, statistics_threshold: float, method: str, model: str) -> str:
    """The one-line warning every classifying command prints for a picture unlike the training data."""
    return (
        f"warning: {name} is unlike the pictures {model} was trained on ({DESCRIPTIONS.get(method, method)} "
        f"{score:.4g} > {statistics_threshold:.4g}): its prediction says little"
    )
