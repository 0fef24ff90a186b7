"""`single`: the last block's heatmap of each picture (PredictSingle)."""

from __future__ import annotations

import argparse
from pathlib import Path

from wtl.cli import common

SUMMARY = "the last block's heatmap of each picture"
EXAMPLE = "python where_to_look.py single --image cell.png"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `single`."""
    p.add_argument("--image", type=Path, nargs="+", help="image file(s) or folder(s)")
    common.model_flags(p, dataset=True)
    common.map_flags(p)
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
    model = common.open_model(args.model, args.dataset or "malaria", args.models_dir, device)
    class_index = common.class_index_of(args.class_, model.class_names)
    pictures = common.pictures_of(args, model)
    outputs = Outputs(args.out, args.save_npz)
    look = common.look_of(args)
    scale = common.scale_for(args.scale, model, args.method)
    for chunk in chunks(pictures, args.batch_size):
        result = explain(model, [p for p, _ in chunk], args.method, "last", class_index, batch_size=args.batch_size)
        draw(result, outputs, [t for _, t in chunk], look=look, scale=scale)
    return outputs.written
