"""Gender100's regions: the per-face sums behind the mean map's shares, and their intervals over people."""

from __future__ import annotations

import numpy as np
import torch

from wtl.evaluation.gender100 import GENDERS, GenderMaps, region_shares
from wtl.metrics import faces

SIZE = 32


def _maps(heatmaps: torch.Tensor, people: list[str]) -> GenderMaps:
    """Both genders with the same faces' maps (what region_shares reads), each face's person given."""
    masses, totals = faces.region_masses(heatmaps, faces.region_masks(SIZE))
    mean = heatmaps.mean(0).numpy()
    return GenderMaps(
        heatmaps={g: mean for g in GENDERS},
        faces={g: np.zeros((SIZE, SIZE, 3)) for g in GENDERS},
        files={g: [f"{i}.jpg" for i in range(len(people))] for g in GENDERS},
        masses={g: masses.numpy() for g in GENDERS},
        totals={g: totals.numpy() for g in GENDERS},
        units={g: people for g in GENDERS},
    )


def test_the_mean_maps_share_of_a_region_is_the_ratio_of_the_faces_sums() -> None:
    heatmaps = torch.rand(7, SIZE, SIZE)
    masks = faces.region_masks(SIZE)
    masses, totals = faces.region_masses(heatmaps, masks)
    shares = faces.region_shares(heatmaps.mean(0), masks)
    for column, name in enumerate(masks):
        assert abs(float(masses[:, column].sum() / totals.sum()) - shares[name]["share"]) < 1e-6  # float32 mean
    assert torch.allclose(masses.sum(1), totals)  # the regions cover the picture once


def test_the_density_interval_holds_the_density_and_widens_when_a_persons_faces_are_alike() -> None:
    rng = torch.Generator().manual_seed(0)
    heatmaps = torch.rand(40, SIZE, SIZE, generator=rng)
    heatmaps[:, 56 * SIZE // 128 : 74 * SIZE // 128] *= torch.rand(40, 1, 1, generator=rng) * 4  # eyes vary by face
    alike = heatmaps.clone()
    for person in range(8):  # eight people, five copies of one face each
        alike[5 * person : 5 * person + 5] = heatmaps[5 * person]
    apart = region_shares(_maps(alike, [f"f{i}" for i in range(40)]), SIZE, "center-crop", 2000)
    grouped = region_shares(_maps(alike, [f"p{i // 5}" for i in range(40)]), SIZE, "center-crop", 2000)
    for shares in (apart, grouped):
        low, high = shares["Female"]["eyes"]["density_ci95"]
        assert low < shares["Female"]["eyes"]["density"] < high

    def width(shares: dict) -> float:
        low, high = shares["Female"]["eyes"]["density_ci95"]
        return high - low

    assert width(grouped) > 1.5 * width(apart)  # five copies are one draw, not five
