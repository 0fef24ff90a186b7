"""Fusing per-block maps into one map in [0, 1], by a named rule (the names are registry.FUSIONS).

Every block has its own exact map, at its own resolution (64, 32, 16, 8 px at 128 px
input). A rule fuses them into one map in [0, 1]. Each block's map is first upsampled
(bilinear) to the fused size and min-max normalised, N_i = heatmap(cam_i, size), so
every block counts at the same scale; the fused map is min-max normalised again.

Measured on the bundled every-block models with the pointing game against the Giemsa
stain (the numbers are in the README): block 1 fires on every cell's border, so a max
lets the border win, while a product (an AND: hot only where every block is hot) keeps
the spot that blocks 2-4 agree on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from wtl.maps.ops import heatmap, normalize
from wtl.maps.registry import DEFAULT_FUSION, FUSIONS


@dataclass(frozen=True)
class FusionRule:
    """A way to fuse per-block maps: which blocks it uses, how it combines them, and what that means."""

    blocks: slice  # the blocks used, as a slice of the list of maps (block 1 first)
    combine: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]  # (n, B, H, W), (n, B) weights -> (B, H, W)
    description: str
    needs_probabilities: bool = False


def _max(stacked: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    return stacked.max(dim=0).values


def _mean(stacked: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    return stacked.mean(dim=0)


def _geometric_mean(stacked: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """prod_i N_i ** w_i, with w_i = 1/n when no weights are given (0 ** 0 is 1: a weightless block is ignored)."""
    if weights is None:
        weights = torch.full(stacked.shape[:2], 1.0 / stacked.shape[0], dtype=stacked.dtype, device=stacked.device)
    # In float64: a product of four values near 0 underflows float32 long before it loses its ranking.
    return stacked.double().pow(weights.double()[:, :, None, None]).prod(dim=0).to(stacked.dtype)


FUSION_RULES: dict[str, FusionRule] = {
    "max": FusionRule(slice(None), _max, FUSIONS["max"]),
    "mean": FusionRule(slice(None), _mean, FUSIONS["mean"]),
    "mean234": FusionRule(slice(1, None), _mean, FUSIONS["mean234"]),
    "product": FusionRule(slice(None), _geometric_mean, FUSIONS["product"]),
    "product234": FusionRule(slice(1, None), _geometric_mean, FUSIONS["product234"]),
    "confidence": FusionRule(slice(None), _geometric_mean, FUSIONS["confidence"], needs_probabilities=True),
}


def fuse(
    maps: Sequence[torch.Tensor],
    size: int | tuple[int, ...] | None = None,
    rule: str = DEFAULT_FUSION,
    block_probabilities: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fuse per-block maps (block 1 first, each (B, h_i, w_i), raw) into one (B, H, W) map in [0, 1].

    Each used block's map is upsampled to `size` (default: the finest, i.e. largest,
    resolution among the blocks the rule uses, which is what `--save-npz` keeps as
    `cam_fused`) and normalised to N_i in [0, 1]; then, per pixel:

    - max:        F = max_i N_i
    - mean:       F = (1/n) sum_i N_i;              mean234: the same over blocks 2-4
    - product:    F = (prod_i N_i) ** (1/n);        product234: the same over blocks 2-4
      (the geometric mean ranks pixels exactly as the product does, and keeps its scale)
    - confidence: F = prod_i N_i ** (p_i / sum_j p_j), p_i = block_probabilities[:, i],
      block i's own head's softmax probability of the explained class: a weighted
      geometric mean in which a block whose head does not believe the class counts little.

    F is min-max normalised per image (a constant map gives zeros). The "234" rules
    leave out the first map, whatever the number of maps; with a single map left every
    rule returns that block's heatmap.
    """
    if rule not in FUSION_RULES:
        raise ValueError(f"unknown fusion rule {rule!r} (expected one of {', '.join(FUSION_RULES)})")
    if not maps:
        raise ValueError("fusing needs at least one map")
    spec = FUSION_RULES[rule]
    every = list(range(len(maps)))
    indices = every[spec.blocks] or every
    used = [maps[i] for i in indices]
    if size is None:
        finest = max(used, key=lambda m: m.shape[-2] * m.shape[-1])
        size = tuple(finest.shape[-2:])
    weights = None
    if spec.needs_probabilities:
        if block_probabilities is None:
            raise ValueError(f"the fusion rule {rule!r} needs each block's probability of the class")
        if block_probabilities.shape != (used[0].shape[0], len(maps)):
            raise ValueError(f"block_probabilities must be (B, {len(maps)}), not {tuple(block_probabilities.shape)}")
        chosen = block_probabilities[:, indices].to(used[0].dtype).T.clamp_min(0)  # (n, B)
        total = chosen.sum(dim=0, keepdim=True)
        # No block believes the class at all: count every block the same.
        weights = torch.where(total > 0, chosen / total.clamp_min(1e-30), torch.full_like(chosen, 1 / len(used)))
    stacked = torch.stack([heatmap(m, size) for m in used])
    return normalize(spec.combine(stacked, weights))
