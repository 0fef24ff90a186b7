"""`draw`: an explanation (maps.explain.Result) as the PNGs and npz files the commands write.

The single view draws each picture beside its last-block map; the every-block view draws per
block the mean activation and the map, first their fusion. With save_npz every PNG gets its
numbers beside it, the very tensors of the Result (so the API and the CLI give the same arrays).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from wtl import names
from wtl.maps.explain import Result
from wtl.plot.maps import blocks_figure, contact_sheet, single_figure
from wtl.plot.outputs import Outputs
from wtl.plot.style import LOOK, Look

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
) -> list[Path]:
    """Write one PNG per picture of `result` (and its npz with save_npz): the single or the every-block view.

    Args:
        result: what `explain` returned.
        out: a folder, or the Outputs of a command (which keeps names unique across calls).
        truths: the true class of each picture, shown in the caption (None: unknown).
        save_npz: also write the numbers (default: False for a folder, the Outputs' own setting otherwise).
        look: the colour map, opacity and underlay of the heatmaps (plot.style.Look).

    Returns:
        The PNGs written.
    """
    outputs = out if isinstance(out, Outputs) else Outputs(Path(out), bool(save_npz), quiet=True)
    if save_npz is not None:
        outputs.save_npz = save_npz
    truths = list(truths) if truths is not None else [None] * len(result)
    if result.blocks is None:
        return [_single(result, i, truths[i], outputs, look) for i in range(len(result))]
    return [_every_block(result, i, outputs, look) for i in range(len(result))]


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


def _single(result: Result, i: int, truth: str | None, outputs: Outputs, look: Look) -> Path:
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
    heat = as_numpy(result.heatmap[i])
    title = f"{classes[shown]} {probabilities[shown]:.1%}"
    fig = single_figure(result.inputs.picture(i), heat, title, caption, look)
    numbers = {**_common_numbers(result, i), "cam": as_numpy(result.cam[i]), "heatmap": heat}
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


def _every_block(result: Result, i: int, outputs: Outputs, look: Look) -> Path:
    """The every-block view of picture i: per block its mean activation and its map, and their fusion."""
    assert result.blocks is not None
    blocks, classes, model = result.blocks, result.class_names, result.model
    method_label = "CAM" if result.method == "cam" else result.method
    shown = int(result.class_index[i])
    titles = []
    for b in range(len(blocks.cams)):
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
    heading += f"  ({model.path.name}{', ' + loss if loss else ''})"
    if model.single_logit:
        heading += "\n" + sigmoid_note(classes)
    if ood_note(result, i):
        heading += "\n" + ood_note(result, i)
    heats = [as_numpy(h[i]) for h in blocks.heatmaps]
    mean_heats = [as_numpy(h[i]) for h in blocks.mean_heatmaps]
    fused = as_numpy(result.fused[i])
    picture = result.inputs.picture(i)
    fused_title = f"fused ({result.fusion})"
    fig = blocks_figure(picture, mean_heats, heats, titles, heading, fused, fused_title, look, blocks.labels)
    numbers: dict[str, object] = {
        **_common_numbers(result, i),
        # The last block's map under the single view's names, so that both views' files read alike.
        "cam": as_numpy(blocks.cams[-1][i]),
        "heatmap": heats[-1],
        "cam_fused": as_numpy(result.fused_cam[i]),
        "heatmap_fused": fused,
        "fusion_rule": result.fusion,
    }
    for b in range(len(blocks.cams)):
        numbers[f"cam_block{b + 1}"] = as_numpy(blocks.cams[b][i])
        numbers[f"mean_block{b + 1}"] = as_numpy(blocks.means[b][i])
        numbers[f"heatmap_block{b + 1}"] = heats[b]
        numbers[f"mean_heatmap_block{b + 1}"] = mean_heats[b]
        if blocks.block_logits is not None:
            numbers[f"logits_block{b + 1}"] = as_numpy(blocks.block_logits[b][i])
        if blocks.block_bias is not None:
            numbers[f"bias_block{b + 1}"] = as_numpy(blocks.block_bias[b][i])
    name = names.multi_picture(result.inputs.names[i], model.path, result.method)
    return outputs.save(fig, name, numbers)


def _label(result: Result, i: int) -> str:
    """A picture's label in titles: its file name, else image_<i>."""
    source = result.inputs.sources[i]
    return source.name if isinstance(source, Path) else result.inputs.names[i]


def demo_sheet(results: Sequence[Result], truths: Sequence[str], title: str, look: Look = LOOK) -> Figure:
    """The contact sheet of the demo: every picture under its map, titled green where right, red where wrong."""
    pictures, heats, titles, correct = [], [], [], []
    rows = [(r, i) for r in results for i in range(len(r))]
    for (result, i), truth in zip(rows, truths):
        predicted = result.class_names[int(result.predictions[i])]
        pictures.append(result.inputs.picture(i))
        heats.append(as_numpy(result.heatmap[i]))
        titles.append(f"true {truth}\npred {predicted} {float(result.probabilities[i].max()):.0%}")
        correct.append(predicted == truth)
    fig = contact_sheet(pictures, heats, titles, correct, look)
    fig.suptitle(title)
    return fig
