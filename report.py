"""The evaluation as a self-contained report folder: index.html, its thumbnails and contact sheets.

`write_report(result, folder, model)` turns what `evaluation.evaluate` returns into a folder
that opens offline in any browser straight from the file system: plain HTML and CSS (no
script, no server, no external URL, no absolute path; every text is HTML-escaped), the
thumbnails under `thumbs/`, and one PNG contact sheet per gallery beside index.html.

The numbers are evaluation.py's; this module only draws and writes. The galleries' cells
are re-read from their files (evaluate keeps per image only a few scalars), and their maps
recomputed with the model through `evaluation.view_heatmaps`, the same function evaluate
scored them with.
"""

from __future__ import annotations

import html
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from tqdm import tqdm

import cams
import charts
import evaluation
import gradcams
from model_data import ImageError, read_image_uint8

# The views' colours (render.py): jet at alpha 0.5 over the cell.
CMAP = "jet"
ALPHA = 0.5
THUMBS = "thumbs"
INDEX = "index.html"
MAX_TILES = 60
TILE_SCALE = 2  # thumbnails at twice the network's input size per panel
OUTLINE = np.array([0, 255, 0], dtype=np.uint8)  # the stain mask's outline: pure green, seen on pink and on jet
GALLERY_TITLES = {
    "misclassified": "Misclassified",
    "map_misses": "Map misses",
    "suspect_labels": "Suspect labels",
}
GALLERY_ORDER = {
    "misclassified": "the most confident wrong prediction first",
    "map_misses": "the peak furthest from the stain first",
    "suspect_labels": "the most confident prediction first, then the larger stain",
}


# --------------------------------------------------------------------------- tiles


def outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a (H, W) bool mask: in the mask, with a 4-neighbour outside it (or at the edge)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[1:-1, :-2] & padded[1:-1, 2:] & padded[:-2, 1:-1] & padded[2:, 1:-1]
    return mask & ~inner


def colour_map(heat: np.ndarray) -> np.ndarray:
    """A [0, 1] (H, W) heatmap as jet RGB uint8 (H, W, 3), the colours render.overlay draws."""
    rgba = matplotlib.colormaps[CMAP](np.clip(heat, 0.0, 1.0))
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def tile(image: np.ndarray, heat: np.ndarray | None, mask: np.ndarray, scale: int = TILE_SCALE) -> np.ndarray:
    """One gallery tile (S*H, 2*S*W, 3) uint8: the cell | the cell under its map, both with the stain outlined.

    `image` is (H, W, 3) uint8, `heat` (H, W) in [0, 1] (None: the right panel is the cell alone),
    `mask` (H, W) bool. The map is blended at ALPHA, as the views draw it.
    """
    height, width = image.shape[:2]
    big = (width * scale, height * scale)
    cell = np.asarray(Image.fromarray(image).resize(big, Image.Resampling.BILINEAR))
    if heat is None:
        mapped = cell.copy()
    else:
        jet = np.asarray(Image.fromarray(colour_map(heat)).resize(big, Image.Resampling.BILINEAR))
        mapped = ((1 - ALPHA) * cell + ALPHA * jet).round().astype(np.uint8)
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
    """A grid of gallery tiles (see `tile`: the cell | the cell under its map, stain outlined), titled.

    Titles are green where the prediction is right, red where wrong (None: black).
    """
    count = len(tiles)
    columns = max(1, min(columns, count))
    rows = max(1, math.ceil(count / columns))
    fig = Figure(figsize=(max(3.3 * columns, 6.6), 1.95 * rows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax, picture, title, ok in zip(axes, tiles, titles, correct):
        ax.imshow(picture, interpolation="antialiased")
        ax.set_title(title, fontsize=7, color="black" if ok is None else ("darkgreen" if ok else "firebrick"))
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[count:]:
        ax.set_axis_off()
    return fig


# --------------------------------------------------------------------------- the gallery cells


def _view_of(result: Mapping[str, Any]) -> tuple[str, str] | None:
    """The map the galleries show: evaluate's best map, else the first method's fused (or first) view."""
    best = result.get("best_map")
    if best:
        return best["method"], best["view"]
    for method, views in result.get("methods", {}).items():
        if views:
            return method, "fused" if "fused" in views else next(iter(views))
    return None


def _gallery_cells(
    records: Sequence[Mapping[str, Any]],
    result: Mapping[str, Any],
    model: evaluation.ModelLike | None,
    device: torch.device | str,
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """Each record's cell re-read at the model's size: {record, image (H, W, 3), heat (H, W) | None, mask}.

    Records without a file, or whose file can no longer be read, are left out.
    """
    size = model.image_size if model is not None else int(result.get("gallery_rules", {}).get("image_size", 128))
    preprocess = str(getattr(model, "preprocess", "squash"))
    names = list(result["classification"]["class_names"])
    explained = result.get("explained_class")
    view = _view_of(result) if model is not None else None
    cells: list[dict[str, Any]] = []
    for record in records:
        if not record.get("file"):
            continue
        try:
            image = read_image_uint8(record["file"], size, preprocess)
        except (ImageError, ValueError, OSError):
            continue
        cells.append({"record": record, "image": image, "heat": None})
    for start in range(0, len(cells), batch_size):
        chunk = cells[start : start + batch_size]
        images = torch.stack([c["image"] for c in chunk]).float().div_(255.0)
        for cell, image in zip(chunk, images):
            cell["mask"] = evaluation.stain_mask(image).numpy()
        if model is None or view is None:
            continue
        # The class evaluate explained: Parasitized for a malaria model, else each image's label.
        labels = [names.index(explained) if explained in names else names.index(c["record"]["label"]) for c in chunk]
        method, name = view
        with gradcams.eval_mode(model.network):
            heats = evaluation.view_heatmaps(
                model,
                method,
                images.to(device),
                torch.tensor(labels, device=device),
                fuse=str(result.get("fusion_rule", cams.DEFAULT_FUSION)),
                every_block=name != "last",  # a Network's Grad-CAM views of every block (ignored by NetworkMultiLoss)
            )
        for cell, heat in zip(chunk, heats[name].cpu().numpy()):
            cell["heat"] = heat
    for cell in cells:
        cell["image"] = cell["image"].permute(1, 2, 0).numpy()
    return cells


# --------------------------------------------------------------------------- HTML


def _e(value: Any) -> str:
    """HTML-escaped text of anything."""
    return html.escape(str(value), quote=True)


def _pct(value: Any) -> str:
    return "&ndash;" if value is None else f"{100 * value:.1f}&nbsp;%"


def _num(value: Any) -> str:
    return "&ndash;" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _name(file: Any) -> str:
    """A file's name only: the report never shows where the data lies on this machine."""
    return Path(str(file)).name if file else "(no file)"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], raw: bool = True) -> str:
    """An HTML table; header cells are escaped, body cells are given as HTML already (escaped by the caller)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c if raw else _e(c)}</td>" for c in row) + "</tr>" for row in rows)
    thead = f"<thead><tr>{head}</tr></thead>" if any(header) else ""
    return f"<table>{thead}<tbody>{body}</tbody></table>"


def _summary(result: Mapping[str, Any]) -> str:
    """Accuracy, confusion matrix, per-class precision/recall/F1 and the block heads' accuracy."""
    report = result["classification"]
    names = list(report["class_names"])
    parts = [f"<p>Accuracy <b>{_pct(report['accuracy'])}</b> on {_e(report['images'])} images.</p>"]
    confusion = [[_e(name), *(_e(v) for v in row)] for name, row in zip(names, report["confusion_matrix"])]
    parts.append("<h3>Confusion matrix (rows: true class, columns: predicted)</h3>")
    parts.append(_table(["true \\ predicted", *names], confusion))
    per_class = [
        [_e(name), _num(m["precision"]), _num(m["recall"]), _num(m["f1"]), _e(m["support"])]
        for name, m in ((n, report["per_class"][n]) for n in names)
    ]
    parts.append("<h3>Per class</h3>")
    parts.append(_table(["class", "precision", "recall", "F1", "images"], per_class))
    blocks = result.get("blocks")
    if blocks:
        rows = [[_e(block), _pct(b["accuracy"])] for block, b in blocks.items()]
        parts.append("<h3>Each block's own head</h3>")
        parts.append(_table(["block", "accuracy"], rows))
    return "\n".join(parts)


def _maps_table(result: Mapping[str, Any]) -> str:
    """The pointing game, deletion/insertion and average drop per method and view, the fused row named by its rule."""
    rule = result.get("fusion_rule")
    rows = []
    for method, views in result["methods"].items():
        for view, m in views.items():
            shown = f"fused ({rule})" if view == "fused" and rule else view
            rows.append(
                [
                    _e(method),
                    _e(shown),
                    *(_pct(m.get(f"pointing_{t:g}px")) for t in evaluation.POINTING_TOLERANCES),
                    _e(m.get("pointing_counted", 0)),
                    _num(m.get("deletion_auc")),
                    _num(m.get("insertion_auc")),
                    _pct(None if m.get("average_drop") is None else m["average_drop"] / 100),
                    _pct(None if m.get("increase_in_confidence") is None else m["increase_in_confidence"] / 100),
                ]
            )
    header = [
        "method",
        "view",
        *(f"peak ≤ {t:g} px" if t else "peak inside stain" for t in evaluation.POINTING_TOLERANCES),
        "stained cells",
        "deletion ↓",
        "insertion ↑",
        "avg drop ↓",
        "increase ↑",
    ]
    text = [
        f"<p>Maps explaining <b>{_e(result.get('explained_class', '?'))}</b>. The pointing game asks whether the "
        "map's maximum lies within the given distance of the Giemsa stain mask (over the cells whose mask is not "
        "empty); deletion and insertion are the areas under the class probability as pixels are removed or put "
        "back in the map's order.</p>",
        _table(header, rows),
    ]
    scored = {m.get("faithful_images") for views in result["methods"].values() for m in views.values()}
    explained = {m.get("images") for views in result["methods"].values() for m in views.values()}
    if len(scored) == 1 and len(explained) == 1 and 0 < (next(iter(scored)) or 0) < (next(iter(explained)) or 0):
        text.append(
            f"<p class=note>Deletion, insertion, average drop and increase: on a seeded uniform sample of "
            f"{_e(next(iter(scored)))} of the {_e(next(iter(explained)))} explained cells.</p>"
        )
    if any(view == "fused" for views in result["methods"].values() for view in views) and rule in cams.FUSION_RULES:
        text.append(f"<p>fused ({_e(rule)}): {_e(cams.FUSION_RULES[rule].description)}.</p>")
    best = result.get("best_map")
    if best:
        text.append(
            f"<p>Best map by the pointing game at 8 px: <b>{_e(best['method'])} {_e(best['view'])}</b>; "
            "the galleries show it.</p>"
        )
    return "\n".join(text)


def _sanity_table(sanity: Mapping[str, Any]) -> str:
    """The randomisation test: mean Spearman rho per method after each cumulative stage."""
    stages = list(sanity["stages"])
    header = ["method", *(s if i == 0 else f"+ {s}" for i, s in enumerate(stages))]
    rows = [[_e(m), *(_num(values.get(s)) for s in stages)] for m, values in sanity["methods"].items()]
    return "\n".join(
        [
            "<p>Model-parameter randomisation (Adebayo et al., <i>Sanity checks for saliency maps</i>, 2018): the "
            "weights are re-initialised from the top layer down, one stage at a time and cumulatively, and each "
            "column is the mean Spearman rank correlation between the trained model's maps and the randomised "
            f"model's, over {_e(sanity['images'])} cells. A map that stays near 1 while the weights are destroyed "
            "shows the image, not what the model learned.</p>",
            _table(header, rows),
        ]
    )


def _rules(result: Mapping[str, Any]) -> str:
    """The galleries' thresholds, in words."""
    rules = result.get("gallery_rules", {})
    if not rules:
        return ""
    return (
        "<ul>"
        f"<li><b>Map misses</b>: Parasitized cells predicted right whose best map's peak lies more than "
        f"{_e(rules.get('map_miss_px'))} px from the stain.</li>"
        f"<li><b>Suspect labels</b>: the label disagrees both with a confident prediction (probability ≥ "
        f"{_e(rules.get('suspect_confidence'))}) and with the stain: labelled Parasitized with no stain at all, or "
        f"labelled Uninfected with a stain of at least {_e(rules.get('suspect_stain_area'))} px (at "
        f"{_e(rules.get('image_size'))} × {_e(rules.get('image_size'))}).</li>"
        "<li>Each tile: the cell, then the cell under its map (jet: red is where the map is highest), the stain "
        "mask outlined in green on both.</li>"
        "</ul>"
    )


def _caption(record: Mapping[str, Any]) -> str:
    """A tile's caption: file name, label, prediction and confidence, stain area, distance, reason."""
    probability, distance = float(record["probability"]), record.get("distance")
    lines = [
        f"<span class=file>{_e(_name(record.get('file')))}</span>",
        f"label <b>{_e(record['label'])}</b> · predicted <b>{_e(record['prediction'])}</b> {probability:.3f}",
        f"stain {_e(record['stain_area'])} px"
        + ("" if distance is None else f" · peak {float(distance):.1f} px from it"),
    ]
    if record.get("reason"):
        lines.append(f"<i>{_e(record['reason'])}</i>")
    return "<br>".join(lines)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; padding: 0 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child, td:nth-child(2) { text-align: left; }
thead th { background: #f1f1f1; }
.tiles { display: flex; flex-wrap: wrap; gap: 0.8em; }
figure { margin: 0; width: 262px; font-size: 0.78em; line-height: 1.35; }
figure img { width: 262px; height: auto; display: block; border: 1px solid #ddd; }
.file { font-family: monospace; font-size: 0.9em; word-break: break-all; color: #555; }
.note { color: #555; }
"""


def _page(title: str, sections: Sequence[str]) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n"
        f"<title>{_e(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{_e(title)}</h1>\n" + "\n".join(sections) + "\n</body>\n</html>\n"
    )


# --------------------------------------------------------------------------- the folder


def write_report(
    result: Mapping[str, Any],
    folder: str | Path,
    model: evaluation.ModelLike | None = None,
    device: torch.device | str = "cpu",
    max_tiles: int = MAX_TILES,
    title: str = "",
    details: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> Path:
    """Write the report of an `evaluation.evaluate` result into `folder`; returns the path of its index.html.

    The folder gets index.html (summary, maps table, sanity check, galleries), thumbs/*.png
    (one tile per gallery cell, at most `max_tiles` per gallery, worst first), one contact
    sheet per gallery (misclassified.png, map_misses.png, suspect_labels.png; none for an
    empty gallery) and metrics.png (charts.metrics_chart). `model` (the one evaluated)
    draws the maps on the tiles; without it the tiles show the cells and their stain only.
    `details` are extra lines for the summary (e.g. {'model': ..., 'data': ...}); a value
    that is an absolute path is shown by its name only. Earlier thumbnails are replaced.
    """
    folder = Path(folder)
    thumbs = folder / THUMBS
    if thumbs.exists():
        shutil.rmtree(thumbs)
    thumbs.mkdir(parents=True)
    for stale in GALLERY_TITLES:
        (folder / f"{stale}.png").unlink(missing_ok=True)
    heading = title or f"Where to look: evaluation of {result['classification']['images']} images"
    sections = [_details(details), "<h2>Summary</h2>", _summary(result), "<h2>Maps</h2>", _maps_table(result)]
    if result.get("methods"):
        figure = charts.metrics_chart(result)
        figure.savefig(folder / "metrics.png", dpi=80)
        sections.append('<p><img src="metrics.png" alt="bar charts of the maps table" style="max-width:100%"></p>')
    if result.get("sanity"):
        sections += ["<h2>Sanity check</h2>", _sanity_table(result["sanity"])]
    present = [name for name in GALLERY_TITLES if name in result]
    if present:
        sections += ["<h2>Galleries</h2>", _rules(result)]
    bar = tqdm(
        total=sum(min(len(result[n]), max_tiles) for n in present),
        desc="report",
        unit="tile",
        disable=not progress,
        leave=False,
    )
    with bar:
        for name in present:
            sections.append(_gallery(name, result, folder, model, device, max_tiles, bar))
    index = folder / INDEX
    index.write_text(_page(heading, sections), encoding="utf-8")
    return index


def _details(details: Mapping[str, Any] | None) -> str:
    if not details:
        return ""
    rows = []
    for key, value in details.items():
        text = str(value)
        if Path(text).is_absolute() or "://" in text:
            text = Path(text).name
        rows.append([_e(key), _e(text)])
    return _table(["", ""], rows)


def _gallery(
    name: str,
    result: Mapping[str, Any],
    folder: Path,
    model: evaluation.ModelLike | None,
    device: torch.device | str,
    max_tiles: int,
    bar: tqdm,
) -> str:
    """One gallery's section; writes its tiles and contact sheet."""
    records = list(result[name])
    shown = records[:max_tiles]
    cells = _gallery_cells(shown, result, model, device)
    bar.update(len(shown))
    title = GALLERY_TITLES[name]
    parts = [f'<h3 id="{_e(name)}">{_e(title)}: {len(records)}</h3>']
    if not records:
        parts.append("<p class=note>None.</p>")
        return "\n".join(parts)
    note = f"Sorted {_e(GALLERY_ORDER[name])}; "
    note += f"showing the first {len(cells)} of {len(records)}" if len(records) > len(cells) else f"all {len(cells)}"
    missing = len(shown) - len(cells)
    if missing:
        note += f" ({missing} of the first {len(shown)} have no readable file and are listed in the JSON only)"
    parts.append(f'<p class=note>{note}. Contact sheet: <a href="{_e(name)}.png">{_e(name)}.png</a>.</p>')
    pictures, figures = [], []
    for number, cell in enumerate(cells):
        path = f"{THUMBS}/{name}_{number:03d}.png"
        picture = tile(cell["image"], cell["heat"], cell["mask"])
        Image.fromarray(picture).save(folder / path, optimize=True)
        pictures.append(picture)
        alt = f"{_name(cell['record'].get('file'))}: the cell and its map"
        caption = _caption(cell["record"])
        figures.append(f'<figure><img src="{_e(path)}" alt="{_e(alt)}"><figcaption>{caption}</figcaption></figure>')
    parts.append('<div class="tiles">' + "\n".join(figures) + "</div>")
    if cells:
        titles = [
            f"{_name(c['record'].get('file'))[:34]}\n{c['record']['label']} → {c['record']['prediction']} "
            f"{c['record']['probability']:.2f}, stain {c['record']['stain_area']} px"
            for c in cells
        ]
        correct = [c["record"]["label"] == c["record"]["prediction"] for c in cells]
        sheet = contact_sheet(pictures, titles, correct)
        sheet.suptitle(f"{title}: {len(cells)} of {len(records)}, worst first (cell | its map, stain outlined)")
        sheet.savefig(folder / f"{name}.png", dpi=80)
    return "\n".join(parts)
