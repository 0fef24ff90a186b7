"""An evaluation as readable text: accuracy per head, one row per method and view, galleries, sanity check."""

from __future__ import annotations

from wtl.evaluation.galleries import GALLERIES
from wtl.evaluation.registry import OUTCOMES
from wtl.evaluation.result import EvaluationResult
from wtl.maps.registry import FUSIONS
from wtl.metrics.proportion import format_share
from wtl.metrics.sanity import SanityResult


def _number(value: float | None, percent: bool = False) -> str:
    """A table cell: '-' for None, else 3 decimals (or a percentage with 1)."""
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if percent else f"{value:.3f}"


def format_table(result: EvaluationResult) -> str:
    """The evaluation as text, with the sanity check's table when it ran."""
    report = result.classification
    lines = [f"accuracy {100 * report.accuracy:.2f}% on {report.images} images"]
    averages = [("macro avg", report.macro), ("weighted avg", report.weighted)]
    for name, m in [*report.per_class.items(), *averages]:
        lines.append(f"  {name:<14} precision {m.precision:.3f}  recall {m.recall:.3f}  f1 {m.f1:.3f}  n={m.support}")
    lines.append("  confusion (rows true): " + "  ".join(str(row) for row in report.confusion))
    percent = "  ".join("[" + ", ".join(f"{v:.1f}%" for v in row) + "]" for row in report.confusion_percent)
    lines.append(f"  confusion, % of each true class: {percent}")
    for block, block_report in result.blocks.items():
        lines.append(f"  {block} head accuracy {100 * block_report.accuracy:.2f}%")
    judged = f", judged against {result.truth}" if result.truth else ""
    lines += ["", f"heatmaps explaining {result.explained_class}{judged}:"]
    header = f"{'method':<10}{'view':<8}{'point@15':>9}{'point@8':>9}{'point@4':>9}{'inside':>8}{'counted':>8}"
    header += f"{'mass':>7}{'rank':>7}"
    header += f"{'deletion':>9}{'insertion':>10}{'avg drop':>10}{'increase':>10}"
    lines += [header, "-" * len(header)]
    for method, view, s in result.views():
        drop, increase = s.mean("average_drop"), s.mean("increase_in_confidence")
        lines.append(
            f"{method:<10}{view:<8}{_number(s.pointing(15), True):>9}{_number(s.pointing(8), True):>9}"
            f"{_number(s.pointing(4), True):>9}{_number(s.pointing(0), True):>8}{s.counted:>8}"
            f"{_number(s.mean('relevance_mass')):>7}{_number(s.mean('relevance_rank')):>7}"
            f"{_number(s.mean('deletion_auc')):>9}{_number(s.mean('insertion_auc')):>10}"
            f"{_number(drop and drop / 100, True):>10}{_number(increase and increase / 100, True):>10}"
        )
    lines.append(
        "(mass: share of the map inside the mask, rank: share of its top-|mask| pixels inside it; deletion: lower "
        "is better; insertion: higher; average drop: lower; increase: higher)"
    )
    scored = {s.faithful_images for _, _, s in result.views()}
    explained = {s.images for _, _, s in result.views()}
    if len(scored) == 1 and len(explained) == 1 and 0 < next(iter(scored)) < next(iter(explained)):
        lines.append(f"(deletion to increase: on a seeded sample of {next(iter(scored))} of those images)")
    if any(view == "fused" for _, view, _ in result.views()) and result.fusion_rule in FUSIONS:
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
    if result.sanity is not None:
        lines += ["", format_sanity(result.sanity)]
    return "\n".join(lines)


def format_sanity(sanity: SanityResult) -> str:
    """The randomisation test as text: per method the mean Spearman rho after each cumulative stage."""
    stages = list(sanity.stages)
    width = max(10, *(len(s) + 3 for s in stages))  # torchvision stages have long names (+features.28)
    lines = [
        f"sanity check: rank correlation of each method's maps with the trained model's, after re-initialising "
        f"from the top down ({sanity.images} images; near 1 = the map ignores the weights)",
        f"{'method':<12}" + "".join(f"{'+' + s if i else s:>{width}}" for i, s in enumerate(stages)),
    ]
    for method in sanity.rhos:
        cells = "".join(f"{_number(sanity.mean(method, stage)):>{width}}" for stage in stages)
        lines.append(f"{method:<12}{cells}")
    return "\n".join(lines)
