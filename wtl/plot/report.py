"""The evaluation as a self-contained report folder: index.html, its thumbnails and contact sheets.

`write_report(result, folder, model)` turns an EvaluationResult into a folder that opens offline
in any browser straight from the file system: plain HTML and CSS (no script, no server, no
external URL, no absolute path; every text is HTML-escaped), the thumbnails under `thumbs/`,
and one PNG contact sheet per gallery beside index.html. The numbers are the result's; this
module only draws and writes.
"""

from __future__ import annotations

import html
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from wtl.evaluation.driver import MaskSource
from wtl.evaluation.galleries import ORDER, TITLES, positive_class
from wtl.evaluation.inputs import ModelLike
from wtl.evaluation.registry import OUTCOMES
from wtl.evaluation.result import EvaluationResult, ImageRecord
from wtl.maps.registry import FUSIONS
from wtl.metrics.localisation import POINTING_TOLERANCES
from wtl.metrics.sanity import SanityResult
from wtl.plot.charts import metrics_chart
from wtl.plot.style import LOOK, SHEET_DPI, Look
from wtl.plot.tiles import contact_sheet, gallery_cells, tile

THUMBS = "thumbs"
INDEX = "index.html"
MAX_TILES = 60


def _e(value: Any) -> str:
    """HTML-escaped text of anything."""
    return html.escape(str(value), quote=True)


def _pct(value: float | None) -> str:
    return "&ndash;" if value is None else f"{100 * value:.1f}&nbsp;%"


def _num(value: float | None) -> str:
    return "&ndash;" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _name(file: str | None) -> str:
    """A file's name only: the report never shows where the data lies on this machine."""
    return Path(str(file)).name if file else "(no file)"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table; header cells are escaped, body cells are given as HTML already (escaped by the caller)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    thead = f"<thead><tr>{head}</tr></thead>" if any(header) else ""
    return f"<table>{thead}<tbody>{body}</tbody></table>"


def _summary(result: EvaluationResult) -> str:
    """Accuracy, confusion matrix, per-class precision/recall/F1 and the block heads' accuracy."""
    report = result.classification
    names = list(report.class_names)
    parts = [f"<p>Accuracy <b>{_pct(report.accuracy)}</b> on {_e(report.images)} images.</p>"]
    confusion = [
        [_e(name), *(f"{_e(v)} <span class=note>({p:.1f}&nbsp;%)</span>" for v, p in zip(row, percent))]
        for name, row, percent in zip(names, report.confusion, report.confusion_percent)
    ]
    parts.append("<h3>Confusion matrix (rows: true class, columns: predicted; in brackets: % of the row)</h3>")
    parts.append(_table(["true \\ predicted", *names], confusion))
    scores = [*report.per_class.items(), ("macro avg", report.macro), ("weighted avg", report.weighted)]
    per_class = [[_e(name), _num(m.precision), _num(m.recall), _num(m.f1), _e(m.support)] for name, m in scores]
    parts.append("<h3>Per class</h3>")
    parts.append(_table(["class", "precision", "recall", "F1", "images"], per_class))
    if result.blocks:
        rows = [[_e(block), _pct(b.accuracy)] for block, b in result.blocks.items()]
        parts.append("<h3>Each block's own head</h3>")
        parts.append(_table(["block", "accuracy"], rows))
    return "\n".join(parts)


def _maps_table(result: EvaluationResult) -> str:
    """The pointing game, deletion/insertion and average drop per method and view, the fused row named by its rule."""
    rule = result.fusion_rule
    own = result.truth is not None
    inside, counted = ("mask", "pictures with a mask") if own else ("stain", "stained cells")
    against = (
        f"your ground truth ({_e(result.truth)}, outlined in green on the tiles)" if own else "the Giemsa stain mask"
    )
    rows = []
    for method, view, s in result.views():
        drop, increase = s.mean("average_drop"), s.mean("increase_in_confidence")
        rows.append(
            [
                _e(method),
                _e(f"fused ({rule})" if view == "fused" and rule else view),
                *(_pct(s.pointing(t)) for t in POINTING_TOLERANCES),
                _e(s.counted),
                _num(s.mean("relevance_mass")),
                _num(s.mean("relevance_rank")),
                _num(s.mean("deletion_auc")),
                _num(s.mean("insertion_auc")),
                _pct(None if drop is None else drop / 100),
                _pct(None if increase is None else increase / 100),
            ]
        )
    header = [
        "method",
        "view",
        *(f"peak ≤ {t:g} px" if t else f"peak inside {inside}" for t in POINTING_TOLERANCES),
        counted,
        "relevance mass ↑",
        "relevance rank ↑",
        "deletion ↓",
        "insertion ↑",
        "avg drop ↓",
        "increase ↑",
    ]
    text = [
        f"<p>Maps explaining <b>{_e(result.explained_class)}</b>. The pointing game asks whether the "
        f"map's maximum lies within the given distance of {against} (over the pictures whose mask is not "
        "empty); relevance mass is the share of the map's mass inside the mask and relevance rank the share of "
        "its |mask| highest pixels inside it (Arras et al., <i>CLEVR-XAI</i>, 2022); deletion and insertion are "
        "the areas under the class probability as pixels are removed or put back in the map's order.</p>",
        _table(header, rows),
    ]
    scored = {s.faithful_images for _, _, s in result.views()}
    explained = {s.images for _, _, s in result.views()}
    if len(scored) == 1 and len(explained) == 1 and 0 < next(iter(scored)) < next(iter(explained)):
        text.append(
            f"<p class=note>Deletion, insertion, average drop and increase: on a seeded uniform sample of "
            f"{_e(next(iter(scored)))} of the {_e(next(iter(explained)))} explained cells.</p>"
        )
    if any(view == "fused" for _, view, _ in result.views()) and rule in FUSIONS:
        text.append(f"<p>fused ({_e(rule)}): {_e(FUSIONS[rule])}.</p>")
    if result.best_map:
        method, view = result.best_map
        text.append(
            f"<p>Best map by the pointing game at 8 px: <b>{_e(method)} {_e(view)}</b>; the galleries show it.</p>"
        )
    return "\n".join(text)


def _sanity_table(sanity: SanityResult) -> str:
    """The randomisation test: mean Spearman rho per method after each cumulative stage."""
    stages = list(sanity.stages)
    header = ["method", *(s if i == 0 else f"+ {s}" for i, s in enumerate(stages))]
    rows = [[_e(m), *(_num(sanity.mean(m, s)) for s in stages)] for m in sanity.rhos]
    return "\n".join(
        [
            "<p>Model-parameter randomisation (Adebayo et al., <i>Sanity checks for saliency maps</i>, 2018): the "
            "weights are re-initialised from the top layer down, one stage at a time and cumulatively, and each "
            "column is the mean Spearman rank correlation between the trained model's maps and the randomised "
            f"model's, over {_e(sanity.images)} cells. A map that stays near 1 while the weights are destroyed "
            "shows the image, not what the model learned.</p>",
            _table(header, rows),
        ]
    )


def _rules(result: EvaluationResult) -> str:
    """The galleries' thresholds, in words."""
    rules = result.gallery_rules
    if rules is None:
        return ""
    if result.truth is not None:
        return (
            "<ul>"
            f"<li><b>Map misses</b>: pictures predicted right whose best map's peak lies more than "
            f"{_e(rules.map_miss_px)} px from the ground truth ({_e(result.truth)}).</li>"
            "<li>Each tile: the picture, then the picture under its map (red is where the map is highest), the "
            "ground truth outlined in green on both.</li>"
            "</ul>"
        )
    return (
        "<ul>"
        f"<li><b>Map misses</b>: Parasitized cells predicted right whose best map's peak lies more than "
        f"{_e(rules.map_miss_px)} px from the stain.</li>"
        f"<li><b>Suspect labels</b>: the label disagrees both with a confident prediction (probability ≥ "
        f"{_e(rules.suspect_confidence)}) and with the stain: labelled Parasitized with no stain at all, or "
        f"labelled Uninfected with a stain of at least {_e(rules.suspect_stain_area)} px (at "
        f"{_e(rules.image_size)} × {_e(rules.image_size)}).</li>"
        "<li>Each tile: the cell, then the cell under its map (jet: red is where the map is highest), the stain "
        "mask outlined in green on both.</li>"
        f"{_outcome_rule(result)}"
        "</ul>"
    )


def _outcome_rule(result: EvaluationResult) -> str:
    """What the galleries by outcome (evaluate --gallery) hold, in words; '' without them."""
    if not any(name in result.galleries for name in OUTCOMES):
        return ""
    names = list(result.classification.class_names)
    positive = names[positive_class(names)]
    others = ", ".join(n for n in names if n != positive)
    return (
        f"<li><b>True / false positives / negatives</b>: positive is {_e(positive)}, negative {_e(others)}; a true "
        f"positive is a {_e(positive)} picture predicted {_e(positive)}, a false positive one of {_e(others)} "
        "predicted so. Each sorted by the prediction's confidence, the most confident first (for false ones, the "
        f"worst first); the maps explain {_e(result.explained_class)}.</li>"
    )


def _caption(record: ImageRecord, area: str = "stain") -> str:
    """A tile's caption: file name, label, prediction and confidence, the stain's (or mask's) area, distance, reason."""
    lines = [
        f"<span class=file>{_e(_name(record.file))}</span>",
        f"label <b>{_e(record.label)}</b> · predicted <b>{_e(record.prediction)}</b> {record.probability:.3f}",
        f"{area} {_e(record.stain_area)} px"
        + ("" if record.distance is None else f" · peak {record.distance:.1f} px from it"),
    ]
    if record.reason:
        lines.append(f"<i>{_e(record.reason)}</i>")
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


def write_report(
    result: EvaluationResult,
    folder: str | Path,
    model: ModelLike | None = None,
    device: torch.device | str = "cpu",
    max_tiles: int = MAX_TILES,
    details: Mapping[str, Any] | None = None,
    progress: bool = True,
    look: Look = LOOK,
    truth: MaskSource | None = None,
) -> Path:
    """Write the report of an EvaluationResult into `folder`; returns the path of its index.html.

    The folder gets index.html (summary, maps table, sanity check, galleries), thumbs/*.png
    (one tile per gallery cell, at most `max_tiles` per gallery, worst first), one contact
    sheet per gallery (none for an empty gallery) and metrics.png. `model` (the one evaluated)
    draws the maps on the tiles; without it the tiles show the cells and their stain only.
    `details` are extra lines for the summary (e.g. {'model': ..., 'data': ...}); a value that
    is an absolute path is shown by its name only. Earlier thumbnails are replaced. `truth` (the
    evaluation's own ground truth, data.truth.GroundTruth) is what the tiles outline instead of the stain.
    """
    folder = Path(folder)
    thumbs = folder / THUMBS
    if thumbs.exists():
        shutil.rmtree(thumbs)
    thumbs.mkdir(parents=True)
    for stale in TITLES:
        (folder / f"{stale}.png").unlink(missing_ok=True)
    heading = f"Where to look: evaluation of {result.classification.images} images"
    sections = [_details(details), "<h2>Summary</h2>", _summary(result), "<h2>Maps</h2>", _maps_table(result)]
    if result.methods:
        metrics_chart(result).savefig(folder / "metrics.png", dpi=SHEET_DPI)
        sections.append('<p><img src="metrics.png" alt="bar charts of the maps table" style="max-width:100%"></p>')
    if result.sanity is not None:
        sections += ["<h2>Sanity check</h2>", _sanity_table(result.sanity)]
    present = [name for name in TITLES if name in result.galleries]
    if present:
        sections += ["<h2>Galleries</h2>", _rules(result)]
    total = sum(min(len(result.galleries[n]), max_tiles) for n in present)
    with tqdm(total=total, desc="report", unit="tile", disable=not progress, leave=False) as bar:
        for name in present:
            sections.append(_gallery(name, result, folder, model, device, max_tiles, look, truth))
            bar.update(min(len(result.galleries[name]), max_tiles))
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
    result: EvaluationResult,
    folder: Path,
    model: ModelLike | None,
    device: torch.device | str,
    max_tiles: int,
    look: Look,
    truth: MaskSource | None = None,
) -> str:
    """One gallery's section; writes its tiles and contact sheet."""
    records = list(result.galleries[name])
    shown = records[:max_tiles]
    cells = gallery_cells(shown, result, model, device, truth=truth)
    title = TITLES[name]
    parts = [f'<h3 id="{_e(name)}">{_e(title)}: {len(records)}</h3>']
    if not records:
        parts.append("<p class=note>None.</p>")
        return "\n".join(parts)
    note = f"Sorted {_e(ORDER[name])}; "
    note += f"showing the first {len(cells)} of {len(records)}" if len(records) > len(cells) else f"all {len(cells)}"
    missing = len(shown) - len(cells)
    if missing:
        note += f" ({missing} of the first {len(shown)} have no readable file and are listed in the JSON only)"
    parts.append(f'<p class=note>{note}. Contact sheet: <a href="{_e(name)}.png">{_e(name)}.png</a>.</p>')
    area = "stain" if result.truth is None else "mask"
    pictures, figures = [], []
    for number, cell in enumerate(cells):
        path = f"{THUMBS}/{name}_{number:03d}.png"
        picture = tile(cell.image, cell.heat, cell.mask, look=look)
        Image.fromarray(picture).save(folder / path, optimize=True)
        pictures.append(picture)
        alt = f"{_name(cell.record.file)}: the cell and its map"
        caption = _caption(cell.record, area)
        figures.append(f'<figure><img src="{_e(path)}" alt="{_e(alt)}"><figcaption>{caption}</figcaption></figure>')
    parts.append('<div class="tiles">' + "\n".join(figures) + "</div>")
    if cells:
        titles = [
            f"{_name(c.record.file)[:34]}\n{c.record.label} → {c.record.prediction} "
            f"{c.record.probability:.2f}, {area} {c.record.stain_area} px"
            for c in cells
        ]
        sheet = contact_sheet(pictures, titles, [c.record.correct for c in cells])
        sheet.suptitle(f"{title}: {len(cells)} of {len(records)}, {ORDER[name]} (picture | its map, {area} outlined)")
        sheet.savefig(folder / f"{name}.png", dpi=SHEET_DPI)
    return "\n".join(parts)
