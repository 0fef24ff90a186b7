"""Gallery tiles: a picture beside itself under its map, the ground truth outlined; and sheets of them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from wtl.data.images import read_image_uint8
from wtl.errors import ImageError
from wtl.evaluation.driver import MaskSource
from wtl.evaluation.inputs import ModelLike
from wtl.evaluation.result import EvaluationResult, ImageRecord
from wtl.maps import methods as map_methods
from wtl.metrics.stain import stain_mask
from wtl.nets.modes import eval_mode
from wtl.plot.style import LOOK, OUTLINE, Look, colour_map, greyscale, title_colour

TILE_SCALE = 2  # thumbnails at twice the network's input size per panel


def outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a (H, W) bool mask: in the mask, with a 4-neighbour outside it (or at the edge)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[1:-1, :-2] & padded[1:-1, 2:] & padded[:-2, 1:-1] & padded[2:, 1:-1]
    return mask & ~inner


def tile(
    image: np.ndarray, heat: np.ndarray | None, mask: np.ndarray, scale: int = TILE_SCALE, look: Look = LOOK
) -> np.ndarray:
    """One gallery tile (S*H, 2*S*W, 3) uint8: the cell | the cell under its map, both with the stain outlined.

    `image` is (H, W, 3) uint8, `heat` (H, W) in [0, 1] (None: the right panel is the cell alone),
    `mask` (H, W) bool. The map is blended as the views draw it (plot.style.Look).
    """
    height, width = image.shape[:2]
    big = (width * scale, height * scale)
    cell = np.asarray(Image.fromarray(image).resize(big, Image.Resampling.BILINEAR))
    if heat is None:
        mapped = cell.copy()
    else:
        under = greyscale(cell) if look.grey else cell
        coloured = colour_map(heat, look.cmap, look.vmin, look.vmax)
        coloured = np.asarray(Image.fromarray(coloured).resize(big, Image.Resampling.BILINEAR))
        alpha = look.opacity(np.kron(heat, np.ones((scale, scale)))) if look.fade else look.alpha
        alpha = np.asarray(alpha)[..., None] if np.ndim(alpha) else alpha
        mapped = ((1 - alpha) * under + alpha * coloured).round().astype(np.uint8)
    edge = outline(np.kron(mask, np.ones((scale, scale), dtype=bool)))
    panels = []
    for panel in (cell, mapped):
        panel = panel.copy()
        panel[edge] = OUTLINE
        panels.append(panel)
    gap = np.full((height * scale, 2, 3), 255, dtype=np.uint8)
    return np.concatenate([panels[0], gap, panels[1]], axis=1)


def contact_sheet(
    tiles: Sequence[np.ndarray], titles: Sequence[str], correct: Sequence[bool | None], columns: int = 4
) -> Figure:
    """A grid of gallery tiles (see `tile`), titled green where the prediction is right, red where wrong."""
    count = len(tiles)
    columns = max(1, min(columns, count))
    rows = max(1, math.ceil(count / columns))
    fig = Figure(figsize=(max(3.3 * columns, 6.6), 1.95 * rows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax, picture, title, ok in zip(axes, tiles, titles, correct):
        ax.imshow(picture, interpolation="antialiased")
        ax.set_title(title, fontsize=7, color=title_colour(ok))
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[count:]:
        ax.set_axis_off()
    return fig


@dataclass
class GalleryCell:
    """One gallery record with its picture re-read at the model's size, its map (or None) and its mask."""

    record: ImageRecord
    image: np.ndarray  # (H, W, 3) uint8
    heat: np.ndarray | None  # (H, W) in [0, 1]
    mask: np.ndarray  # (H, W) bool


def _view_of(result: EvaluationResult) -> tuple[str, str] | None:
    """The map the galleries show: evaluate's best map, else the first method's fused (or first) view."""
    if result.best_map:
        return result.best_map
    for method, views in result.methods.items():
        if views:
            return method, "fused" if "fused" in views else next(iter(views))
    return None


def gallery_cells(
    records: Sequence[ImageRecord],
    result: EvaluationResult,
    model: ModelLike | None,
    device: torch.device | str,
    batch_size: int = 32,
    truth: MaskSource | None = None,
) -> list[GalleryCell]:
    """Each record's cell re-read at the model's size, with the map evaluate scored it by (maps.methods.views).

    Records without a file, or whose file can no longer be read, are left out. Evaluate keeps only
    scalars per image, so the maps are recomputed here for the few cells a gallery shows. The mask
    outlined is `truth`'s (one's own ground truth) where given, else the stain mask.
    """
    size = model.image_size if model is not None else result.image_size
    preprocess = str(getattr(model, "preprocess", "squash"))
    names = list(result.classification.class_names)
    view = _view_of(result) if model is not None else None
    read: list[tuple[ImageRecord, torch.Tensor]] = []
    for record in records:
        if not record.file:
            continue
        try:
            read.append((record, read_image_uint8(record.file, size, preprocess)))
        except (ImageError, ValueError, OSError):
            continue
    cells: list[GalleryCell] = []
    for start in range(0, len(read), batch_size):
        chunk = read[start : start + batch_size]
        images = torch.stack([image for _, image in chunk]).float().div_(255.0)
        heats: list[np.ndarray | None] = [None] * len(chunk)
        if model is not None and view is not None:
            # The class evaluate explained: Parasitized for a malaria model, else each image's label.
            explained = result.explained_class
            labels = [names.index(explained) if explained in names else names.index(r.label) for r, _ in chunk]
            method, name = view
            with eval_mode(model.network):
                maps = map_methods.views(
                    model.network,
                    method,
                    images.to(device),
                    torch.tensor(labels, device=device),
                    result.fusion_rule,
                    blocks=name != "last",  # a Network's Grad-CAM views of every block (ignored by NetworkMultiLoss)
                )
            heats = list(maps[name].cpu().numpy())
        for (record, image), picture, heat in zip(chunk, images, heats):
            own = truth.mask(record.file, count=False) if truth is not None else None
            if truth is not None:
                mask = own.numpy() if own is not None else np.zeros(picture.shape[-2:], dtype=bool)
            else:
                mask = stain_mask(picture).numpy()
            cells.append(GalleryCell(record, image.permute(1, 2, 0).numpy(), heat, mask))
    return cells
