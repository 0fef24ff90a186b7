"""The erasure view (single --erase): each picture and its map beside the edited picture and its map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from wtl import names
from wtl.metrics.erasure import Erasure
from wtl.plot.draw import as_numpy, ood_note
from wtl.plot.maps import overlay
from wtl.plot.outputs import Outputs
from wtl.plot.style import LOOK, OUTLINE, Look, title_colour
from wtl.plot.tiles import outline


def _prediction(result_class: str, probability: float) -> str:
    return f"{result_class} {probability:.1%}"


def erasure_figure(erasure: Erasure, i: int, look: Look = LOOK) -> Figure:
    """Four panels: the picture, its map, the picture with the region removed (outlined in green), its map."""
    before, after = erasure.before, erasure.after
    classes = before.class_names
    shown = int(before.class_index[i])
    pictures = [
        (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        for image in (before.inputs.images[i], after.inputs.images[i])
    ]
    edge = outline(erasure.masks[i].numpy())
    marked = pictures[1].copy()
    marked[edge] = OUTLINE
    fig = Figure(figsize=(12.6, 3.9), layout="constrained")
    axes = fig.subplots(1, 4)
    rows = ((before, pictures[0], "as it is"), (after, marked, f"{erasure.region} removed"))
    artist = None
    for column, (result, picture, label) in enumerate(rows):
        predicted = int(result.predictions[i])
        probability = float(result.probabilities[i][predicted])
        overlay(axes[2 * column], picture, None, f"{label}: {_prediction(classes[predicted], probability)}")
        artist = overlay(
            axes[2 * column + 1],
            picture,
            as_numpy(result.heatmap[i]),
            f"map of {classes[shown]} ({float(result.probabilities[i][shown]):.1%})",
            look,
        )
    assert artist is not None
    fig.colorbar(artist, ax=axes[3], fraction=0.046, pad=0.02, label=look.label)
    changed = bool(erasure.changed[i])
    verdict = "the prediction changes" if changed else "the prediction stays"
    share = float(erasure.removed_fraction[i])
    title = f"{before.inputs.names[i]}: {erasure.region} removed ({share:.0%} of the picture): {verdict}"
    for note in (ood_note(before, i), ood_note(after, i)):
        if note:
            title += "\n" + note
            break
    fig.suptitle(title, fontsize=10, color=title_colour(None if not changed else False))
    return fig


def draw_erasure(erasure: Erasure, outputs: Outputs, look: Look = LOOK) -> list[Path]:
    """One PNG per picture (`<stem>_erase_<region>`), with its npz when the outputs save numbers."""
    written = []
    for i in range(len(erasure.before)):
        numbers: dict[str, object] = {
            "region": erasure.region,
            "mask": erasure.masks[i].numpy(),
            "edited_image": as_numpy(erasure.after.inputs.images[i]),
            "class_names": np.array(erasure.before.class_names),
            "class_index": int(erasure.before.class_index[i]),
        }
        for key, result in (("before", erasure.before), ("after", erasure.after)):
            numbers[f"probabilities_{key}"] = as_numpy(result.probabilities[i])
            numbers[f"predicted_index_{key}"] = int(result.predictions[i])
            numbers[f"heatmap_{key}"] = as_numpy(result.heatmap[i])
            numbers[f"cam_{key}"] = as_numpy(result.cam[i])
            if result.out_of_distribution is not None and result.ood_score is not None:
                numbers[f"out_of_distribution_{key}"] = bool(result.out_of_distribution[i])
                numbers[f"ood_score_{key}"] = float(result.ood_score[i])
        if "ood_score_before" in numbers:  # the picture as given, under the keys every command's npz uses
            numbers["out_of_distribution"] = numbers["out_of_distribution_before"]
            numbers["ood_score"] = numbers["ood_score_before"]
        name = names.erase_picture(erasure.before.inputs.names[i], erasure.region)
        written.append(outputs.save(erasure_figure(erasure, i, look), name, numbers))
    return written
