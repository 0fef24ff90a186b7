"""Is this picture like the training pictures? Two scores on the network's own features, and a threshold.

Both scores grow as a picture gets less like the training data:

- mahalanobis: min_c (f - mu_c)^T P (f - mu_c), f the picture's globally average-pooled last-block
  features (what the classifier reads), mu_c the mean of class c's training pictures, P the inverse
  of the classes' shared (pooled within-class) covariance, shrunk towards its mean variance
  (Sigma_s = (1 - a) Sigma + a tr(Sigma)/D I, a = SHRINKAGE) so that it can be inverted
  (Lee et al., NeurIPS 2018).
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

SCORES = ("mahalanobis", "energy")
DEFAULT_SCORE = "mahalanobis"
QUANTILE = 0.99
SHRINKAGE = 0.01
TEMPERATURE = 1.0
CHUNK = 64  # pictures per forward pass
DESCRIPTIONS = {
    "mahalanobis": "Mahalanobis distance of the pooled features to the nearest class",
    "energy": "energy of the logits",
}


@dataclass(frozen=True)
class OODStatistics:
    """What scoring a picture needs: the class means and shared precision of the pooled features, and thresholds."""

    means: Tensor  # (C, D) per class mean of the training pictures' pooled features
    precision: Tensor  # (D, D) inverse of the shrunk shared covariance
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
            "means": self.means.detach().cpu().float(),
            "precision": self.precision.detach().cpu().float(),
            "thresholds": {k: float(v) for k, v in self.thresholds.items()},
            "score": self.score,
            "quantile": float(self.quantile),
            "fitted_on": self.fitted_on,
            "chosen_on": self.chosen_on,
        }

    @classmethod
    def from_dict(cls, content: dict[str, Any]) -> OODStatistics:
        """The statistics from `to_dict`'s layout (a checkpoint's 'ood' entry, or an npz's arrays)."""
        thresholds = content["thresholds"]
        if not isinstance(thresholds, dict):  # an npz: two arrays, names and values
            thresholds = dict(zip(map(str, content["threshold_names"]), map(float, content["thresholds"])))
        return cls(
            torch.as_tensor(np.asarray(content["means"]), dtype=torch.float32),
            torch.as_tensor(np.asarray(content["precision"]), dtype=torch.float32),
            {str(k): float(v) for k, v in thresholds.items()},
            str(content.get("score", DEFAULT_SCORE)),
            float(content.get("quantile", QUANTILE)),
            str(content.get("fitted_on", "")),
            str(content.get("chosen_on", "")),
        )

    def save_npz(self, path: Path) -> Path:
        """Write the statistics as an npz (the sidecar of a checkpoint that lacks them)."""
        names = list(self.thresholds)
        np.savez(
            path,
            means=self.means.numpy(),
            precision=self.precision.numpy(),
            threshold_names=np.array(names),
            thresholds=np.array([self.thresholds[n] for n in names]),
            score=np.array(self.score),
            quantile=np.array(self.quantile),
            fitted_on=np.array(self.fitted_on),
            chosen_on=np.array(self.chosen_on),
        )
        return path

    @classmethod
    def load_npz(cls, path: Path) -> OODStatistics:
        """Read an npz written by save_npz (no pickles)."""
        with np.load(path, allow_pickle=False) as content:
            return cls.from_dict({key: content[key] for key in content.files})


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


def pooled_features(network: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    """(pooled (N, D), logits (N, C)): the last block's globally average-pooled output, and the network's logits."""
    device = next(network.parameters()).device
    pooled, logits = [], []
    with eval_mode(network), torch.no_grad():
        for start in range(0, len(images), CHUNK):
            last = net_blocks.block_outputs(network, images[start : start + CHUNK].to(device))[-1]
            pooled.append(last.mean(dim=(2, 3)).float().cpu())
            logits.append(net_blocks.head(network, last).float().cpu())
    return torch.cat(pooled), torch.cat(logits)


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


def score_features(pooled: Tensor, logits: Tensor, means: Tensor, precision: Tensor) -> dict[str, Tensor]:
    """Every score of SCORES for pooled features and logits."""
    return {"mahalanobis": mahalanobis(pooled, means, precision), "energy": energy(logits)}


def quantile_threshold(scores: Tensor, quantile: float = QUANTILE) -> float:
    """The `quantile`-quantile of the scores (linear interpolation): the share below it is about `quantile`."""
    if scores.numel() == 0:
        raise ValueError("no scores to choose a threshold from")
    return float(torch.quantile(scores.double(), quantile))


# --------------------------------------------------------------------------- fitting and scoring


def _features_of(network: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """(pooled, logits, labels) of every (images in [0, 1] or uint8, labels) batch."""
    pooled, logits, labels = [], [], []
    for images, label in batches:
        images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        p, lg = pooled_features(network, images)
        pooled.append(p)
        logits.append(lg)
        labels.append(torch.as_tensor(label).reshape(-1).long())
    if not pooled:
        raise ValueError("no pictures to fit the statistics on")
    return torch.cat(pooled), torch.cat(logits), torch.cat(labels)


def fit(
    network: nn.Module,
    training: Iterable[tuple[Tensor, Tensor]],
    validation: Iterable[tuple[Tensor, Tensor]] | None,
    classes: int,
    quantile: float = QUANTILE,
    score: str = DEFAULT_SCORE,
) -> OODStatistics:
    """Fit the class Gaussians on the training batches and each score's threshold on the validation batches.

    Without validation batches the thresholds come from the training pictures themselves (which
    lie closer to their own means, so new pictures are flagged a little more often).
    """
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r} (expected one of {', '.join(SCORES)})")
    pooled, logits, labels = _features_of(network, training)
    means, precision = fit_gaussians(pooled, labels, classes)
    fitted_on = f"training split, {len(labels)} pictures"
    held = _features_of(network, validation) if validation is not None else None
    if held is not None and len(held[2]):
        pooled, logits, chosen_on = held[0], held[1], f"validation split, {len(held[2])} pictures"
    else:
        chosen_on = f"training split, {len(labels)} pictures (no validation split)"
    scores = score_features(pooled, logits, means, precision)
    thresholds = {name: quantile_threshold(values, quantile) for name, values in scores.items()}
    return OODStatistics(means, precision, thresholds, score, quantile, fitted_on, chosen_on)


def statistics_of(content: dict[str, Any] | None) -> OODStatistics | None:
    """A LoadedModel's `ood` entry as OODStatistics (None where the model has none)."""
    return None if content is None else OODStatistics.from_dict(content)


def score_images(network: nn.Module, statistics: OODStatistics, images: Tensor) -> OODScores:
    """Every score of a batch of network inputs (N, 3, S, S) in [0, 1], and which are flagged."""
    pooled, logits = pooled_features(network, images)
    return OODScores(score_features(pooled, logits, statistics.means, statistics.precision), statistics)


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
