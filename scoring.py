"""The measuring commands of where_to_look.py: evaluate (model and maps) and compare (models with each other).

Thin glue: pick the model and the data, run evaluation.py's drivers, print their
tables, and save JSON, charts and the report. evaluation, charts and torchvision
are imported here only, so the picture commands start without them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import evaluation
from model_data import FolderSet, GenderSet, ImageListSet, MalariaSet, balanced_sample, make_dataset
from runtime import pick_device
from views import Outputs, UsageError, choose_model, class_index_of, describe
from weights import LoadedModel, checkpoint_name, load_model


def evaluation_set(model: LoadedModel, data_dir: Path | None, split: str, seed: int = 0) -> ImageListSet:
    """The split (or 'all') of the data set a model was trained on: malaria, gender, or a class folder."""
    if data_dir is None:
        raise UsageError("pass the data set with --data-dir PATH")
    names = list(model.class_names)
    kind = model.checkpoint.get("dataset")
    if kind == "malaria" or names == list(MalariaSet.CLASSES):
        name = "malaria"
    elif kind == "gender" or names == list(GenderSet.CLASSES):
        name = "gender"
    else:
        name = "folder"
    hint = "" if split == "all" else "; pass --split all to score every image in it"
    dataset = make_dataset(
        name, data_dir, split, empty_hint=hint, size=model.image_size, preprocess=model.preprocess, seed=seed
    )
    if name == "folder" and isinstance(dataset, FolderSet) and dataset.class_names != names:
        raise UsageError(
            f"{data_dir}: its class folders ({', '.join(dataset.class_names)}) are not the model's "
            f"classes ({', '.join(names)})"
        )
    return dataset


def run_evaluate(args: argparse.Namespace) -> list[Path]:
    """`evaluate`: accuracy and map quality of one model on a split; a table, a JSON file and a chart."""
    import charts

    device = pick_device(args.device)
    model = choose_model(args, "malaria", device)
    dataset = evaluation_set(model, args.data_dir, args.split, args.seed)
    if args.max_images is not None and args.max_images < len(dataset):
        dataset.samples = balanced_sample(dataset.samples, args.max_images, args.seed)
        print(f"note: scoring a seeded, class-balanced sample of {len(dataset)} images (--max-images)")
    outputs = Outputs(args.out, False)
    result = evaluation.evaluate(
        model,
        dataset,
        args.methods,
        device,
        args.batch_size,
        fuse=args.fuse,
        sanity_images=max(args.sanity, 0),
        seed=args.seed,
        faithful_images=args.faithful_images,
    )
    result.update(model=describe(model), data_dir=str(args.data_dir), split=args.split)
    print(evaluation.format_table(result))  # with the sanity check's table when it ran
    stem = f"evaluate_{checkpoint_name(model.path)}_{args.split}"
    outputs.json(result, stem)
    outputs.save(charts.metrics_chart(result, f"{model.path.name} on {args.split} ({args.data_dir})"), stem)
    if args.report:
        import report

        details = {"model": describe(model), "data": f"{args.data_dir} ({args.split}, {len(dataset)} images)"}
        index = report.write_report(result, outputs.folder / f"{stem}_report", model, device, details=details)
        outputs.written.append(index)
        print(f"report: {index} (open it in a browser)")
    return outputs.written


def run_compare(args: argparse.Namespace) -> list[Path]:
    """`compare`: do two models trained alike look at the same places? Numbers per image pair, maps side by side."""
    import charts

    if not args.model or len(args.model) < 2:
        raise UsageError("compare needs two or more models: --model A.pt --model B.pt")
    device = pick_device(args.device)
    models = [load_model(path, device) for path in args.model]
    for model in models:
        print(f"model: {describe(model)}")
    if any(m.class_names != models[0].class_names for m in models):
        raise UsageError("compare needs models of the same classes")
    if any(m.preprocess != models[0].preprocess for m in models):
        raise UsageError("compare needs models that see the pictures alike (one squashes, another centre-crops)")
    dataset = evaluation_set(models[0], args.data_dir, args.split, args.seed)
    if args.max_images is not None and args.max_images < len(dataset):
        dataset.samples = balanced_sample(dataset.samples, args.max_images, args.seed)
    class_index = class_index_of(args.class_, models[0].class_names)
    named = dict(zip(run_labels(args.model), models))
    result = evaluation.compare_models(named, dataset, args.method, device, args.batch_size, None, class_index)
    numbers = result["numbers"]
    for pair, values in numbers["pairs"].items():
        rho = "n/a" if values["spearman"] is None else f"{values['spearman']:.3f}"
        averages = ", ".join(
            f"{name} {'n/a' if r is None else f'{r:.3f}'}" for name, r in values["average_map_spearman"].items()
        )
        print(f"{pair}: mean Spearman rho {rho}, mean top-10% IoU {values['top10_iou']:.3f}")
        print(f"{pair}: Spearman rho of the per-class average maps: {averages}")
    outputs = Outputs(args.out, args.save_npz)
    outputs.json(numbers, "compare")
    arrays = {f"{m}_{c}": a for m, per in result["maps"].items() for c, a in per.items()}
    arrays.update({f"std_{c}": a for c, a in result["std"].items()})
    outputs.save(charts.compare_figure(result, f"{args.method} maps on {args.split}"), "compare", arrays)
    return outputs.written


def run_labels(paths: list[Path]) -> list[str]:
    """Short names that tell the runs apart: the file name, or its folder where file names repeat (run1, run2)."""
    names = [checkpoint_name(p) for p in paths]
    if len(set(names)) == len(names):
        return names
    folders = [p.resolve().parent.name for p in paths]
    if len(set(folders)) == len(folders):
        return folders
    return [f"{i}:{name}" for i, name in enumerate(names)]
