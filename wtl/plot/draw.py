"""`draw`: an explanation (maps.explain.Result) as the PNGs and npz files the commands write.

The single view draws each picture beside its last-block map; the every-block view draws per
block the mean activation and the map, first their fusion. With save_npz every PNG gets its
numbers beside it, the very tensors of the Result (so the API and the CLI give the same arrays).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from wtl import names
from wtl.checkpoints.scales import missing_scale_note
from wtl.maps.explain import Result
from wtl.maps.registry import DEFAULT_SCALE, SCALES, SIGNED_METHODS
from wtl.plot.maps import blocks_figure, contact_sheet, overlay, single_figure
from wtl.plot.outputs import Outputs
from wtl.plot.style import CMAP, LOOK, Look, shared_look, title_colour

LOSS_TEXT = {"every": "every-block loss", "last": "last-block loss"}


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A tensor as a float numpy array on the CPU."""
    return tensor.detach().float().cpu().numpy()


def draw(
    result: Result,
    out: Path | str | Outputs,
    truths: Sequence[str | None] | None = None,
    save_npz: bool | None = None,
    look: Look = LOOK,
    scale: str = DEFAULT_SCALE,
) -> list[Path]:
    """Write one PNG per picture of `result` (and its npz with save_npz): the single or the every-block view.

    Args:
        result: what `explain` returned.
        out: a folder, or the Outputs of a command (which keeps names unique across calls).
        truths: the true class of each picture, shown in the caption (None: unknown).
        save_npz: also write the numbers (default: False for a folder, the Outputs' own setting otherwise).
        look: the colour map, opacity and underlay of the heatmaps (plot.style.Look).
        scale: 'model' (the model's shared scale, in log-odds for CAM; a model without a scale file is
            drawn per image, with a warning) or 'image' (each map stretched to its own range).

    Returns:
        The PNGs written.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, not {scale!r}")
    if scale == "model" and result.scale() is None:
        warnings.warn(no_scale_note(result), stacklevel=2)
    outputs = out if isinstance(out, Outputs) else Outputs(Path(out), bool(save_npz), quiet=True)
    if save_npz is not None:
        outputs.save_npz = save_npz
    truths = list(truths) if truths is not None else [None] * len(result)
    if result.blocks is None:
        return [_single(result, i, truths[i], outputs, look, scale) for i in range(len(result))]
    return [_every_block(result, i, outputs, look, scale) for i in range(len(result))]


def no_scale_note(result: Result) -> str:
    """Why a picture asked for on the model's scale is drawn per image (checkpoints.scales words it)."""
    return missing_scale_note(result.model.path, result.method)


def signed(method: str) -> bool:
    """Whether a method's raw map can be negative (drawn on a diverging colour map under the shared scale)."""
    return method in SIGNED_METHODS


def scale_label(result: Result, i: int | None, view: str = "last") -> str:
    """The colour bar's label under the shared scale: log-odds for CAM, 'no units' for the Grad-CAM family."""
    value = result.scale(view)
    assert value is not None and result.model.scale is not None
    measured = f"{result.model.scale.percentile:g}th percentile of |map| on {result.model.scale.images} pictures"
    if result.method != "cam":
        return f"{result.method}, no units; end = {value:.3g}\n({measured})"
    names_ = result.class_names
    if i is None:
        shown = "the shown class"
        other = "the other" if len(names_) == 2 else ""
    else:
        c = int(result.class_index[i])
        shown = names_[c]
        other = names_[1 - c] if len(names_) == 2 else ""
    what = f"log-odds {shown} vs {other}" if other else f"logit of {shown}"
    return f"evidence, {what}; end = ±{value:.3g}\n({measured})"


def _shared_look(result: Result, i: int | None, look: Look, view: str = "last") -> Look:
    """The look of a map on the model's scale (the user's --cmap kept where it is not the per-image default)."""
    value = result.scale(view)
    assert value is not None
    cmap = None if look.cmap == CMAP else look.cmap
    return shared_look(look, value, signed(result.method), scale_label(result, i, view), cmap)


def _shared_numbers(result: Result, i: int, shared: bool) -> dict[str, object]:
    """The npz keys of the evidence and the shared scale (both views)."""
    numbers: dict[str, object] = {
        "heatmap_shared": as_numpy(result.heatmap_shared[i]),
        "shared_scale": result.scale() or math.nan,
        "scale_drawn": "model" if shared else "image",
    }
    if result.evidence is not None and result.evidence_bias is not None:
        numbers["evidence"] = as_numpy(result.evidence[i])
        numbers["evidence_bias"] = as_numpy(result.evidence_bias[i])
    return numbers


def _common_numbers(result: Result, i: int) -> dict[str, object]:
    """The npz keys both views share."""
    numbers: dict[str, object] = {
        "logits": as_numpy(result.logits[i]),
        "probabilities": as_numpy(result.probabilities[i]),
        "class_index": int(result.class_index[i]),
        "predicted_index": int(result.predictions[i]),
        "class_names": np.array(result.class_names),
        "method": result.method,
        "image": str(result.inputs.sources[i])
        if isinstance(result.inputs.sources[i], Path)
        else result.inputs.names[i],
    }
    if result.out_of_distribution is not None and result.ood_score is not None:
        numbers.update(
            out_of_distribution=bool(result.out_of_distribution[i]),
            ood_score=float(result.ood_score[i]),
            ood_threshold=float(result.ood_threshold or 0.0),
            ood_method=str(result.ood_method),
        )
    return numbers


def ood_note(result: Result, i: int) -> str:
    """A title line for a picture unlike the training data ('' for one like it, or without statistics)."""
    if result.out_of_distribution is None or result.ood_score is None or not bool(result.out_of_distribution[i]):
        return ""
    return (
        f"UNLIKE THE TRAINING PICTURES ({result.ood_method} {float(result.ood_score[i]):.3g} > "
        f"{float(result.ood_threshold or 0.0):.3g}): the prediction says little"
    )


def _single(result: Result, i: int, truth: str | None, outputs: Outputs, look: Look, scale: str) -> Path:
    """The single view of picture i: the original beside its last-block map, titled with class and probability."""
    classes, probabilities = result.class_names, result.probabilities[i]
    predicted, shown = int(result.predictions[i]), int(result.class_index[i])
    label = _label(result, i)
    caption = label if result.method == "cam" else f"{label} ({result.method})"
    if result.layer is not None:
        caption = f"{caption[:-1]} at {result.layer})" if caption.endswith(")") else f"{caption} (at {result.layer})"
    if shown != predicted:
        caption += (
            f"\npredicted {classes[predicted]} {probabilities[predicted]:.1%}, showing where it sees {classes[shown]}"
        )
    if truth is not None:
        caption += f"  (true class: {truth})"
    if result.model.single_logit:
        caption += "\n" + sigmoid_note(classes)
    if ood_note(result, i):
        caption += "\n" + ood_note(result, i)
    shared = scale == "model" and result.scale() is not None
    heat = as_numpy(result.heatmap_shared[i] if shared else result.heatmap[i])
    title = f"{classes[shown]} {probabilities[shown]:.1%}"
    if result.evidence is not None and result.evidence_bias is not None:
        mean, bias = float(result.evidence[i].mean()), float(result.evidence_bias[i])
        title += f"\nlog-odds {mean + bias:+.2f} = map mean {mean:+.2f} + bias {bias:+.2f}"
    caption += result.model.marker
    drawn = _shared_look(result, i, look) if shared else look
    fig = single_figure(result.inputs.picture(i), heat, title, caption, drawn)
    numbers = {
        **_common_numbers(result, i),
        "cam": as_numpy(result.cam[i]),
        "heatmap": as_numpy(result.heatmap[i]),
        **_shared_numbers(result, i, shared),
    }
    if result.bias is not None:
        numbers["bias"] = float(result.bias[i])  # exact CAM: cam.mean() + bias = logits[class_index]
    if result.layer is not None:
        numbers["layer"] = result.layer
    return outputs.save(fig, names.single_picture(result.inputs.names[i], result.method), numbers)


def sigmoid_note(classes: Sequence[str]) -> str:
    """The caption line of a single-logit (sigmoid) head: what its maps mean."""
    return (
        f"one sigmoid logit: evidence for {classes[1]}; the map of {classes[0]} is its negation "
        f"(logits shown as -z/2, z/2)"
    )


def _every_block(result: Result, i: int, outputs: Outputs, look: Look, scale: str = DEFAULT_SCALE) -> Path:
    """The every-block view of picture i: per block its mean activation and its map, and their fusion."""
    assert result.blocks is not None
    blocks, classes, model = result.blocks, result.class_names, result.model
    method_label = "CAM" if result.method == "cam" else result.method
    shown = int(result.class_index[i])
    count = len(blocks.cams)
    shared = scale == "model" and all(result.scale(f"block{b}") is not None for b in range(1, count + 1))
    titles = []
    for b in range(count):
        title = f"{blocks.labels[b] if blocks.labels else f'block {b + 1}'} {method_label}: {classes[shown]}"
        if blocks.block_logits is not None:
            probs = blocks.block_logits[b][i].softmax(0)
            guess = int(probs.argmax())
            title += f"\nblock predicts {classes[guess]} {probs[guess]:.1%}"
        titles.append(title)
    final = result.probabilities[i]
    predicted = int(final.argmax())
    heading = f"{_label(result, i)}: prediction {classes[predicted]} {final[predicted]:.1%}"
    if shown != predicted:
        heading += f", maps explain {classes[shown]}"
    loss = LOSS_TEXT.get(str(model.checkpoint.get("loss")), "") if model.kind != "torchvision" else ""
    heading += f"  ({model.path.name}{', ' + loss if loss else ''}){model.marker}"
    if model.single_logit:
        heading += "\n" + sigmoid_note(classes)
    if ood_note(result, i):
        heading += "\n" + ood_note(result, i)
    heats = [as_numpy(h[i]) for h in blocks.heatmaps]
    shared_heats = {view: as_numpy(h[i]) for view, h in result.shared_heatmaps.items()}
    mean_heats = [as_numpy(h[i]) for h in blocks.mean_heatmaps]
    fused = as_numpy(result.fused[i])
    picture = result.inputs.picture(i)
    drawn, block_looks = heats, None
    if shared:
        drawn = [shared_heats[f"block{b}"] for b in range(1, count + 1)]
        block_looks = [_shared_look(result, i, look, f"block{b}") for b in range(1, count + 1)]
    fused_title = f"fused ({result.fusion})" + (", per image" if shared else "")
    fig = blocks_figure(
        picture, mean_heats, drawn, titles, heading, fused, fused_title, look, block_looks, blocks.labels
    )
    numbers: dict[str, object] = {
        **_common_numbers(result, i),
        # The last block's map under the single view's names, so that both views' files read alike.
        "cam": as_numpy(blocks.cams[-1][i]),
        "heatmap": heats[-1],
        "cam_fused": as_numpy(result.fused_cam[i]),
        "heatmap_fused": fused,
        "fusion_rule": result.fusion,
        **_shared_numbers(result, i, shared),
    }
    for b in range(count):
        numbers[f"cam_block{b + 1}"] = as_numpy(blocks.cams[b][i])
        numbers[f"mean_block{b + 1}"] = as_numpy(blocks.means[b][i])
        numbers[f"heatmap_block{b + 1}"] = heats[b]
        numbers[f"heatmap_shared_block{b + 1}"] = shared_heats[f"block{b + 1}"]
        numbers[f"shared_scale_block{b + 1}"] = result.scale(f"block{b + 1}") or math.nan
        numbers[f"mean_heatmap_block{b + 1}"] = mean_heats[b]
        if blocks.block_logits is not None:
            numbers[f"logits_block{b + 1}"] = as_numpy(blocks.block_logits[b][i])
        if blocks.block_bias is not None:
            numbers[f"bias_block{b + 1}"] = as_numpy(blocks.block_bias[b][i])
        if blocks.evidences is not None and blocks.evidence_biases is not None:
            numbers[f"evidence_block{b + 1}"] = as_numpy(blocks.evidences[b][i])
            numbers[f"evidence_bias_block{b + 1}"] = as_numpy(blocks.evidence_biases[b][i])
    name = names.multi_picture(result.inputs.names[i], model.path, result.method)
    return outputs.save(fig, name, numbers)


def _label(result: Result, i: int) -> str:
    """A picture's label in titles: its file name, else image_<i>."""
    source = result.inputs.sources[i]
    return source.name if isinstance(source, Path) else result.inputs.names[i]


def demo_sheet(
    results: Sequence[Result], truths: Sequence[str], title: str, look: Look = LOOK, scale: str = DEFAULT_SCALE
) -> Figure:
    """The contact sheet of the demo: every picture under its map, titled green where right, red where wrong.

    On the model's scale every tile shares one colour bar (the sheet's); per image each is stretched.
    """
    pictures, heats, titles, correct = [], [], [], []
    rows = [(r, i) for r in results for i in range(len(r))]
    shared = scale == "model" and all(r.scale() is not None for r in results)
    for (result, i), truth in zip(rows, truths):
        predicted = result.class_names[int(result.predictions[i])]
        pictures.append(result.inputs.picture(i))
        heats.append(as_numpy(result.heatmap_shared[i] if shared else result.heatmap[i]))
        titles.append(f"true {truth}\npred {predicted} {float(result.probabilities[i].max()):.0%}")
        correct.append(predicted == truth)
    drawn = _shared_look(results[0], None, look) if shared and results else look
    fig = contact_sheet(pictures, heats, titles, correct, drawn, colorbar=shared)
    fig.suptitle(title + ("" if shared else " (each map stretched to its own range)"))
    return fig


def scales_sheet(result: Result, truths: Sequence[str], title: str, look: Look = LOOK) -> Figure:
    """Every picture twice, on the model's shared scale and stretched per image, side by side (needs a scale file).

    The pairs make the difference visible at a glance: per image a healthy cell's faint evidence is
    stretched to the same red as a parasite's; on the model's scale it stays as faint as it is.
    """
    if result.scale() is None:
        raise ValueError(no_scale_note(result))
    shared = _shared_look(result, None, look)
    count = len(result)
    pairs = 5 if count > 4 else count
    rows = (count + pairs - 1) // pairs
    fig = Figure(figsize=(2.05 * 2 * pairs + 1.2, 2.35 * rows + 0.6), layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, 2 * pairs, squeeze=False))
    artist = None
    for i in range(rows * pairs):
        left, right = axes[i // pairs][2 * (i % pairs)], axes[i // pairs][2 * (i % pairs) + 1]
        if i >= count:
            left.set_axis_off()
            right.set_axis_off()
            continue
        picture = result.inputs.picture(i)
        predicted = result.class_names[int(result.predictions[i])]
        ok = predicted == truths[i] if i < len(truths) else None
        mean = (
            float(result.evidence[i].mean() + result.evidence_bias[i])
            if result.evidence is not None and (result.evidence_bias is not None)
            else None
        )
        odds = f", log-odds {mean:+.1f}" if mean is not None else ""
        artist = overlay(left, picture, as_numpy(result.heatmap_shared[i]), f"model scale{odds}", shared)
        overlay(right, picture, as_numpy(result.heatmap[i]), "per image", look)
        for ax in (left, right):
            ax.title.set_fontsize(7)
            ax.title.set_color(title_colour(ok))
        left.set_ylabel(f"true {truths[i] if i < len(truths) else '?'}\npred {predicted}", fontsize=7)
    if artist is not None:
        fig.colorbar(artist, ax=list(axes.ravel()), fraction=0.015, pad=0.01, label=shared.label)
    fig.suptitle(title, fontsize=11)
    return fig
