"""`scale`: measure a model's shared colour scale, and how a healthy cell's picture compares with an infected one's."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from wtl.cli import common
from wtl.cli.evaluate import data_flags

if TYPE_CHECKING:
    from wtl.checkpoints.loading import LoadedModel

SUMMARY = "measure a model's shared colour scale (written beside the checkpoint) and the pictures' brightness"
EXAMPLE = "python where_to_look.py scale --model runs/model_malaria_last.best.pt --data-dir ~/cell_images"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `scale`."""
    data_flags(p, required=True)
    # Unless --split says otherwise, the split a scale file is measured on (test, else val, else train).
    p.set_defaults(split=None)
    common.model_flags(p)
    p.add_argument("--batch-size", type=common.positive, default=64, help="images per batch")
    p.add_argument("--bootstrap", type=common.positive, default=None, metavar="N", help="bootstrap replicates")
    p.add_argument(
        "--force", action="store_true", help="measure and write the scale file again where the checkpoint has one"
    )
    p.add_argument("--out", type=Path, default=Path("outputs"), help="folder for the study's JSON (default outputs/)")


def run(args: argparse.Namespace) -> list[Path]:
    """Measure the scale (on the split scale_split picks; written beside a checkpoint that lacks it), then the study."""
    from torch.utils.data import DataLoader

    from wtl import names
    from wtl.checkpoints.finding import is_bundled
    from wtl.checkpoints.scales import write_scale
    from wtl.cli.evaluate import dataset_of
    from wtl.data.cache import DatasetCache
    from wtl.evaluation.scales import format_study, scale_study
    from wtl.maps.scale import model_scale
    from wtl.metrics.bootstrap import DEFAULT_REPLICATES
    from wtl.nets.modes import eval_mode
    from wtl.plot.outputs import Outputs
    from wtl.runtime import pick_device

    device = pick_device(args.device)
    model = common.open_model(args.model, "malaria", args.models_dir, device)
    asked = args.split
    if asked is None:
        args.split = _scale_split(model, args)
    dataset = dataset_of(model, args)
    sidecar = names.scale_file(model.path)
    written: list[Path] = []
    scale = model.scale
    if scale is None or args.force:
        cache = DatasetCache(dataset).fill(0, "decoding")
        loader = DataLoader(cache, batch_size=args.batch_size)
        with eval_mode(model.network):
            batches = (images.to(device).float().div_(255.0) for images, _ in loader)
            scale = model_scale(
                model.network, batches, f"{args.split} split of {args.data_dir.name} ({len(dataset)} images)"
            )
        # The split asked for is kept where it is the scale split (picked above, or a test split with images).
        kept = args.split if asked in (None, "test") else _scale_split(model, args)
        if args.split != kept:
            print(f"note: a model's scale file is measured on its {kept} split; on {args.split}, nothing is written")
        elif is_bundled(model.path):
            print(f"note: bundled checkpoints ship their scale file; {sidecar.name} is not written")
        else:
            written.append(write_scale(scale, model.path))
            print(f"shared colour scale: {written[-1]}")
    else:
        print(f"shared colour scale of the model: {sidecar.name} ({scale.source}; --force measures it again)")
    value = scale.of("cam", "last") if scale is not None else None
    if value is None:
        from wtl.errors import CheckpointError

        raise CheckpointError(f"{model.path.name}: no CAM scale could be measured (is it one of the GAP networks?)")
    for method, views in scale.values.items():
        shown = ", ".join(f"{view} {v:.3g}" for view, v in views.items() if view != "last" or len(views) == 1)
        print(f"  {method:<10} {shown}")
    study = scale_study(model, dataset, value, scale.source, device, args.batch_size)
    summary = study.summary(args.bootstrap or DEFAULT_REPLICATES, args.seed)
    print(format_study(summary, list(model.class_names)))
    outputs = Outputs(args.out, False)
    outputs.json({"model": str(model.path), "split": args.split, **summary}, f"scale_{model.name}_{args.split}")
    return written + outputs.written


def _scale_split(model: LoadedModel, args: argparse.Namespace) -> str:
    """The split of --data-dir a scale file is measured on (checkpoints.scales.scale_split)."""
    from wtl.checkpoints.scales import SCALE_SPLITS, scale_split
    from wtl.cli.evaluate import dataset_of
    from wtl.errors import UsageError

    sizes = {}
    for split in SCALE_SPLITS:
        try:
            sizes[split] = len(dataset_of(model, argparse.Namespace(**{**vars(args), "split": split}), note=False))
        except UsageError:  # an empty split
            sizes[split] = 0
    return scale_split(sizes)
