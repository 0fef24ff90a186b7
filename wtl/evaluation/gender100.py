"""Gender100: the maps of N test faces per gender averaged, where they lie on the face, and how stable they are.

The averaged map is the pixel-wise mean of the single view's heatmaps (maps.ops.average_heatmap)
of the same faces, so Gender100 shows exactly what `single` would show for each face, on average.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wtl.checkpoints.loading import LoadedModel
from wtl.data.datasets import GenderSet
from wtl.data.images import chunks
from wtl.errors import DatasetError, UsageError
from wtl.evaluation.units import resampler_of, units_of
from wtl.maps.explain import explain
from wtl.maps.ops import average_heatmap
from wtl.metrics import faces
from wtl.metrics.agreement import spearman
from wtl.metrics.bootstrap import DEFAULT_REPLICATES, LEVEL, interval

GENDERS = GenderSet.CLASSES  # ("Female", "Male"), the class order of the gender models


@dataclass
class GenderMaps:
    """Gender100's result: per gender the averaged heatmap (S, S), the mean face (S, S, 3) and the files used.

    For the regions' intervals also, per gender and face: its map's sum in each face region
    (`masses`, (N, R) in metrics.faces' order), over the picture (`totals`, (N,)), and whose face it is (`units`).
    """

    heatmaps: dict[str, np.ndarray]
    faces: dict[str, np.ndarray]
    files: dict[str, list[str]]
    masses: dict[str, np.ndarray] = field(default_factory=dict)
    totals: dict[str, np.ndarray] = field(default_factory=dict)
    units: dict[str, list[str]] = field(default_factory=dict)
    unit: str = "person"


def check_gender_model(model: LoadedModel) -> None:
    """UsageError unless the model tells Female from Male."""
    if list(model.class_names) != list(GENDERS):
        raise UsageError(f"{model.path.name}: gender100 needs a gender model (classes Female, Male)")


@dataclass
class _Averaged:
    """The mean heatmap (S, S) and mean input (3, S, S) of some pictures; each map's region sums (N, R), (N,)."""

    heatmap: torch.Tensor
    face: torch.Tensor
    masses: torch.Tensor
    totals: torch.Tensor


def _average(
    model: LoadedModel, paths: Sequence[Path], method: str, class_index: int | None, batch_size: int
) -> _Averaged:
    """The pictures' mean heatmap and mean input, and each map's sums in the face regions; batch by batch."""
    size = model.image_size
    masks = faces.region_masks(size, model.preprocess)
    total_heat, total_face = torch.zeros((size, size)), torch.zeros((3, size, size))
    masses, totals = [], []
    for chunk in chunks(list(paths), batch_size):
        result = explain(model, list(chunk), method, "last", class_index, batch_size=batch_size)
        # Sums of batch means, weighted by the batch's size: the mean over all pictures.
        total_heat += average_heatmap(result.heatmap) * len(chunk)
        total_face += result.inputs.images.sum(0)
        inside, whole = faces.region_masses(result.heatmap, masks)
        masses.append(inside)
        totals.append(whole)
    return _Averaged(total_heat / len(paths), total_face / len(paths), torch.cat(masses), torch.cat(totals))


def gender100_maps(
    model: LoadedModel,
    data_dir: Path,
    count: int,
    seed: int = 0,
    class_index: int | None = None,
    method: str = "cam",
    batch_size: int = 32,
) -> GenderMaps:
    """Average the maps of `count` seeded-random test faces per gender (all of them where there are fewer)."""
    check_gender_model(model)
    test = GenderSet(data_dir, "test", max_samples_per_class=count, seed=seed, size=model.image_size)
    maps = GenderMaps({}, {}, {})
    for label, gender in enumerate(GENDERS):
        paths = [p for p, y in test.samples if y == label]
        if not paths:
            raise DatasetError(f"{data_dir}: no {gender} test images (expected Dataset/Test/{gender}/)")
        if len(paths) < count:
            print(f"note: only {len(paths)} {gender} test faces in {data_dir}: averaging all {len(paths)}")
        averaged = _average(model, paths, method, class_index, batch_size)
        maps.heatmaps[gender] = averaged.heatmap.numpy()
        maps.faces[gender] = averaged.face.permute(1, 2, 0).numpy()
        maps.files[gender] = [str(p) for p in paths]
        maps.masses[gender], maps.totals[gender] = averaged.masses.numpy(), averaged.totals.numpy()
        maps.unit, maps.units[gender] = units_of(test, maps.files[gender])
    return maps


def region_shares(
    maps: GenderMaps, size: int, preprocess: str, replicates: int = DEFAULT_REPLICATES, seed: int = 0
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per gender and face region (metrics.faces): the averaged map's share, the region's area, their ratio
    (`density`) and its 95 % interval (`density_ci95`), resampling the people whose faces were averaged."""
    masks = faces.region_masks(size, preprocess)
    shares: dict[str, dict[str, dict[str, Any]]] = {}
    for gender in GENDERS:
        shares[gender] = dict(faces.region_shares(torch.from_numpy(maps.heatmaps[gender]), masks))
        if gender not in maps.masses:
            continue
        resampler = resampler_of(maps.unit, maps.units[gender], replicates, seed)
        masses, totals = maps.masses[gender], maps.totals[gender]
        for column, name in enumerate(masks):
            area = shares[gender][name]["area"]
            # The figure from the same float64 sums as its replicates, so that it lies inside its interval.
            shares[gender][name]["share"] = float(masses[:, column].sum() / totals.sum()) if totals.sum() else 0.0
            shares[gender][name]["density"] = shares[gender][name]["share"] / area if area else 0.0
            share = resampler.ratio(masses[:, column], totals)
            bounds = interval(share / area) if area else None
            shares[gender][name]["density_ci95"] = None if bounds is None else [bounds[0], bounds[1]]
    return shares


def resampling(maps: GenderMaps, replicates: int = DEFAULT_REPLICATES) -> dict[str, Any]:
    """What region_shares' intervals resample: the unit, how many per gender, the replicates."""
    return {
        "unit": maps.unit,
        "units": {g: len(set(maps.units.get(g, []))) for g in GENDERS},
        "replicates": replicates,
        "level": LEVEL,
    }


def stability(
    model: LoadedModel,
    maps: GenderMaps,
    data_dir: Path,
    seed: int,
    class_index: int | None = None,
    method: str = "cam",
    batch_size: int = 32,
) -> dict[str, float]:
    """Spearman's rho between each gender's map and the map of as many other test faces (a disjoint draw)."""
    test = GenderSet(data_dir, "test", size=model.image_size)
    rhos: dict[str, float] = {}
    for label, gender in enumerate(GENDERS):
        used = set(maps.files[gender])
        rest = sorted(str(p) for p, y in test.samples if y == label and str(p) not in used)
        if len(rest) < len(used):
            print(f"note: {gender}: only {len(rest)} other test faces, fewer than the {len(used)} averaged")
        if not rest:
            continue
        order = np.random.default_rng(seed + 1).permutation(len(rest))[: len(used)]
        pick = [Path(rest[i]) for i in sorted(order)]
        other = _average(model, pick, method, class_index, batch_size).heatmap
        rhos[gender] = spearman(torch.from_numpy(maps.heatmaps[gender]), other)
        print(
            f"{gender}: the map of {len(pick)} other test faces agrees with this one at Spearman rho {rhos[gender]:.3f}"
        )
    return rhos


def read_gender100(paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(male map, female map, mean face of both, its aspect) from gender100's results; anything else is refused.

    Accepts gender100.npz (both maps), or gender100_male.npz and gender100_female.npz,
    or the PNGs that gender100 wrote beside those npz files.
    """
    needs = (
        "overlay needs Gender100 results: gender100_male.npz and gender100_female.npz (or gender100.npz, or the "
        "PNGs beside them) as written by `where_to_look.py gender100`"
    )
    found: dict[str, np.ndarray] = {}
    means: dict[str, np.ndarray] = {}
    aspect = 1.0
    for path in paths:
        npz = Path(path).with_suffix(".npz")
        if not npz.is_file():
            raise UsageError(f"{path}: no Gender100 numbers ({npz.name} missing); {needs}")
        try:
            with np.load(npz) as data:
                content = {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError) as error:
            raise UsageError(f"{npz}: cannot read it ({error}); {needs}") from None
        if "heatmap_male" in content and "heatmap_female" in content:
            found.update(Male=content["heatmap_male"], Female=content["heatmap_female"])
            means.update({g: content[f"face_{g.lower()}"] for g in GENDERS if f"face_{g.lower()}" in content})
        elif "gender" in content and "heatmap" in content:
            gender = str(content["gender"])
            found[gender] = content["heatmap"]
            if "face" in content:
                means[gender] = content["face"]
            aspect = float(content.get("aspect", 1.0))
        else:
            raise UsageError(f"{npz}: not a Gender100 result; {needs}")
    if set(found) != set(GENDERS):
        missing = ", ".join(sorted(set(GENDERS) - set(found)))
        raise UsageError(f"the {missing} map is missing; {needs}")
    if found["Male"].shape != found["Female"].shape:
        raise UsageError(f"the two maps differ in size ({found['Male'].shape} vs {found['Female'].shape}); {needs}")
    if len(means) == 2:
        face = (means["Male"] + means["Female"]) / 2
    else:
        face = np.full((*found["Male"].shape, 3), 0.5, dtype=np.float32)  # mid grey where no face was saved
    return found["Male"], found["Female"], face, aspect
