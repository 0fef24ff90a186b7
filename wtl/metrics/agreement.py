"""How alike two maps are: Spearman's rank correlation and the overlap of their top pixels."""

from __future__ import annotations

import math

import torch
from torch import Tensor


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
