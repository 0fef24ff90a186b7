"""What the visualizer's commands share: their common flags, and turning flags into a model and a class.

The flag helpers import only the standard library (and torch-free registries), so that
`where_to_look.py --help` and a mistyped flag answer at once; the rest imports torch inside.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from wtl import resources
from wtl.data.registry import PREPROCESS
from wtl.maps.registry import DEFAULT_FUSION, DEFAULT_METHOD, DEFAULT_SCALE, FUSIONS, METHODS, SCALES
from wtl.nets.registry import NORMALISATIONS, ZOO
from wtl.runtime import DEVICE_CHOICES

if TYPE_CHECKING:
    import torch

    from wtl.checkpoints.loading import LoadedModel, PlainWeights
    from wtl.maps.explain import Result
    from wtl.plot.style import Look

SCRIPT = "where_to_look.py"


def positive(text: str) -> int:
    """An argparse type: a whole number above 0."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def output_flags(p: argparse.ArgumentParser, npz: bool = True, out: Path = Path("outputs")) -> None:
    """--out, --save-npz, --show, and how heatmaps look: --cmap, --alpha, --grey."""
    p.add_argument("--out", type=Path, default=out, help=f"folder for the PNGs (default {out}/)")
    if npz:
        p.add_argument("--save-npz", action="store_true", help="also write the numbers beside each PNG")
    p.add_argument("--show", action="store_true", help="also open windows (where a display exists)")
    look = p.add_argument_group("how heatmaps look")
    look.add_argument("--cmap", help="any matplotlib colour map, e.g. jet, magma, Reds (default jet)")
    look.add_argument("--alpha", type=float, default=0.5, help="the heatmap's opacity over the picture (default 0.5)")
    look.add_argument("--grey", action="store_true", help="draw the picture under the heatmap in greyscale")


def look_of(args: argparse.Namespace, cmap: str | None = None) -> Look:
    """The Look the --cmap, --alpha and --grey flags ask for (`cmap`: the command's own default colour map)."""
    from wtl.errors import UsageError
    from wtl.plot.style import CMAP, Look, check_look

    chosen = args.cmap or cmap or CMAP
    problem = check_look(chosen, args.alpha)
    if problem:
        raise UsageError(problem)
    return Look(cmap=chosen, alpha=args.alpha, grey=args.grey)


def scale_flag(p: argparse.ArgumentParser) -> None:
    """--scale {model,image}: one colour scale per model (default) or each picture stretched to its own range."""
    p.add_argument(
        "--scale",
        choices=list(SCALES),
        default=DEFAULT_SCALE,
        help=f"colour scale of the maps (default {DEFAULT_SCALE}): model = one scale per model, measured on its "
        "test split (CAM in log-odds), so a weak map looks weak; image = each map stretched to its own range",
    )


def scale_for(asked: str, model: LoadedModel, method: str) -> str:
    """The scale a command draws with: --scale, or 'image' (with a note) where the model has no scale for `method`."""
    if asked != "model" or (model.scale is not None and model.scale.of(method, "last") is not None):
        return asked
    from wtl.checkpoints.scales import missing_scale_note

    print(f"note: {missing_scale_note(model.path, method)}")
    return "image"


def device_flag(p: argparse.ArgumentParser) -> None:
    """--device."""
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="auto picks CUDA, then MPS, then CPU")


def model_flags(p: argparse.ArgumentParser, dataset: bool = False) -> None:
    """--model, --models-dir (and --dataset), --device, and what plain weights are (--arch, --classes...)."""
    p.add_argument("--model", type=Path, help="a checkpoint (default: found in --models-dir, else the bundled one)")
    p.add_argument(
        "--models-dir", type=Path, default=resources.default_models_dir(), help="where trained models are looked for"
    )
    if dataset:
        p.add_argument(
            "--dataset", choices=["malaria", "gender"], help="without --model: which model (default malaria)"
        )
    device_flag(p)
    plain_flags(p)


def class_list(text: str) -> tuple[str, ...]:
    """An argparse type: comma-separated class names, 'Uninfected,Parasitized'."""
    names = tuple(name.strip() for name in text.split(","))
    if len(names) < 2 or not all(names):
        raise argparse.ArgumentTypeError(f"{text!r}: give two or more comma-separated class names, e.g. cat,dog")
    return names


def plain_flags(p: argparse.ArgumentParser) -> None:
    """--arch, --classes, --image-size, --preprocess, --normalise: what weights that do not say (a state_dict) are."""
    plain = p.add_argument_group(
        "a torchvision network's plain state_dict (this project's checkpoints record all of these)"
    )
    plain.add_argument("--arch", choices=ZOO, metavar="NAME", help="its architecture: " + ", ".join(ZOO))
    plain.add_argument(
        "--classes", type=class_list, metavar="A,B", help="its class names in output order (a single logit: two names)"
    )
    plain.add_argument("--image-size", type=positive, help="its input side in px (default 224)")
    plain.add_argument("--preprocess", choices=PREPROCESS, help="how a picture becomes its input (default center-crop)")
    plain.add_argument(
        "--normalise",
        choices=list(NORMALISATIONS),
        help="the input normalisation it was trained with (default imagenet)",
    )


def plain_of(args: argparse.Namespace) -> PlainWeights:
    """The PlainWeights the --arch, --classes... flags describe."""
    from wtl.checkpoints.loading import PlainWeights

    return PlainWeights(
        arch=getattr(args, "arch", None),
        classes=getattr(args, "classes", None),
        image_size=getattr(args, "image_size", None),
        preprocess=getattr(args, "preprocess", None),
        normalise=getattr(args, "normalise", None),
    )


def map_flags(p: argparse.ArgumentParser, method: bool = True) -> None:
    """--class, --method, --batch-size."""
    p.add_argument("--class", dest="class_", help="explain this class (name or index) instead of the prediction")
    if method:
        p.add_argument(
            "--method",
            choices=list(METHODS),
            default=DEFAULT_METHOD,
            help="heatmap method (default cam: exact for GAP)",
        )
    p.add_argument("--batch-size", type=positive, default=32, help="images per batch (and Score-CAM's masked batch)")


def fuse_flag(p: argparse.ArgumentParser) -> None:
    """--fuse."""
    p.add_argument(
        "--fuse",
        choices=list(FUSIONS),
        default=DEFAULT_FUSION,
        help="how the blocks' maps become the fused map (default product: their geometric mean, measured best "
        "in the README; max was the old panel)",
    )


def class_index_of(answer: str | None, class_names: Sequence[str]) -> int | None:
    """--class as a class index: a name (any case) or a number; None explains the prediction."""
    from wtl.errors import UsageError

    if answer is None:
        return None
    lowered = [name.lower() for name in class_names]
    if answer.lower() in lowered:
        return lowered.index(answer.lower())
    if answer.isdigit() and int(answer) < len(class_names):
        return int(answer)
    raise UsageError(
        f"--class {answer}: the model's classes are {', '.join(class_names)} (or 0..{len(class_names) - 1})"
    )


def open_model(
    model: Path | None,
    view: str,
    models_dir: Path,
    device: torch.device,
    bundled_only: bool = False,
    plain: PlainWeights | None = None,
) -> LoadedModel:
    """--model if given, else the view's checkpoint: one the user trained or downloaded first, the bundled one after.

    `plain` (--arch, --classes...) describes weights that do not say what they are.
    """
    from wtl import names
    from wtl.checkpoints.finding import find_model, model_folders, shown_path
    from wtl.checkpoints.loading import load_model
    from wtl.errors import CheckpointError

    if model is not None:
        loaded = load_model(model, device, plain)
    else:
        name = names.VIEW_MODELS[view]
        folders = [resources.bundled_dir()] if bundled_only else model_folders(models_dir)
        found = find_model(name, folders)
        if found is None:
            where = "models/bundled/" if bundled_only else f"{models_dir} or models/bundled/"
            raise CheckpointError(
                f"no {name}.pt in {where}: train it with model_main.py, run '{SCRIPT} download', or pass --model PATH"
            )
        loaded = load_model(found, device)
    print(f"model: {shown_path(loaded.path)}{loaded.marker}")
    return loaded


def pictures_of(args: argparse.Namespace, model: LoadedModel) -> list[tuple[Path, str | None]]:
    """--image files, or the demo pictures the prompts asked for (with their true classes)."""
    from wtl.checkpoints.finding import test_manifest
    from wtl.data import demo
    from wtl.data.images import resolve_images
    from wtl.errors import UsageError

    chosen = getattr(args, "demo_pictures", None)
    if chosen == "bundled":
        return list(demo.demo_cells())
    if chosen == "manifest":
        if model.class_names == ["Female", "Male"] or getattr(args, "dataset", None) == "gender":
            return list(demo.gender_test_faces(args.data_dir, getattr(args, "seed", 0)))
        return list(
            demo.manifest_cells(test_manifest(model.path), model.path.name, args.data_dir, getattr(args, "seed", 0))
        )
    if not args.image:
        raise UsageError(f"{args.command} needs pictures: pass --image FILE|FOLDER")
    return [(p, None) for p in resolve_images(args.image)]


def judged(result: Result) -> Result:
    """The result judged for being like the training pictures, with a one-line warning per picture that is not."""
    from wtl.metrics.ood import assess, warning

    result = assess(result)
    if result.out_of_distribution is not None and result.ood_score is not None:
        for i in range(len(result)):
            if bool(result.out_of_distribution[i]):
                source = result.inputs.sources[i]
                name = source.name if isinstance(source, Path) else result.inputs.names[i]
                score, threshold = float(result.ood_score[i]), float(result.ood_threshold or 0.0)
                print(warning(name, score, threshold, str(result.ood_method), result.model.path.name))
    return result
