"""`single`: the last block's heatmap of each picture (PredictSingle)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from wtl.cli import common

if TYPE_CHECKING:
    from wtl.checkpoints.loading import LoadedModel
    from wtl.plot.outputs import Outputs
    from wtl.plot.style import Look

SUMMARY = "the last block's heatmap of each picture"
EXAMPLE = "python where_to_look.py single --image cell.png"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `single`."""
    p.add_argument("--image", type=Path, nargs="+", help="image file(s) or folder(s)")
    p.add_argument(
        "--erase",
        metavar="{background,stain,MASK_FILE}",
        help="also classify each picture with this region removed and draw both side by side: the black "
        "background around a cell (filled with the cell's median colour), the stain (filled from the cell around "
        "it), or a mask picture's non-black pixels",
    )
    common.model_flags(p, dataset=True)
    common.map_flags(p)
    p.add_argument(
        "--layer",
        metavar="NAME",
        help="the Grad-CAM family's layer, a dotted module name (torchvision's own, e.g. layer3 or layer4.0.conv2; "
        "default: the last block or stage); cam is exact only at the last one",
    )
    common.output_flags(p)
    common.scale_flag(p)


def run(args: argparse.Namespace) -> list[Path]:
    """Explain each picture (or the demo pictures the prompts chose) batch by batch and draw it."""
    from wtl.data.images import chunks
    from wtl.maps.explain import explain
    from wtl.plot.draw import draw
    from wtl.plot.outputs import Outputs
    from wtl.runtime import pick_device

    device = pick_device(args.device)
    model = common.open_model(
        args.model, args.dataset or "malaria", args.models_dir, device, plain=common.plain_of(args)
    )
    class_index = common.class_index_of(args.class_, model.class_names)
    pictures = common.pictures_of(args, model)
    outputs = Outputs(args.out, args.save_npz)
    look = common.look_of(args)
    scale = common.scale_for(args.scale, model, args.method)
    if args.erase:
        return erase_pictures(args, model, [p for p, _ in pictures], class_index, outputs, look)
    for chunk in chunks(pictures, args.batch_size):
        files = [p for p, _ in chunk]
        result = explain(model, files, args.method, "last", class_index, batch_size=args.batch_size, layer=args.layer)
        result = common.judged(result)
        draw(result, outputs, [t for _, t in chunk], look=look, scale=scale)
    return outputs.written


def erase_pictures(
    args: argparse.Namespace,
    model: LoadedModel,
    pictures: list[Path],
    class_index: int | None,
    outputs: Outputs,
    look: Look,
) -> list[Path]:
    """--erase: each picture explained as it is and with the region removed, side by side; how often it changes."""
    from wtl.data.images import chunks
    from wtl.errors import UsageError
    from wtl.metrics.erasure import REGIONS, erase
    from wtl.metrics.proportion import format_share
    from wtl.plot.erasure import draw_erasure

    if args.erase not in REGIONS and not Path(args.erase).is_file():
        raise UsageError(f"--erase {args.erase}: expected {', '.join(REGIONS)} or a mask picture file")
    changed = total = 0
    for chunk in chunks(pictures, args.batch_size):
        erasure = erase(model, list(chunk), args.erase, args.method, class_index, args.batch_size)
        erasure.before, erasure.after = common.judged(erasure.before), common.judged(erasure.after)
        names = erasure.before.class_names
        for i, path in enumerate(chunk):
            before, after = int(erasure.before.predictions[i]), int(erasure.after.predictions[i])
            p_before = float(erasure.before.probabilities[i][before])
            p_after = float(erasure.after.probabilities[i][after])
            verdict = "changes" if before != after else "stays"
            print(
                f"{path.name}: {names[before]} {p_before:.1%} -> {names[after]} {p_after:.1%} without the "
                f"{erasure.region} ({float(erasure.removed_fraction[i]):.0%} of the picture): {verdict}"
            )
        changed += int(erasure.changed.sum())
        total += len(chunk)
        draw_erasure(erasure, outputs, look)
    print(f"removing the {erasure.region} changed the prediction of {format_share(changed, total)} pictures")
    return outputs.written
