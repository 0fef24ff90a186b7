"""`compare`: do two or more models look at the same places? Rank correlation and overlap of their maps."""

from __future__ import annotations

import argparse
from pathlib import Path

from wtl.cli import common
from wtl.cli.evaluate import data_flags

SUMMARY = "do two or more models look at the same places? rank correlation and overlap of their maps"
EXAMPLE = (
    "python where_to_look.py compare --model run1/model_gender_last.pt --model run2/model_gender_last.pt "
    "--data-dir ~/celeba"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `compare`."""
    p.add_argument("--model", type=Path, action="append", required=True, help="a checkpoint; give it twice or more")
    data_flags(p, required=True)
    common.device_flag(p)
    common.plain_flags(p)
    common.map_flags(p)
    common.output_flags(p)


def run_labels(paths: list[Path]) -> list[str]:
    """Short names that tell the runs apart: the file name, or its folder where file names repeat (run1, run2)."""
    from wtl import names

    labels = [names.checkpoint_name(p) for p in paths]
    if len(set(labels)) == len(labels):
        return labels
    folders = [p.resolve().parent.name for p in paths]
    if len(set(folders)) == len(folders):
        return folders
    return [f"{i}:{name}" for i, name in enumerate(labels)]


def run(args: argparse.Namespace) -> list[Path]:
    """Compare the models' maps image by image; print the pair numbers, save them and the average maps."""
    import dataclasses

    from wtl.checkpoints.finding import shown_path
    from wtl.checkpoints.loading import load_model
    from wtl.cli.evaluate import dataset_of
    from wtl.errors import UsageError
    from wtl.evaluation.compare import CompareOptions, compare_models
    from wtl.plot.charts import compare_figure
    from wtl.plot.outputs import Outputs
    from wtl.runtime import pick_device

    if not args.model or len(args.model) < 2:
        raise UsageError("compare needs two or more models: --model A.pt --model B.pt")
    device = pick_device(args.device)
    # --arch describes the plain state dicts among the models; the others say what they are.
    plain = dataclasses.replace(common.plain_of(args), arch_if_needed=True)
    models = [load_model(path, device, plain) for path in args.model]
    for model in models:
        print(f"model: {shown_path(model.path)}{model.marker}")
    if any(m.class_names != models[0].class_names for m in models):
        raise UsageError("compare needs models of the same classes")
    if any(m.preprocess != models[0].preprocess for m in models):
        raise UsageError("compare needs models that see the pictures alike (one squashes, another centre-crops)")
    dataset = dataset_of(models[0], args, note=False)
    class_index = common.class_index_of(args.class_, models[0].class_names)
    named = dict(zip(run_labels(args.model), models))
    options = CompareOptions(device=device, batch_size=args.batch_size, class_index=class_index)
    result = compare_models(named, dataset, args.method, options)
    from wtl.evaluation.tables import interval_text
    from wtl.metrics.bootstrap import unit_count

    described = result.bootstrap
    print(
        f"(95 % intervals: bootstrap over {unit_count(described['units'], described['unit'])}, "
        f"{described['replicates']} replicates; {described['average_map_replicates']} for the average maps)"
    )
    for pair, scores in result.pairs.items():
        rho = scores.mean_spearman()
        shown = "n/a" if rho is None else f"{rho:.3f} {interval_text(scores.spearman_ci95)}".rstrip()
        iou = f"{scores.to_json()['top10_iou']:.3f} {interval_text(scores.top10_iou_ci95)}".rstrip()
        averages = ", ".join(
            f"{name} {'n/a' if r is None else f'{r:.3f}'}"
            + (f" {interval_text(scores.average_map_spearman_ci95.get(name))}" if r is not None else "")
            for name, r in scores.average_map_spearman.items()
        )
        print(f"{pair}: mean Spearman rho {shown}, mean top-10% IoU {iou}")
        print(f"{pair}: Spearman rho of the per-class average maps: {averages}")
    outputs = Outputs(args.out, args.save_npz)
    outputs.json(result.to_json(), "compare")
    arrays = {f"{m}_{c}": a for m, per in result.maps.items() for c, a in per.items()}
    arrays.update({f"std_{c}": a for c, a in result.std.items()})
    outputs.save(compare_figure(result, f"{args.method} maps on {args.split}", common.look_of(args)), "compare", arrays)
    return outputs.written
