"""`evaluate`: how good are a model and its maps? Accuracy, pointing game, deletion/insertion, sanity check, report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from wtl.cli import common
from wtl.data.registry import SPLIT_CHOICES
from wtl.maps.registry import METHODS

if TYPE_CHECKING:
    from wtl.checkpoints.loading import LoadedModel
    from wtl.data.datasets import ImageListSet

SUMMARY = "how good are a model and its heatmaps: accuracy, pointing game, deletion/insertion"
EXAMPLE = "python where_to_look.py evaluate --model models/bundled/model_malaria_last.pt --data-dir ~/cell_images"


def data_flags(p: argparse.ArgumentParser, required: bool = False) -> None:
    """--data-dir, --split, --max-images, --seed: which images (evaluate and compare)."""
    p.add_argument("--data-dir", type=Path, required=required, help="the data set to score")
    p.add_argument(
        "--split",
        choices=SPLIT_CHOICES,
        default="test",
        help="which split (default test); all: every image in --data-dir, e.g. a folder of new cells",
    )
    p.add_argument(
        "--max-images", type=common.positive, help="score a seeded, class-balanced sample of this many images"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of that sample (default 0)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `evaluate`."""
    data_flags(p)
    p.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        default=["cam", "gradcam"],
        help="map methods (default cam gradcam)",
    )
    common.fuse_flag(p)
    p.add_argument(
        "--report",
        action="store_true",
        help="also write a report folder (index.html, galleries of misclassified cells, map misses and suspect "
        "labels) that opens offline in a browser",
    )
    p.add_argument(
        "--sanity",
        type=int,
        default=16,
        metavar="N",
        help="the weight-randomisation sanity check on N explained images (default 16; 0 skips it)",
    )
    p.add_argument(
        "--faithful-images",
        type=common.positive,
        metavar="N",
        help="deletion/insertion, the intervention and --sanity-model on a seeded sample of N explained images "
        "(default: all of them up to 200, else a sample of 200; the pointing game always runs on all)",
    )
    p.add_argument(
        "--intervene",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the intervention test: fill the ground truth (stain) from the cell around it, an equal control region "
        "and the map's top region, and ask the model again (default: on wherever there is ground truth)",
    )
    p.add_argument(
        "--sanity-model",
        type=Path,
        metavar="PATH",
        help="the data-randomisation test: the same recipe trained on shuffled labels (model_main.py "
        "--shuffle-labels); per method the rank correlation of its maps with this model's",
    )
    p.add_argument(
        "--all-fusions",
        action="store_true",
        help="also score every other fusion rule as a view fused_<rule> (to compare them on the same maps)",
    )
    p.add_argument(
        "--bootstrap",
        type=common.positive,
        default=None,
        metavar="N",
        help="bootstrap replicates of every 95 %% interval (default 5000; patients, people or images resampled)",
    )
    common.model_flags(p)
    p.add_argument("--batch-size", type=common.positive, default=32, help="images per batch")
    common.output_flags(p, npz=False)


def dataset_of(model: LoadedModel, args: argparse.Namespace, note: bool = True) -> ImageListSet:
    """The split of --data-dir the model is judged on, sampled down to --max-images."""
    from wtl.data.datasets import balanced_sample, dataset_kind, model_dataset

    kind = dataset_kind(model.class_names, model.checkpoint.get("dataset"))
    dataset = model_dataset(
        args.data_dir, args.split, model.class_names, kind, model.image_size, model.preprocess, args.seed
    )
    if args.max_images is not None and args.max_images < len(dataset):
        dataset.samples = balanced_sample(dataset.samples, args.max_images, args.seed)
        if note:
            print(f"note: scoring a seeded, class-balanced sample of {len(dataset)} images (--max-images)")
    return dataset


def run(args: argparse.Namespace) -> list[Path]:
    """Score one model on a split: a table, a JSON file, a chart, and with --report a report folder."""
    from wtl import names
    from wtl.checkpoints.finding import shown_path
    from wtl.errors import UsageError
    from wtl.evaluation.driver import EvaluateOptions, evaluate, sample_note
    from wtl.evaluation.tables import format_table
    from wtl.maps.registry import FUSIONS
    from wtl.metrics.bootstrap import DEFAULT_REPLICATES
    from wtl.plot.charts import metrics_chart
    from wtl.plot.outputs import Outputs
    from wtl.runtime import pick_device

    device = pick_device(args.device)
    model = common.open_model(args.model, "malaria", args.models_dir, device)
    dataset = dataset_of(model, args)
    twin = None
    if args.sanity_model is not None:
        from wtl.checkpoints.loading import load_model

        twin = load_model(args.sanity_model, device)
        print(f"shuffled-label twin: {shown_path(twin.path)}{twin.marker}")
        if not twin.shuffled_labels:
            print(
                f"note: {twin.path.name} does not say it was trained on shuffled labels (model_main.py "
                "--shuffle-labels): it is compared all the same"
            )
        if list(twin.class_names) != list(model.class_names):
            raise UsageError(f"--sanity-model {twin.path.name}: its classes are not the model's")
    outputs = Outputs(args.out, False)
    options = EvaluateOptions(
        device=device,
        batch_size=args.batch_size,
        fuse=args.fuse,
        sanity_images=max(args.sanity, 0),
        seed=args.seed,
        faithful_images=args.faithful_images,
        bootstrap=args.bootstrap or DEFAULT_REPLICATES,
        intervene=args.intervene,
        extra_fusions=tuple(FUSIONS) if args.all_fusions else (),
        sanity_model=twin,
    )
    note = sample_note(model, dataset, options)
    if note:
        print(note)
    result = evaluate(model, dataset, args.methods, options)
    result.details = {"model": shown_path(model.path), "data_dir": str(args.data_dir), "split": args.split}
    if model.shuffled_labels:
        result.details["shuffled_labels"] = True
    print(format_table(result))  # with the sanity check's table when it ran
    stem = names.evaluation_stem(model.path, args.split)
    outputs.json(result.to_json(), stem)
    outputs.save(metrics_chart(result, f"{model.path.name} on {args.split} ({args.data_dir})"), stem)
    if args.report:
        from wtl.plot.report import write_report

        details = {"model": shown_path(model.path), "data": f"{args.data_dir} ({args.split}, {len(dataset)} images)"}
        report_folder = outputs.folder / f"{stem}_report"
        index = write_report(result, report_folder, model, device, details=details, look=common.look_of(args))
        outputs.written.append(index)
        print(f"report: {index} (open it in a browser)")
    return outputs.written
