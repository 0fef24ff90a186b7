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
from wtl.metrics.bootstrap import unit_count
from wtl.metrics.localisation import POINTING_TOLERANCES
from wtl.metrics.sanity import SanityResult
from wtl.plot import interventions as intervention_report
from wtl.plot.charts import metrics_chart
from wtl.plot.style import LOOK, SHEET_DPI, Look
from wtl.plot.tiles import contact_sheet, gallery_cells, tile

THUMBS = "thumbs"
INDEX = "index.html"
MAX_TILES = 60


def _e(value: Any) -> str:
    """HTML-escaped text of anything."""
    return html.escape(str(value), quote=True)


def _pct(value: float | None, bounds: Sequence[float] | None = None) -> str:
    text = "&ndash;" if value is None else f"{100 * value:.1f}&nbsp;%"
    return text + _interval(bounds, True)


def _num(value: float | None, bounds: Sequence[float] | None = None) -> str:
    text = "&ndash;" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
    return text + _interval(bounds, False)


def _interval(bounds: Sequence[float] | None, percent: bool) -> str:
    """A figure's 95 % interval as a small grey line under it ('' without one)."""
    if bounds is None:
        return ""
    low, high = (100 * b for b in bounds) if percent else bounds
    text = f"[{low:.1f}, {high:.1f}]" if percent else f"[{low:.3f}, {high:.3f}]"
    return f"<br><span class=ci>{text}</span>"


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
    intervals = result.classification_intervals()
    described = result.resampler.describe()
    accuracy = _pct(report.accuracy).replace("&nbsp;", " ")
    bounds = intervals.get("accuracy")
    shown = f" (95 % interval {100 * bounds[0]:.1f}–{100 * bounds[1]:.1f} %)" if bounds else ""
    parts = [
        f"<p>Accuracy <b>{accuracy}</b>{shown} on {_e(report.images)} images. Every interval in this report is a "
        f"95 % percentile bootstrap over the {_e(unit_count(described['units'], described['unit']))} "
        f"({_e(described['replicates'])} replicates): cells of one patient, faces of one person, are not "
        "independent draws.</p>"
    ]
    confusion = [
        [_e(name), *(f"{_e(v)} <span class=note>({p:.1f}&nbsp;%)</span>" for v, p in zip(row, percent))]
        for name, row, percent in zip(names, report.confusion, report.confusion_percent)
    ]
    parts.append("<h3>Confusion matrix (rows: true class, columns: predicted; in brackets: % of the row)</h3>")
    parts.append(_table(["true \\ predicted", *names], confusion))
    scores = [(n, s, n) for n, s in report.per_class.items()]
    scores += [("macro avg", report.macro, "macro"), ("weighted avg", report.weighted, "weighted")]
    per_class = [
        [
            _e(name),
            *(_num(getattr(m, f), intervals.get(f"{f}/{key}")) for f in ("precision", "recall", "f1")),
            _e(m.support),
        ]
        for name, m, key in scores
    ]
    parts.append("<h3>Per class</h3>")
    parts.append(_table(["class", "precision", "recall", "F1", "images"], per_class))
    if result.blocks:
        block_bounds = result.block_intervals()
        rows = [[_e(block), _pct(b.accuracy, block_bounds.get(block))] for block, b in result.blocks.items()]
        parts.append("<h3>Each block's own head</h3>")
        parts.append(_table(["block", "accuracy"], rows))
    return "\n".join(parts)


def _scaled(
    result: EvaluationResult, method: str, view: str, figure: str, factor: float = 1.0
) -> tuple[float | None, list[float] | None]:
    """One view's mean of a faithfulness figure and its interval, divided by `factor`."""
    value = result.methods[method][view].mean(figure)
    bounds = result.ci(method, view, figure)
    return (
        None if value is None else value / factor,
        None if bounds is None else [bounds[0] / factor, bounds[1] / factor],
    )


def _maps_table(result: EvaluationResult) -> str:
    """The pointing game, deletion/insertion and average drop per method and view, the fused row named by its rule."""
    rule = result.fusion_rule
    own = result.truth is not None
    inside, counted = ("mask", "pictures with a mask") if own else ("stain", "stained cells")
    against = (
        f"your ground truth ({_e(result.truth)}, outlined in green on the tiles)" if own else "the Giemsa stain mask"
    )
    differences = result.differences()
    rows = []
    for method, view, s in result.views():
        tied = {f for f, d in differences.items() if f"{method} {view}" in d.get("tied_with_best", [])}
        drop = _scaled(result, method, view, "average_drop", 100)
        increase = _scaled(result, method, view, "increase_in_confidence", 100)
        cells = [
            *(
                (f"pointing_{t:g}px", _pct(s.pointing(t), result.ci(method, view, f"pointing_{t:g}px")))
                for t in POINTING_TOLERANCES
            ),
            ("relevance_mass", _num(*_scaled(result, method, view, "relevance_mass"))),
            ("relevance_rank", _num(*_scaled(result, method, view, "relevance_rank"))),
            ("deletion_auc", _num(*_scaled(result, method, view, "deletion_auc"))),
            ("insertion_auc", _num(*_scaled(result, method, view, "insertion_auc"))),
            ("average_drop", _pct(*drop)),
            ("increase_in_confidence", _pct(*increase)),
        ]
        shown = [f"<b>{text}</b>" if figure in tied else text for figure, text in cells]
        rows.append(
            [
                _e(method),
                _e(f"fused ({rule})" if view == "fused" and rule else view),
                *shown[: len(POINTING_TOLERANCES)],
                _e(s.counted),
                *shown[len(POINTING_TOLERANCES) :],
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
        "<p class=note>Under each figure its 95 % bootstrap interval. Bold: per column the best map and every map "
        "whose paired difference from it (the same cells resampled for both) has an interval containing 0 — "
        "differences between bold entries are not distinguishable from none.</p>",
    ]
    scored = {s.faithful_images for _, _, s in result.views()}
    explained = {s.images for _, _, s in result.views()}
    if len(scored) == 1 and len(explained) == 1 and 0 < next(iter(scored)) < next(iter(explained)):
        text.append(
            f"<p class=note>Deletion, insertion, average drop and increase: on a seeded uniform sample of "
            f"{_e(next(iter(scored)))} of the {_e(next(iter(explained)))} explained cells (their intervals are "
            "wider accordingly).</p>"
        )
    if any(view == "fused" for _, view, _ in result.views()) and rule in FUSIONS:
        text.append(f"<p>fused ({_e(rule)}): {_e(FUSIONS[rule])}.</p>")
    if result.best_map:
        method, view = result.best_map
        text.append(
            f"<p>Best map by the pointing game at 8 px: <b>{_e(method)} {_e(view)}</b>; the galleries show it.</p>"
        )
    return "\n".join(text)


def _sanity_table(sanity: SanityResult, intervals: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The randomisation test: mean Spearman rho per method after each cumulative stage, with intervals."""
    stages = list(sanity.stages)
    header = ["method", *(s if i == 0 else f"+ {s}" for i, s in enumerate(stages))]
    bounds = intervals or {}
    rows = [[_e(m), *(_num(sanity.mean(m, s), bounds.get(m, {}).get(s)) for s in stages)] for m in sanity.rhos]
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


def _data_randomisation_table(result: EvaluationResult) -> str:
    """Adebayo's data-randomisation test: per method the rank correlation with the shuffled-label model's maps."""
    assert result.data_randomisation is not None
    data = result.data_randomisation.to_json(result.resampler)
    rows = [
        [_e(method), _num(row["spearman"], row.get("spearman_ci95")), _e(row["images"])]
        for method, row in data["methods"].items()
    ]
    return "\n".join(
        [
            f"<p>The same cells explained by <b>{_e(data['model'])}</b>, the same recipe trained on shuffled labels "
            "(Adebayo et al.'s data-randomisation test): the mean Spearman rank correlation of each method's map "
            "with this model's. A map that survives random labels explains the image, not what was learned.</p>",
            _table(["method", "rank correlation", "cells"], rows),
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
figure.wide { width: 392px; }
figure.wide img { width: 392px; }
.file { font-family: monospace; font-size: 0.9em; word-break: break-all; color: #555; }
.note { color: #555; }
.ci { color: #777; font-size: 0.85em; white-space: nowrap; }
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
    for stale in (*TITLES, *intervention_report.TITLES):
        (folder / f"{stale}.png").unlink(missing_ok=True)
    heading = f"Where to look: evaluation of {result.classification.images} images"
    sections = [_details(details), "<h2>Summary</h2>", _summary(result), "<h2>Maps</h2>", _maps_table(result)]
    if result.methods:
        metrics_chart(result).savefig(folder / "metrics.png", dpi=SHEET_DPI)
        sections.append('<p><img src="metrics.png" alt="bar charts of the maps table" style="max-width:100%"></p>')
    size = model.image_size if model is not None else result.image_size
    preprocess = str(getattr(model, "preprocess", "squash"))
    sections.append(intervention_report.section(result, folder, size, preprocess, max_tiles, SHEET_DPI))
    if result.data_randomisation is not None:
        sections += ["<h2>Data randomisation</h2>", _data_randomisation_table(result)]
    if result.sanity is not None:
        sections += ["<h2>Sanity check</h2>", _sanity_table(result.sanity, result.sanity_intervals())]
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
