"""`demo`: the bundled cells with the bundled models (or 10 + 10 test cells of --data-dir, or --model), offline."""

from __future__ import annotations

import argparse
from pathlib import Path

from wtl import resources
from wtl.cli import common

SUMMARY = "the bundled cells with the bundled models (or 10 + 10 test cells of --data-dir, or --model)"
EXAMPLE = "python where_to_look.py demo"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `demo`."""
    p.add_argument("--data-dir", type=Path, help="pick 10 + 10 of the model's test cells from this data set instead")
    p.add_argument("--seed", type=int, default=0, help="seed of that pick (default 0)")
    p.add_argument("--model", type=Path, help="use this checkpoint instead of the bundled ones")
    common.device_flag(p)
    p.add_argument("--models-dir", type=Path, default=resources.default_models_dir(), help=argparse.SUPPRESS)
    common.output_flags(p, out=Path("outputs") / "demo")
    common.scale_flag(p)


def run(args: argparse.Namespace) -> list[Path]:
    """Every demo cell under its last-block map, the table of predictions, a contact sheet, every-block pictures."""
    from wtl.checkpoints.finding import test_manifest
    from wtl.data import demo
    from wtl.maps.explain import explain
    from wtl.plot.draw import demo_sheet, draw, scales_sheet
    from wtl.plot.outputs import Outputs
    from wtl.runtime import pick_device

    device = pick_device(args.device)
    outputs = Outputs(args.out, args.save_npz)
    look = common.look_of(args)
    model = common.open_model(args.model, "malaria", args.models_dir, device, bundled_only=True)
    if args.data_dir:
        cells = demo.manifest_cells(test_manifest(model.path), model.path.name, args.data_dir, args.seed)
    else:
        cells = demo.demo_cells()
    truths = [t for _, t in cells]
    scale = common.scale_for(args.scale, model, "cam")
    result = common.judged(explain(model, [p for p, _ in cells], "cam", "last"))
    draw(result, outputs, truths, look=look, scale=scale)
    correct = 0
    print(f"\n{'cell':<52}{'true':<13}{'predicted':<22}")
    for i, (path, truth) in enumerate(cells):
        predicted = model.class_names[int(result.predictions[i])]
        ok = predicted == truth
        correct += ok
        verdict = "" if ok else "  <- wrong"
        print(f"{path.name:<52}{truth:<13}{predicted} {float(result.probabilities[i].max()):.1%}{verdict}")
    print(f"{correct} of {len(cells)} demo cells classified correctly by {model.path.name}\n")
    title = f"Where the network looks: last-block CAM of the demo cells ({model.path.name})"
    outputs.save(demo_sheet([result], truths, title, look, scale), "demo_contact_sheet")
    if result.scale() is not None:
        heading = (
            f"The same cells on {model.path.name}'s shared scale (left: log-odds, one colour bar for all) and "
            "stretched per image (right)"
        )
        outputs.save(scales_sheet(result, truths, heading, look), "demo_scales")
    few = [p for p, t in cells if t == "Parasitized"][:2] + [p for p, t in cells if t == "Uninfected"][:1]
    if args.model:
        if model.kind == "every":
            draw(common.judged(explain(model, few, "cam", "every")), outputs, look=look, scale=scale)
        else:
            print(f"note: {model.path.name} is a last-block Network: the every-block pictures need a NetworkMultiLoss")
    else:
        for view in ("multi-last", "multi-every"):
            every = common.open_model(None, view, args.models_dir, device, bundled_only=True)
            draw(
                common.judged(explain(every, few, "cam", "every")),
                outputs,
                look=look,
                scale=common.scale_for(args.scale, every, "cam"),
            )
    return outputs.written
