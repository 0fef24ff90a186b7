"""`multi`: every block's heatmap of each picture, and their fusion (PredictMulti)."""

from __future__ import annotations

import argparse
from pathlib import Path

from wtl.cli import common

SUMMARY = "every block's heatmap through an every-block model (NetworkMultiLoss)"
EXAMPLE = "python where_to_look.py multi --loss every --image cells/"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `multi`."""
    p.add_argument("--image", type=Path, nargs="+", help="image file(s) or folder(s)")
    p.add_argument("--loss", choices=["last", "every"], help="without --model: the model's training loss")
    common.model_flags(p)
    common.map_flags(p)
    common.fuse_flag(p)
    common.output_flags(p)
    common.scale_flag(p)


def run(args: argparse.Namespace) -> list[Path]:
    """Explain every block of each picture batch by batch and draw it."""
    from wtl.data.images import chunks
    from wtl.maps.explain import explain
    from wtl.plot.draw import draw
    from wtl.plot.outputs import Outputs
    from wtl.runtime import pick_device

    device = pick_device(args.device)
    view = "multi-every" if args.loss == "every" else "multi-last"
    model = common.open_model(args.model, view, args.models_dir, device, plain=common.plain_of(args))
    class_index = common.class_index_of(args.class_, model.class_names)
    pictures = common.pictures_of(args, model)
    outputs = Outputs(args.out, args.save_npz)
    look = common.look_of(args)
    scale = common.scale_for(args.scale, model, args.method)
    for chunk in chunks(pictures, args.batch_size):
        files = [p for p, _ in chunk]
        result = common.judged(explain(model, files, args.method, "every", class_index, args.fuse, args.batch_size))
        draw(result, outputs, look=look, scale=scale)
    return outputs.written
