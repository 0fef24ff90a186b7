"""Adebayo et al.'s data randomisation: the training split's labels permuted among its images.

A model trained on permuted labels can only memorise; a map that still looks the same on its
pictures explains the image, not what was learned. The permutation keeps the class counts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def shuffle_labels(samples: list[tuple[Path, int]], seed: int) -> list[tuple[Path, int]]:
    """The same files with their labels permuted among them: label'[i] = label[perm[i]], perm seeded.

    The class counts stay those of the split, and each file keeps its true label only by
    chance (about sum_c p_c^2 of them: a half for two balanced classes).
    """
    labels = np.array([label for _, label in samples], dtype=np.int64)
    order = np.random.default_rng(1_000_003 + seed).permutation(len(samples))
    return [(path, int(label)) for (path, _), label in zip(samples, labels[order])]


def label_agreement(original: list[tuple[Path, int]], shuffled: list[tuple[Path, int]]) -> float:
    """Share of files whose shuffled label is their true one."""
    if not original:
        return 0.0
    return sum(a == b for (_, a), (_, b) in zip(original, shuffled)) / len(original)


def chance_agreement(samples: list[tuple[Path, int]]) -> float:
    """The agreement a random permutation gives on average: sum over classes of p_c^2."""
    labels = [label for _, label in samples]
    if not labels:
        return 0.0
    return float(sum((labels.count(c) / len(labels)) ** 2 for c in set(labels)))
