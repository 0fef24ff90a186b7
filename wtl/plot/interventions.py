"""The report's intervention section: the table, and before/after tiles of the cells whose prediction flips.

A tile is the cell | the cell with its ground truth filled from its surroundings | the cell with the
control region filled, the regions outlined (green: ground truth, yellow: control). The fills are
recomputed for the few cells shown (evaluate keeps only scalars per image), with the very
functions evaluate used, so they are what the model was shown.
"""

from __future__ import annotations

import html
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from wtl.data.images import read_image_uint8
from wtl.errors import ImageError
from wtl.evaluation.result import EvaluationResult, ImageRecord
from wtl.evaluation.tables import region_name
from wtl.metrics.intervention import fill_from_surroundings, intervention_regions
from wtl.metrics.stain import stain_mask
from wtl.plot.style import OUTLINE
from wtl.plot.tiles import TILE_SCALE, contact_sheet, outline

CONTROL_OUTLINE = np.array([255, 215, 0], dtype=np.uint8)  # the control region: gold
TILES = "interventions"  # the report's sub-folder of before/after tiles
TITLES = {
    "largest_flips": "Largest flips: the prediction changes when the stain is removed",
    "suspect_label_flips": "Suspect labels that flip when their stained blob is removed",
}


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


@dataclass
class BeforeAfter:
    """One cell as the intervention saw it: the picture, with its ground truth and its control filled."""

    record: ImageRecord
    index: int
    panels: np.ndarray  # (S*H, 3*S*W + gaps, 3) uint8


def before_after(image: torch.Tensor, scale: int = TILE_SCALE) -> np.ndarray | None:
    """A tile of one cell (3, S, S) uint8: original | ground truth filled | control filled; None without stain."""
    picture = image.float()[None] / 255.0
    masks = stain_mask(picture[0])[None]
    if not bool(masks.any()):
        return None
    regions = intervention_regions(picture, masks)
    truth = fill_from_surroundings(picture, regions.truth, regions.cells)[0]
    control = fill_from_surroundings(picture, regions.control, regions.cells)[0]
    panels = []
    for shown, region, colour in (
        (picture[0], regions.truth[0], OUTLINE),
        (truth, regions.truth[0], OUTLINE),
        (control, regions.control[0], CONTROL_OUTLINE),
    ):
        pixels = (shown.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        big = np.asarray(Image.fromarray(pixels).resize((pixels.shape[1] * scale, pixels.shape[0] * scale)))
        big = big.copy()
        edge = outline(np.kron(region.numpy(), np.ones((scale, scale), dtype=bool)))
        big[edge] = colour
        panels.append(big)
    gap = np.full((panels[0].shape[0], 2, 3), 255, dtype=np.uint8)
    return np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)


def gallery(rows: Sequence[tuple[int, ImageRecord]], size: int, preprocess: str = "squash") -> list[BeforeAfter]:
    """Before/after tiles of the given (index, record) rows whose files can still be read."""
    tiles = []
    for index, record in rows:
        if not record.file:
            continue
        try:
            image = read_image_uint8(record.file, size, preprocess)
        except (ImageError, ValueError, OSError):
            continue
        panels = before_after(image)
        if panels is not None:
            tiles.append(BeforeAfter(record, index, panels))
    return tiles


def caption(result: EvaluationResult, tile: BeforeAfter) -> str:
    """P(class) before, after the ground truth, after the control; label and prediction."""
    scores = result.intervention
    assert scores is not None
    i = tile.index
    name = Path(str(tile.record.file)).name
    return (
        f"<span class=file>{_e(name)}</span><br>label <b>{_e(tile.record.label)}</b> · predicted "
        f"<b>{_e(tile.record.prediction)}</b><br>P({_e(result.explained_class)}) {scores.before[i]:.3f} → "
        f"<b>{scores.after['truth'][i]:.3f}</b> without the stain, {scores.after['control'][i]:.3f} without the control"
    )


def sheet(result: EvaluationResult, tiles: Sequence[BeforeAfter], title: str, columns: int = 3) -> Figure:
    """A contact sheet of before/after tiles (the report's PNG, and the README's figure)."""
    scores = result.intervention
    assert scores is not None
    titles = [
        f"{Path(str(t.record.file)).name[:30]}\n{t.record.label}: P {scores.before[t.index]:.2f} → "
        f"{scores.after['truth'][t.index]:.2f} (control {scores.after['control'][t.index]:.2f})"
        for t in tiles
    ]
    figure = contact_sheet([t.panels for t in tiles], titles, [t.record.correct for t in tiles], columns)
    figure.suptitle(f"{title}\ncell | stain filled from its surroundings (green) | control filled (gold)")
    return figure


def section(result: EvaluationResult, folder: Path, size: int, preprocess: str, max_tiles: int, dpi: int) -> str:
    """The report's intervention section: the table, and each gallery's tiles and contact sheet."""
    scores = result.intervention
    if scores is None:
        return ""
    data = scores.to_json(result.resampler)
    parts = [
        "<h2>Intervention: does the model need the stain?</h2>",
        f"<p>For {_e(data['images'])} explained cells with a stain, the stain mask (dilated by "
        f"{_e(data['dilation_px'])} px) is filled from the cell's own surroundings — {_e(data['fill'])} — and "
        "the model is asked again; as a control, a region of the same shape and area elsewhere in the same cell "
        "is filled the same way, and so is each map's own top region of that area. A model that needs the stain "
        "loses its confidence under the first and keeps it under the control.</p>",
    ]
    rows = []
    for region in scores.rows():
        row = data[region]

        def figure(value: float | None, bounds: Sequence[float] | None, percent: bool = False) -> str:
            if value is None:
                return "&ndash;"
            text = f"{100 * value:.1f}&nbsp;%" if percent else f"{value:.3f}"
            if bounds:
                low, high = (100 * b for b in bounds) if percent else bounds
                text += f"<br><span class=ci>[{low:.{1 if percent else 3}f}, {high:.{1 if percent else 3}f}]</span>"
            return text

        paired = row.get("drop_minus_control_ci95")
        rows.append(
            f"<tr><td>{_e(region_name(region))}</td><td>{figure(row['mean_drop'], row.get('mean_drop_ci95'))}</td>"
            f"<td>{figure(row['flipped'], row.get('flipped_ci95'), True)}</td>"
            f"<td>{'&ndash;' if not paired else f'[{paired[0]:.3f}, {paired[1]:.3f}]'}</td></tr>"
        )
    parts.append(
        "<table><thead><tr><th>region removed</th><th>mean drop of P(" + _e(result.explained_class) + ")</th>"
        "<th>predictions flipped</th><th>drop minus the control's (paired 95 % interval)</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    tiles_dir = folder / TILES
    if tiles_dir.exists():
        shutil.rmtree(tiles_dir)
    tiles_dir.mkdir(parents=True)
    for name, chosen in result.intervention_galleries(max_tiles).items():
        tiles = gallery(chosen, size, preprocess)
        parts.append(f'<h3 id="{_e(name)}">{_e(TITLES[name])}: {len(chosen)}</h3>')
        if not tiles:
            parts.append("<p class=note>None.</p>")
            continue
        figures = []
        for number, tile in enumerate(tiles):
            path = f"{TILES}/{name}_{number:03d}.png"
            Image.fromarray(tile.panels).save(folder / path, optimize=True)
            figures.append(
                f'<figure class=wide><img src="{_e(path)}" alt="the cell before and after"><figcaption>'
                f"{caption(result, tile)}</figcaption></figure>"
            )
        parts.append(f'<p class=note>Contact sheet: <a href="{_e(name)}.png">{_e(name)}.png</a>.</p>')
        parts.append('<div class="tiles">' + "\n".join(figures) + "</div>")
        sheet(result, tiles, TITLES[name]).savefig(folder / f"{name}.png", dpi=dpi)
    return "\n".join(parts)
