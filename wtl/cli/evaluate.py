"""`evaluate`: how good are a model and its maps? Accuracy, pointing game, deletion/insertion, sanity check, report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from wtl.cli import common
from wtl.data.registry import SPLIT_CHOICES
from wtl.evaluation.registry import OUTCOMES
from wtl.maps.registry import METHODS

if TYPE_CHECKING:
    from wtl.checkpoints.loading import LoadedModel
    from wtl.data.datasets import ImageListSet
    from wtl.data.truth import GroundTruth
    from wtl.evaluation.result import EvaluationResult

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
        help="map methods (default cam gradcam; gradcam alone for a network whose head has no exact CAM)",
    )
    common.fuse_flag(p)
    p.add_argument(
        "--report",
        action="store_true",
        help="also write a report folder (index.html, galleries of misclassified cells, map misses and suspect "
        "labels) that opens offline in a browser",
    )
    p.add_argument(
        "--gallery",
        nargs="+",
        choices=OUTCOMES,
        default=[],
        metavar="{tp,tn,fp,fn}",
        help="also these galleries by outcome in the report (implies --report): true/false positives/negatives, "
        "positive being Parasitized (faces: Male); the most confident first",
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
        "(default: all of them up to 100, else a sample of 100; the pointing game always runs on all)",
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
    truth = p.add_argument_group(
        "ground truth of your own (default: the stain mask for malaria cells), for the pointing game, relevance "
        "mass and rank and the report's outline"
    ).add_mutually_exclusive_group()
    truth.add_argument("--masks", type=Path, metavar="DIR", help="one binary mask image per picture, named as it")
    truth.add_argument(
        "--boxes", type=Path, metavar="CSV", help="file,x0,y0,x1,y1 in the picture's own pixels (rows may repeat)"
    )
    truth.add_argument("--points", type=Path, metavar="CSV", help="file,x,y in the picture's own pixels")
    common.output_flags(p, npz=False)


def truth_of(args: argparse.Namespace, model: LoadedModel, dataset: ImageListSet) -> GroundTruth | None:
    """--masks, --boxes or --points as a GroundTruth at the model's input size; None without them."""
    from wtl.data.truth import check_matches, load_truth

    for kind in ("masks", "boxes", "points"):
        source = getattr(args, kind, None)
        if source is not None:
            truth = load_truth(kind, source, model.image_size, model.preprocess)
            check_matches(truth, [path for path, _ in dataset.samples], args.split)
            return truth
    return None


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


def methods_of(args: argparse.Namespace, model: LoadedModel) -> list[str]:
    """--methods, or the default: cam and gradcam, without cam (and with a note) for a head that has none."""
    from wtl.nets.blocks import gap_linear_head, head_problem

    if args.methods:
        return list(args.methods)
    if gap_linear_head(model.network) is None:
        print(f"note: no exact CAM ({head_problem(model.network)}): scoring gradcam only")
        return ["gradcam"]
    return ["cam", "gradcam"]


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
    model = common.open_model(args.model, "malaria", args.models_dir, device, plain=common.plain_of(args))
    dataset = dataset_of(model, args)
    truth = truth_of(args, model, dataset)
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
        truth=truth,
        outcome_galleries=tuple(dict.fromkeys(args.gallery)),
        bootstrap=args.bootstrap or DEFAULT_REPLICATES,
        intervene=args.intervene,
        extra_fusions=tuple(FUSIONS) if args.all_fusions else (),
        sanity_model=twin,
    )
    note = sample_note(model, dataset, options)
    if note:
        print(note)
    result = evaluate(model, dataset, methods_of(args, model), options)
    if truth is not None:
        for line in truth.notes("explained pictures"):
            print(line)
    result.details = {"model": shown_path(model.path), "data_dir": str(args.data_dir), "split": args.split}
    if model.shuffled_labels:
        result.details["shuffled_labels"] = True
    print(format_table(result))  # with the sanity check's table when it ran
    _warn_unlike(result, model)
    stem = names.evaluation_stem(model.path, args.split)
    outputs.json(result.to_json(), stem)
    outputs.save(metrics_chart(result, f"{model.path.name} on {args.split} ({args.data_dir})"), stem)
    if args.report or args.gallery:
        from wtl.plot.report import write_report

        details = {"model": shown_path(model.path), "data": f"{args.data_dir} ({args.split}, {len(dataset)} images)"}
        report_folder = outputs.folder / f"{stem}_report"
        look = common.look_of(args)
        index = write_report(result, report_folder, model, device, details=details, look=look, truth=truth)
        outputs.written.append(index)
        print(f"report: {index} (open it in a browser)")
    return outputs.written


WARNED = 10  # warnings printed one per picture; the rest are counted (every one is in the JSON)


def _warn_unlike(result: EvaluationResult, model: LoadedModel) -> None:
    """The one-line warning for each picture unlike the training pictures (the first WARNED of them)."""
    from wtl.metrics.ood import statistics_of, warning

    statistics = statistics_of(model.ood)
    unlike = result.unlike_training
    if statistics is None or not unlike:
        return
    for record in unlike[:WARNED]:
        name = Path(record.file).name if record.file else "a picture"
        print(warning(name, float(record.ood_score or 0.0), statistics.threshold, statistics.score, model.path.name))
    if len(unlike) > WARNED:
        print(f"warning: {len(unlike) - WARNED} more pictures are unlike the training pictures (listed in the JSON)")
