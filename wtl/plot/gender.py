"""Gender100's pictures: the averaged maps over the mean faces, their regions, and OverlayMaleFemale."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from wtl.checkpoints.loading import LoadedModel
from wtl.data.images import original_image
from wtl.evaluation.gender100 import GENDERS, GenderMaps
from wtl.plot.maps import blend_figure, gender100_figure, regions_figure
from wtl.plot.outputs import Outputs
from wtl.plot.style import LOOK, Look


def display_face(face: np.ndarray, aspect: float) -> np.ndarray:
    """A mean face at the pictures' own width/height ratio (a squashed input is drawn unsquashed)."""
    if abs(aspect - 1.0) < 1e-3:
        return face
    height = face.shape[0]
    width = max(1, round(height * aspect))
    picture = Image.fromarray(np.clip(face * 255, 0, 255).astype(np.uint8))
    return np.asarray(picture.resize((width, height), Image.Resampling.BILINEAR)).astype(np.float32) / 255


def aspect_of(model: LoadedModel, files: Sequence[str]) -> float:
    """Width/height of what the network saw: 1 for a centre crop, else the first picture's own ratio."""
    if model.preprocess == "center-crop" or not files:
        return 1.0
    picture = original_image(files[0])
    return picture.shape[1] / picture.shape[0]


def render_gender100(maps: GenderMaps, outputs: Outputs, model: LoadedModel, look: Look = LOOK) -> list[Path]:
    """The two averaged maps side by side over their mean faces, and each gender's alone with its numbers.

    Each gender's numbers are always saved (gender100_male.npz, gender100_female.npz): overlay reads them.
    """
    aspect = aspect_of(model, maps.files[GENDERS[0]])
    faces = {g: display_face(maps.faces[g], aspect) for g in GENDERS}
    titles = [f"{g}: mean map of {len(maps.files[g])} test faces" for g in GENDERS]
    heading = f"Gender100 ({model.path.name})"
    fig = gender100_figure([faces[g] for g in GENDERS], [maps.heatmaps[g] for g in GENDERS], titles, heading, look)
    numbers: dict[str, object] = {f"heatmap_{g.lower()}": maps.heatmaps[g] for g in GENDERS}
    numbers.update({f"face_{g.lower()}": maps.faces[g] for g in GENDERS})
    numbers.update({f"files_{g.lower()}": np.array(maps.files[g]) for g in GENDERS})
    written = [outputs.save(fig, "gender100", numbers, always_npz=True)]
    for gender, title in zip(GENDERS, titles):
        fig = gender100_figure([faces[gender]], [maps.heatmaps[gender]], [title], heading, look)
        one = {
            "gender": gender,
            "heatmap": maps.heatmaps[gender],
            "face": maps.faces[gender],
            "aspect": aspect,
            "files": np.array(maps.files[gender]),
            "model": str(model.path),
        }
        written.append(outputs.save(fig, f"gender100_{gender.lower()}", one, always_npz=True))
    return written


def render_regions(maps: GenderMaps, shares: dict, model: LoadedModel, outputs: Outputs) -> Path:
    """The face regions on the mean face, and each gender's map density per region."""
    faces = {g: display_face(maps.faces[g], aspect_of(model, maps.files[g])) for g in GENDERS}
    return outputs.save(regions_figure(faces, shares, model.image_size, model.preprocess), "gender100_regions")


def render_overlay(
    male: np.ndarray, female: np.ndarray, face: np.ndarray, outputs: Outputs, source: str, look: Look = LOOK
) -> Path:
    """OverlayMaleFemale: both maps blended over the mean face of both genders, and male minus female."""
    blended = (male + female) / 2
    fig = blend_figure(face, blended, male - female, f"Gender100 maps blended, (male + female) / 2 ({source})", look)
    numbers = {"heatmap_male": male, "heatmap_female": female, "blended": blended, "difference": male - female}
    return outputs.save(fig, "gender_overlay", numbers)
