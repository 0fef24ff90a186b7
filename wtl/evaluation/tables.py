"""An evaluation as readable text: accuracy per head, one row per method and view, galleries, sanity check.

Every figure is followed by its 95 % bootstrap interval (resampling the result's units: patients,
people or images); in the maps table a `*` marks, per column, the best view and every view whose
paired difference from it has an interval containing 0.
"""

from __future__ import annotations

from collections.abc import Sequence

from wtl.evaluation.galleries import GALLERIES
from wtl.evaluation.registry import OUTCOMES
from wtl.evaluation.result import EvaluationResult
from wtl.maps.registry import FUSIONS
from wtl.metrics.bootstrap import Interval, unit_count
from wtl.metrics.proportion import format_share
from wtl.metrics.sanity import SanityResult

COLUMNS = (
    ("point@15", "pointing_15px", True),
    ("point@8", "pointing_8px", True),
    ("point@4", "pointing_4px", True),
    ("inside", "pointing_0px", True),
    ("mass", "relevance_mass", False),
    ("rank", "relevance_rank", False),
    ("deletion", "deletion_auc", False),
    ("insertion", "insertion_auc", False),
    ("avg drop", "average_drop", "drop"),
    ("increase", "increase_in_confidence", "drop"),
)


def _number(value: float | None, percent: bool = False) -> str:
    """A table cell: '-' for None, else 3 decimals (or a percentage with 1)."""
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if percent else f"{value:.3f}"


def interval_text(bounds: Interval | Sequence[float] | None, percent: bool = False) -> str:
    """'[low, high]' as the tables print it ('' without an interval): percent points with 1 decimal, else 3."""
    if bounds is None:
        return ""
    low, high = bounds
    return f"[{100 * low:.1f}, {100 * high:.1f}]" if percent else f"[{low:.3f}, {high:.3f}]"


def with_interval(value: float | None, bounds: Interval | None, percent: bool = False) -> str:
    """A figure and its interval: '94.3% [92.1, 96.0]'."""
    text = interval_text(bounds, percent)
    return _number(value, percent) + (f" {text}" if text else "")


def format_table(result: EvaluationResult) -> str:
    """The evaluation as text, with the sanity check's table when it ran; intervals under each row."""
    report = result.classification
    intervals = result.classification_intervals()
    described = result.resampler.describe()
    lines = [
        f"accuracy {100 * report.accuracy:.2f}% {interval_text(intervals.get('accuracy'), True)} on {report.images} "
        "images "
        f"(95 % intervals: bootstrap over {unit_count(described['units'], described['unit'])}, "
        f"{described['replicates']} replicates)"
    ]
    averages = [("macro avg", report.macro, "macro"), ("weighted avg", report.weighted, "weighted")]
    for name, m, key in [*((n, s, n) for n, s in report.per_class.items()), *averages]:
        cells = "  ".join(
            f"{figure} {with_interval(getattr(m, figure), intervals.get(f'{figure}/{key}'))}"
            for figure in ("precision", "recall", "f1")
        )
        lines.append(f"  {name:<14} {cells}  n={m.support}")
    lines.append("  confusion (rows true): " + "  ".join(str(row) for row in report.confusion))
    percent = "  ".join("[" + ", ".join(f"{v:.1f}%" for v in row) + "]" for row in report.confusion_percent)
    lines.append(f"  confusion, % of each true class: {percent}")
    blocks = result.block_intervals()
    for block, block_report in result.blocks.items():
        bounds = interval_text(blocks.get(block), True)
        lines.append(f"  {block} head accuracy {100 * block_report.accuracy:.2f}% {bounds}")
    judged = f", judged against {result.truth}" if result.truth else ""
    lines += ["", f"heatmaps explaining {result.explained_class}{judged}:"]
    lines += _maps_rows(result)
    scored = {s.faithful_images for _, _, s in result.views()}
    explained = {s.images for _, _, s in result.views()}
    if len(scored) == 1 and len(explained) == 1 and 0 < next(iter(scored)) < next(iter(explained)):
        lines.append(
            f"(deletion to increase: on a seeded sample of {next(iter(scored))} of those images; "
            "their intervals are wider accordingly)"
        )
    if any(view.startswith("fused") for _, view, _ in result.views()) and result.fusion_rule in FUSIONS:
        lines.append(f"fused: {result.fusion_rule}, {FUSIONS[result.fusion_rule]}")
    if result.best_map:
        lines.append(f"best map (pointing game at 8 px): {result.best_map[0]} {result.best_map[1]}")
    if all(name in result.galleries for name in GALLERIES):
        counts = {name: len(result.galleries[name]) for name in GALLERIES}
        lines.append(
            f"galleries: {counts['misclassified']} misclassified, {counts['map_misses']} map misses, "
            f"{counts['suspect_labels']} suspect labels"
            + "".join(f", {len(result.galleries[n])} {n}" for n in OUTCOMES if n in result.galleries)
        )
    if any(record.ood_score is not None for record in result.records):
        unlike = result.unlike_training
        lines.append(f"unlike the training pictures: {format_share(len(unlike), len(result.records))}")
    if result.intervention is not None:
        lines += ["", format_intervention(result)]
    if result.data_randomisation is not None:
        lines += ["", format_data_randomisation(result)]
    if result.sanity is not None:
        lines += ["", format_sanity(result.sanity, result.sanity_intervals())]
    return "\n".join(lines)


REGION_NAMES = {"truth": "ground truth (dilated)", "control": "control (same area)"}


def region_name(region: str) -> str:
    """How the tables name an intervention's region: the ground truth, the control, or a method's top region."""
    return REGION_NAMES.get(region, f"top of {region.removeprefix('top:')}'s map")


def format_intervention(result: EvaluationResult) -> str:
    """The intervention test: per region the mean drop of the explained class's probability and the share flipped."""
    assert result.intervention is not None
    data = result.intervention.to_json(result.resampler)
    lines = [
        f"intervention: the ground truth filled from the cell around it ({data['fill']}; dilated by "
        f"{data['dilation_px']} px, {data['mean_area_px'] or 0:.0f} px on average), a control of the same shape and "
        f"area elsewhere in the cell, and each map's own top region of that area; on {data['images']} images "
        f"(P({result.explained_class}) before: {_number(data['before'])})",
        f"{'region':<28}{'mean drop':>26}{'flipped':>24}{'drop minus control':>26}",
    ]
    if data["images"] == 0:
        return lines[0] + "\n(no explained image with ground truth)"
    for region in result.intervention.rows():
        row = data[region]
        drop = with_interval(row["mean_drop"], row.get("mean_drop_ci95"))
        flipped = with_interval(row["flipped"], row.get("flipped_ci95"), True)
        paired = interval_text(row.get("drop_minus_control_ci95"))
        lines.append(f"{region_name(region):<28}{drop:>26}{flipped:>24}{paired:>26}")
    if unfit := data["controls_not_translated"]:
        lines.append(
            f"({unfit} control{'s' if unfit > 1 else ''} did not fit as a moved copy of the region: the "
            "cell pixels furthest from it stand in)"
        )
    return "\n".join(lines)


def format_data_randomisation(result: EvaluationResult) -> str:
    """The data-randomisation test: per method the mean rank correlation with the shuffled-label twin's maps."""
    assert result.data_randomisation is not None
    data = result.data_randomisation.to_json(result.resampler)
    marker = "" if data["shuffled_labels"] else " (its checkpoint does not say it was trained on shuffled labels)"
    lines = [
        f"data randomisation: rank correlation of each method's maps with those of {data['model']}, the same recipe "
        f"trained on shuffled labels{marker} (near 1 = the map shows the image, not what was learned)",
    ]
    for method, row in data["methods"].items():
        lines.append(f"{method:<12}{with_interval(row['spearman'], row.get('spearman_ci95')):>26}  n={row['images']}")
    return "\n".join(lines)


def _maps_rows(result: EvaluationResult) -> list[str]:
    """The maps table: a row of figures and a row of intervals per method and view, `*` on the best per column."""
    width = 19
    header = f"{'method':<10}{'view':<18}" + "".join(f"{title:>{width}}" for title, _, _ in COLUMNS) + f"{'n':>7}"
    lines = [header, "-" * len(header)]
    differences = result.differences()
    for method, view, s in result.views():
        figures, bounds = [], []
        for _, figure, kind in COLUMNS:
            percent = kind is True or kind == "drop"
            value = s.pointing(float(figure[9:-2])) if figure.startswith("pointing_") else s.mean(figure)
            if kind == "drop" and value is not None:
                value /= 100
            ci = result.ci(method, view, figure)
            if kind == "drop" and ci is not None:
                ci = (ci[0] / 100, ci[1] / 100)
            tied = f"{method} {view}" in differences.get(figure, {}).get("tied_with_best", [])
            figures.append(_number(value, percent) + ("*" if tied else ""))
            bounds.append(interval_text(ci, percent))
        lines.append(f"{method:<10}{view:<18}" + "".join(f"{c:>{width}}" for c in figures) + f"{s.counted:>7}")
        lines.append(f"{'':<28}" + "".join(f"{c:>{width}}" for c in bounds))
    lines.append(
        "(mass: share of the map inside the mask, rank: share of its top-|mask| pixels inside it; "
        "deletion: lower is better; insertion: higher; average drop: lower; increase: higher; "
        "* the best, and every view whose paired difference from it has a 95 % interval containing 0)"
    )
    return lines


def format_sanity(sanity: SanityResult, intervals: dict[str, dict[str, Interval | None]] | None = None) -> str:
    """The randomisation test as text: per method the mean Spearman rho after each cumulative stage, intervals below."""
    stages = list(sanity.stages)
    width = max(18, *(len(s) + 3 for s in stages))  # torchvision stages have long names (+features.28)
    lines = [
        f"sanity check: rank correlation of each method's maps with the trained model's, after re-initialising "
        f"from the top down ({sanity.images} images; near 1 = the map ignores the weights)",
        f"{'method':<12}" + "".join(f"{'+' + s if i else s:>{width}}" for i, s in enumerate(stages)),
    ]
    for method in sanity.rhos:
        cells = "".join(f"{_number(sanity.mean(method, stage)):>{width}}" for stage in stages)
        lines.append(f"{method:<12}{cells}")
        if intervals and method in intervals:
            below = "".join(f"{interval_text(intervals[method].get(stage)):>{width}}" for stage in stages)
            lines.append(f"{'':<12}{below}")
    return "\n".join(lines)
