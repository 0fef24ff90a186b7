"""How well a model classifies: accuracy, the confusion matrix and per-class precision, recall and F1."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class ClassScores:
    """One class's precision, recall, F1 and support (its true images)."""

    precision: float
    recall: float
    f1: float
    support: int

    def to_json(self) -> dict[str, Any]:
        """The scores as a JSON-able dict."""
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1, "support": self.support}


@dataclass(frozen=True)
class Classification:
    """A confusion matrix (rows: true class, columns: predicted) and what follows from it."""

    class_names: list[str]
    confusion: list[list[int]]

    @classmethod
    def from_predictions(cls, truth: torch.Tensor, predicted: torch.Tensor, class_names: list[str]) -> Classification:
        """Count (true, predicted) pairs of two (N,) label tensors."""
        n = len(class_names)
        confusion = torch.zeros((n, n), dtype=torch.long)
        ones = torch.ones_like(truth, dtype=torch.long)
        confusion.index_put_((truth.long().cpu(), predicted.long().cpu()), ones.cpu(), accumulate=True)
        return cls(list(class_names), confusion.tolist())

    @property
    def images(self) -> int:
        """How many images were classified."""
        return sum(map(sum, self.confusion))

    @property
    def accuracy(self) -> float:
        """The share of images classified right (0 for none)."""
        right = sum(self.confusion[i][i] for i in range(len(self.class_names)))
        return right / self.images if self.images else 0.0

    @property
    def per_class(self) -> dict[str, ClassScores]:
        """Precision = TP / predicted, recall = TP / true, F1 = their harmonic mean, per class (0 where undefined)."""
        scores = {}
        for i, name in enumerate(self.class_names):
            true_positive = self.confusion[i][i]
            predicted = sum(row[i] for row in self.confusion)
            actual = sum(self.confusion[i])
            precision = true_positive / predicted if predicted else 0.0
            recall = true_positive / actual if actual else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            scores[name] = ClassScores(precision, recall, f1, actual)
        return scores

    @property
    def confusion_percent(self) -> list[list[float]]:
        """The confusion matrix with each row divided by its true images, in % (a row without images: zeros)."""
        return [[100.0 * v / sum(row) if sum(row) else 0.0 for v in row] for row in self.confusion]

    @property
    def macro(self) -> ClassScores:
        """Precision, recall and F1 averaged over the classes alike (support: all images)."""
        scores = list(self.per_class.values())
        precision, recall, f1 = (
            sum(getattr(s, f) for s in scores) / len(scores) for f in ("precision", "recall", "f1")
        )
        return ClassScores(precision, recall, f1, self.images)

    @property
    def weighted(self) -> ClassScores:
        """Precision, recall and F1 averaged over the classes weighted by their support."""
        scores, total = list(self.per_class.values()), self.images or 1
        precision, recall, f1 = (
            sum(getattr(s, f) * s.support for s in scores) / total for f in ("precision", "recall", "f1")
        )
        return ClassScores(precision, recall, f1, self.images)

    def to_json(self) -> dict[str, Any]:
        """The report as the JSON the trainer's metrics file and evaluate write."""
        return {
            "accuracy": self.accuracy,
            "images": self.images,
            "class_names": list(self.class_names),
            "confusion_matrix": [list(row) for row in self.confusion],
            "confusion_matrix_percent": self.confusion_percent,
            "per_class": {name: scores.to_json() for name, scores in self.per_class.items()},
            "macro_avg": self.macro.to_json(),
            "weighted_avg": self.weighted.to_json(),
        }

    def format(self) -> str:
        """The report as the Keras document's text: counts and row percentages, per-class and averaged scores."""
        names = self.class_names
        width = max(12, *(len(n) for n in names))
        lines = [
            f"accuracy: {100 * self.accuracy:.2f}% on {self.images} images",
            "",
            "confusion matrix (rows: true, columns: predicted; in brackets: % of the row)",
            " " * width + "".join(f"{n:>{width + 9}}" for n in names),
        ]
        for name, row, percent in zip(names, self.confusion, self.confusion_percent):
            cells = "".join(f"{f'{v} ({p:.1f}%)':>{width + 9}}" for v, p in zip(row, percent))
            lines.append(f"{name:<{width}}{cells}")
        lines += ["", f"{'':<{width}}{'precision':>10}{'recall':>10}{'f1-score':>10}{'support':>10}"]
        rows = [*self.per_class.items(), ("", None), ("macro avg", self.macro), ("weighted avg", self.weighted)]
        for name, m in rows:
            if m is None:
                lines.append("")
                continue
            lines.append(f"{name:<{width}}{m.precision:>10.3f}{m.recall:>10.3f}{m.f1:>10.3f}{m.support:>10d}")
        return "\n".join(lines)
