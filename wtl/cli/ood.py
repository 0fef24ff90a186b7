"""`ood`: is a picture like the ones a model was trained on? Score pictures, or fit the statistics for a checkpoint."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from wtl.cli import common
from wtl.data.registry import SPLIT_CHOICES

if TYPE_CHECKING:
    from torch import Tensor

    from wtl.checkpoints.loading import LoadedModel

SUMMARY = "is a picture like the model's training pictures? score pictures, or fit the statistics (--fit)"
EXAMPLE = "python where_to_look.py ood --model models/bundled/model_malaria_last.pt --image face.jpg"
LISTED = 20  # with more pictures than this, only the summary is printed (every score is in the JSON)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `ood`."""
    p.add_argument("--image", type=Path, nargs="+", help="pictures (files or folders) to score")
    p.add_argument("--data-dir", type=Path, help="or score a split of this data set (with --fit: fit on it)")
    p.add_argument("--split", choices=SPLIT_CHOICES, default="test", help="which split to score (default test)")
    p.add_argument(
        "--max-images", type=common.positive, help="score a seeded, class-balanced sample of this many images"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of that sample (default 0)")
    p.add_argument(
        "--fit",
        action="store_true",
        help="fit the statistics on --data-dir's training split (thresholds on its validation split) and write them",
    )
    p.add_argument(
        "--stats",
        type=Path,
        help="with --fit: where the statistics go (default <name>.ood.npz beside the checkpoint)",
    )
    common.model_flags(p, dataset=True)
    p.add_argument("--batch-size", type=common.positive, default=64, help="images per batch (default 64)")
    p.add_argument("--out", type=Path, default=Path("outputs"), help="folder for the scores' JSON (default outputs/)")


def _batches(model: LoadedModel, args: argparse.Namespace, split: str) -> Iterator[tuple[Tensor, Tensor]]:
    """(uint8 images, labels) of one split of --data-dir as the model sees them."""
    from torch.utils.data import DataLoader

    from wtl.cli.evaluate import dataset_of

    args.split = split
    yield from DataLoader(dataset_of(model, args, note=False), batch_size=args.batch_size)


def fit_statistics(model: LoadedModel, args: argparse.Namespace) -> Path:
    """Fit on the training split, choose thresholds on the validation split, write the npz; returns its path."""
    from wtl import names, resources
    from wtl.errors import DatasetError, UsageError
    from wtl.metrics import ood

    if args.data_dir is None:
        raise UsageError("--fit needs the data set the model was trained on: pass --data-dir PATH")
    target = args.stats or names.ood_file(model.path)
    if args.stats is None and model.path.resolve().parent == resources.bundled_dir().resolve():
        raise UsageError(
            f"{model.path.name} is bundled and ships with its statistics; pass --stats FILE to write new ones elsewhere"
        )
    try:
        validation = list(_batches(model, args, "val"))
    except DatasetError:
        validation = []  # no validation split: thresholds from the training pictures (fit says so)
    statistics = ood.fit(model.network, _batches(model, args, "train"), validation or None, len(model.class_names))
    target.parent.mkdir(parents=True, exist_ok=True)
    statistics.save_npz(target)
    print(
        f"fitted on the {statistics.fitted_on}; thresholds at the {statistics.quantile:.0%} quantile of the "
        f"{statistics.chosen_on}: {', '.join(f'{k} {v:.4g}' for k, v in statistics.thresholds.items())}"
    )
    print(f"statistics: {target}")
    return target


def run(args: argparse.Namespace) -> list[Path]:
    """Score the pictures by every score; print which are unlike the training pictures and how many, with intervals."""
    import torch

    from wtl import names
    from wtl.data.images import chunks, load_batch, resolve_images
    from wtl.errors import UsageError
    from wtl.metrics import ood
    from wtl.metrics.proportion import format_share
    from wtl.plot.outputs import Outputs
    from wtl.runtime import pick_device

    device = pick_device(args.device)
    model = common.open_model(args.model, args.dataset or "malaria", args.models_dir, device)
    if args.fit:
        return [fit_statistics(model, args)]
    statistics = ood.statistics_of(model.ood)
    if statistics is None:
        raise UsageError(
            f"{model.path.name} has no out-of-distribution statistics: fit them with "
            f"'ood --fit --model {model.path} --data-dir DATA'"
        )
    files: list[str] = []
    scores: dict[str, list[Tensor]] = {name: [] for name in ood.SCORES}
    if args.image:
        paths = resolve_images(args.image)
        batches: Iterator[tuple[Tensor, Tensor]] = (
            (load_batch(chunk, model.image_size, model.preprocess), torch.zeros(len(chunk)))
            for chunk in chunks(paths, args.batch_size)
        )
        files = [str(p) for p in paths]
        where = ", ".join(str(p) for p in args.image)
    elif args.data_dir is not None:
        from wtl.cli.evaluate import dataset_of

        split = args.split
        dataset = dataset_of(model, args)
        files = [str(path) for path, _ in dataset.samples]
        batches = iter(_batches(model, args, split))
        where = f"{args.data_dir} ({split})"
    else:
        raise UsageError("ood needs pictures: pass --image FILE|FOLDER or --data-dir PATH [--split S]")
    for images, _ in batches:
        images = images.float() / 255.0 if images.dtype == torch.uint8 else images
        judged = ood.score_images(model.network, statistics, images)
        for name in ood.SCORES:
            scores[name].append(judged.scores[name])
    joined = {name: torch.cat(values) for name, values in scores.items()}
    flagged = {name: joined[name] > statistics.thresholds[name] for name in ood.SCORES}
    total = len(files)
    if total <= LISTED:
        for i, file in enumerate(files):
            if bool(flagged[statistics.score][i]):
                print(
                    ood.warning(
                        Path(file).name,
                        float(joined[statistics.score][i]),
                        statistics.threshold,
                        statistics.score,
                        model.path.name,
                    )
                )
    print(
        f"{total} pictures of {where}, scored by {model.path.name} (thresholds: the {statistics.quantile:.0%} "
        f"quantile of its {statistics.chosen_on})"
    )
    for name in ood.SCORES:
        mark = " (decides)" if name == statistics.score else ""
        share = format_share(int(flagged[name].sum()), total)
        print(
            f"  {name:<17} threshold {statistics.thresholds[name]:<10.4g} unlike the training pictures: {share}{mark}"
        )
    outputs = Outputs(args.out, False)
    report = {
        "model": str(model.path),
        "pictures": where,
        "score": statistics.score,
        "thresholds": statistics.thresholds,
        "quantile": statistics.quantile,
        "chosen_on": statistics.chosen_on,
        "flagged": {name: int(flagged[name].sum()) for name in ood.SCORES},
        "images": total,
        "per_image": [
            {
                "file": file,
                **{name: float(joined[name][i]) for name in ood.SCORES},
                "out_of_distribution": bool(flagged[statistics.score][i]),
            }
            for i, file in enumerate(files)
        ],
    }
    outputs.json(report, f"ood_{names.checkpoint_name(model.path)}")
    return outputs.written
