"""Where does the network look? Render CAM heatmaps: answer the prompts, or name a command.

python where_to_look.py                       # asks, in the original project's order
python where_to_look.py demo                  # bundled cells and weights, offline
python where_to_look.py single --image cell.png [--class Uninfected]
python where_to_look.py multi --loss every --image cells/
python where_to_look.py gender100 --data-dir ~/celeba [--count 100]
python where_to_look.py overlay --image outputs/gender100_male.npz outputs/gender100_female.npz
python where_to_look.py evaluate --model models/bundled/model_malaria_last.pt --data-dir ~/cell_images
python where_to_look.py compare --model run1/model_gender_last.pt --model run2/model_gender_last.pt --data-dir ~/celeba
python where_to_look.py features --block 3 --channels 8 --class Parasitized
python where_to_look.py download [--weights-url URL]

`python where_to_look.py COMMAND --help` lists that command's own flags.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path

# Only the standard library up here: `--help` and a mistyped flag answer at once, and each
# command imports what it needs (torch, matplotlib...) when it runs.
from prompts import NoAnswer, ask

PROJECT = Path(__file__).resolve().parent
# command -> (module, function) that carries it out.
COMMANDS = {
    "single": ("views", "run_single"),
    "multi": ("views", "run_multi"),
    "gender100": ("views", "run_gender100"),
    "overlay": ("views", "run_overlay"),
    "demo": ("views", "run_demo"),
    "download": ("views", "run_download"),
    "evaluate": ("scoring", "run_evaluate"),
    "compare": ("scoring", "run_compare"),
    "features": ("views", "run_features"),
}
METHODS = ("cam", "gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "scorecam")
DEVICES = ("auto", "cpu", "cuda", "mps")
# cams.FUSION_RULES' names, spelled out so that parsing the flags needs no torch (a test keeps them equal).
FUSIONS = ("product", "product234", "confidence", "mean", "mean234", "max")
DEFAULT_FUSION = "product"
# Errors that mean bad input, not a bug: one line and exit 2. Matched by class name so that
# catching them needs no import of the (heavy) modules that define them.
USER_ERRORS = {"NoAnswer", "ImageError", "DatasetError", "CheckpointError", "DownloadError", "UsageError"}
PUBLISHED = "Google Drive folder of the original project"


# --------------------------------------------------------------------------- flags


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _output_flags(p: argparse.ArgumentParser, npz: bool = True, out: Path = Path("outputs")) -> None:
    p.add_argument("--out", type=Path, default=out, help=f"folder for the PNGs (default {out}/)")
    if npz:
        p.add_argument("--save-npz", action="store_true", help="also write the numbers beside each PNG")
    p.add_argument("--show", action="store_true", help="also open windows (where a display exists)")


def _model_flags(p: argparse.ArgumentParser, dataset: bool = False) -> None:
    p.add_argument("--model", type=Path, help="a checkpoint (default: found in --models-dir, else the bundled one)")
    p.add_argument("--models-dir", type=Path, default=PROJECT / "models", help="where trained models are looked for")
    if dataset:
        p.add_argument(
            "--dataset", choices=["malaria", "gender"], help="without --model: which model (default malaria)"
        )
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto picks CUDA, then MPS, then CPU")


def _map_flags(p: argparse.ArgumentParser, method: bool = True) -> None:
    p.add_argument("--class", dest="class_", help="explain this class (name or index) instead of the prediction")
    if method:
        p.add_argument("--method", choices=METHODS, default="cam", help="heatmap method (default cam: exact for GAP)")
    p.add_argument("--batch-size", type=_positive, default=32, help="images per batch (and Score-CAM's masked batch)")


def _fuse_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--fuse",
        choices=FUSIONS,
        default=DEFAULT_FUSION,
        help="how the blocks' maps become the fused map (default product: their geometric mean, measured best "
        "in the README; max was the old panel)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: one sub-command per view, each with its own flags and example."""
    top = argparse.ArgumentParser(
        prog="where_to_look.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,  # without a command, only the flags given reach the prompts
    )
    top.add_argument("--model", type=Path, help="a checkpoint to use for whatever the prompts choose")
    top.add_argument("--models-dir", type=Path, help="where trained models are looked for (default models/)")
    top.add_argument("--weights-url", help="download source when no models are found (Drive folder/file, http(s))")
    top.add_argument("--data-dir", type=Path, help="data set for Gender100 and the demo pictures")
    top.add_argument("--image", type=Path, nargs="+", help="your own picture(s) or folder(s)")
    top.add_argument("--loss", choices=["last", "every"], help="every-block model's training loss")
    top.add_argument("--class", dest="class_", help="explain this class instead of the prediction")
    top.add_argument("--method", choices=METHODS, help="heatmap method (default cam)")
    top.add_argument("--count", type=_positive, help="Gender100: faces per gender")
    top.add_argument("--seed", type=int, help="seed for the random picks of test images")
    top.add_argument("--out", type=Path, help="folder for the PNGs (default outputs/)")
    top.add_argument("--save-npz", action="store_true", help="also write the numbers beside each PNG")
    top.add_argument("--show", action="store_true", help="also open windows (where a display exists)")
    top.add_argument("--device", choices=DEVICES, help="auto picks CUDA, then MPS, then CPU")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    def command(name: str, summary: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    p = command("single", "the last block's heatmap of each picture", "python where_to_look.py single --image cell.png")
    p.add_argument("--image", type=Path, nargs="+", help="image file(s) or folder(s)")
    _model_flags(p, dataset=True)
    _map_flags(p)
    _output_flags(p)

    p = command(
        "multi",
        "every block's heatmap through an every-block model (NetworkMultiLoss)",
        "python where_to_look.py multi --loss every --image cells/",
    )
    p.add_argument("--image", type=Path, nargs="+", help="image file(s) or folder(s)")
    p.add_argument("--loss", choices=["last", "every"], help="without --model: the model's training loss")
    _model_flags(p)
    _map_flags(p)
    _fuse_flag(p)
    _output_flags(p)

    p = command(
        "gender100",
        "the heatmaps of N test faces per gender averaged over the mean face, and their overlay",
        "python where_to_look.py gender100 --data-dir ~/celeba --count 100",
    )
    p.add_argument("--data-dir", type=Path, help="the gender data set (Dataset/ or its parent)")
    p.add_argument("--count", type=_positive, default=100, help="faces per gender (default 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the faces' pick (default 0)")
    p.add_argument(
        "--stability",
        action="store_true",
        help="also average as many other test faces and print how well the two maps agree (Spearman's rho)",
    )
    _model_flags(p)
    _map_flags(p)
    _output_flags(p)

    p = command(
        "overlay",
        "blend the male and female Gender100 maps over the mean face",
        "python where_to_look.py overlay --image outputs/gender100_male.npz outputs/gender100_female.npz",
    )
    p.add_argument(
        "--image",
        type=Path,
        nargs="+",
        help="gender100's results: gender100_male.npz and gender100_female.npz, gender100.npz, or the PNGs beside them",
    )
    _output_flags(p)

    p = command(
        "demo",
        "the bundled cells with the bundled models (or 10 + 10 test cells of --data-dir, or --model)",
        "python where_to_look.py demo",
    )
    p.add_argument("--data-dir", type=Path, help="pick 10 + 10 of the model's test cells from this data set instead")
    p.add_argument("--seed", type=int, default=0, help="seed of that pick (default 0)")
    p.add_argument("--model", type=Path, help="use this checkpoint instead of the bundled ones")
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto picks CUDA, then MPS, then CPU")
    p.add_argument("--models-dir", type=Path, default=PROJECT / "models", help=argparse.SUPPRESS)
    _output_flags(p, out=Path("outputs") / "demo")

    p = command(
        "evaluate",
        "how good are a model and its heatmaps: accuracy, pointing game, deletion/insertion",
        "python where_to_look.py evaluate --model models/bundled/model_malaria_last.pt --data-dir ~/cell_images",
    )
    p.add_argument("--data-dir", type=Path, help="the data set to score")
    p.add_argument(
        "--split",
        choices=["train", "val", "test", "all"],
        default="test",
        help="which split (default test); all: every image in --data-dir, e.g. a folder of new cells",
    )
    p.add_argument(
        "--methods", nargs="+", choices=METHODS, default=["cam", "gradcam"], help="map methods (default cam gradcam)"
    )
    p.add_argument("--max-images", type=_positive, help="score a seeded, class-balanced sample of this many images")
    p.add_argument("--seed", type=int, default=0, help="seed of that sample (default 0)")
    _fuse_flag(p)
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
        type=_positive,
        metavar="N",
        help="deletion/insertion on a seeded sample of N explained images instead of all (they cost most)",
    )
    _model_flags(p)
    p.add_argument("--batch-size", type=_positive, default=32, help="images per batch")
    _output_flags(p, npz=False)

    p = command(
        "compare",
        "do two or more models look at the same places? rank correlation and overlap of their maps",
        "python where_to_look.py compare --model run1/model_gender_last.pt --model run2/model_gender_last.pt "
        "--data-dir ~/celeba",
    )
    p.add_argument("--model", type=Path, action="append", required=True, help="a checkpoint; give it twice or more")
    p.add_argument("--data-dir", type=Path, required=True, help="the data set to compare on")
    p.add_argument("--split", choices=["train", "val", "test", "all"], default="test", help="which split")
    p.add_argument("--max-images", type=_positive, help="compare on a seeded, class-balanced sample")
    p.add_argument("--seed", type=int, default=0, help="seed of that sample (default 0)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto picks CUDA, then MPS, then CPU")
    _map_flags(p)
    _output_flags(p)

    p = command(
        "features",
        "what the network looks for: the channels that carry a class's evidence, their activation maximisers "
        "and the real patches that drive them",
        "python where_to_look.py features --block 3 --channels 8 --class Parasitized",
    )
    p.add_argument("--block", type=int, default=4, help="which conv block, 1..4 (default 4)")
    p.add_argument("--channels", type=_positive, default=8, help="how many channels (default 8)")
    p.add_argument("--class", dest="class_", help="whose evidence (name or index; default Parasitized, else class 0)")
    p.add_argument("--image", type=Path, nargs="+", help="pictures for the real examples (default: the demo cells)")
    p.add_argument("--data-dir", type=Path, help="or every picture of this data set (see --max-images)")
    p.add_argument("--max-images", type=_positive, help="with --data-dir: a seeded, class-balanced sample")
    p.add_argument("--examples", type=_positive, default=6, help="real patches per channel (default 6)")
    p.add_argument("--steps", type=_positive, default=96, help="optimisation steps of the maximisers (default 96)")
    p.add_argument("--seed", type=int, default=0, help="seed of the maximisers' random start (default 0)")
    _model_flags(p, dataset=True)
    _output_flags(p)

    p = command(
        "download",
        "fetch the original project's published checkpoints (or --weights-url) into --models-dir",
        "python where_to_look.py download",
    )
    p.add_argument("--weights-url", help="Drive folder or file, or an http(s) .pt or .zip (default: the published)")
    p.add_argument("--models-dir", type=Path, default=PROJECT / "models", help="where to install (default models/)")
    return top


def _command_first(argv: Sequence[str]) -> list[str]:
    """Move a command named after some flags to the front, as the one-parser CLI of old allowed."""
    argv = list(argv)
    for index, token in enumerate(argv):
        if token in COMMANDS:
            return [token, *argv[:index], *argv[index + 1 :]] if index else argv
        if token == "--":
            break
    return argv


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The flags; without a command, only the flags given (the prompts ask for the rest)."""
    parser = build_parser()
    args = parser.parse_args(_command_first(sys.argv[1:] if argv is None else argv))
    if getattr(args, "command", None) is None:
        args.command = None
    return args


def command_args(command: str, given: argparse.Namespace, **answers: object) -> argparse.Namespace:
    """The namespace of `command` with its defaults, the flags given without a command, and the prompts' answers."""
    args = build_parser().parse_args([command])
    for key, value in {**vars(given), **answers}.items():
        if key != "command" and value is not None:
            setattr(args, key, value)
    return args


# --------------------------------------------------------------------------- prompts


def download_source(given: argparse.Namespace) -> str:
    """Where a download would come from, in words: the published Drive folder or the host of the URL."""
    url = getattr(given, "weights_url", None) or os.environ.get("WTL_WEIGHTS_URL")
    if not url:
        return f"the {PUBLISHED}"
    host = urllib.parse.urlparse(url).hostname or url
    return f"{host} ({'--weights-url' if getattr(given, 'weights_url', None) else 'WTL_WEIGHTS_URL'})"


def ensure_models(given: argparse.Namespace, read: Callable[[str], str]) -> None:
    """The seed's first question: offer the download when no checkpoint is found at all."""
    from views import model_folders  # noqa: I001 - imports torch; the question comes after start-up anyway
    from weights import find_checkpoints

    models_dir = getattr(given, "models_dir", PROJECT / "models")
    if getattr(given, "model", None) or find_checkpoints(model_folders(models_dir)):
        return
    answer = ask(
        f"No trained models found. Download the pretrained models from {download_source(given)}?",
        "'download' or --model PATH",
        ["Y", "N"],
        read=read,
    )
    if answer == "N":
        from weights import CheckpointError

        raise CheckpointError("no models: train one with model_main.py, or pass --model PATH")
    from weights import download_weights

    download_weights(getattr(given, "weights_url", None), models_dir)


def _folder(answer: str) -> str | None:
    return None if Path(answer).expanduser().is_dir() else f"{answer}: no such folder, please try again."


def _file(answer: str) -> str | None:
    return None if Path(answer).expanduser().exists() else f"{answer}: no such file or folder, please try again."


def _gender_folder(answer: str) -> str | None:
    if not answer:
        return "No faces ship with the tool (CelebA's photos may not be passed on): type the data set's folder."
    return _folder(answer)


def complete_with_prompts(given: argparse.Namespace, read: Callable[[str], str] = input) -> argparse.Namespace:
    """Ask, in the seed's order, for the command and whatever it still needs; returns that command's flags."""
    ensure_models(given, read)
    answers: dict[str, object] = {}
    letter = ask(
        "Gender (A), Malaria (B), or other features (C: Gender100 / OverlayMaleFemale / what the network looks for)?",
        "a command: single, multi, gender100, overlay or features",
        ["A", "B", "C"],
        read=read,
    )
    if letter == "C":
        other = ask(
            "Gender100 (A), OverlayMaleFemale (B), or what the network looks for (C: features)?",
            "gender100, overlay or features",
            ["A", "B", "C"],
            read=read,
        )
        command = {"A": "gender100", "B": "overlay", "C": "features"}[other]
        if command == "gender100" and getattr(given, "data_dir", None) is None:
            question = "Path to the gender data set (the Dataset/ folder or its parent):"
            answers["data_dir"] = Path(ask(question, "--data-dir PATH", check=_gender_folder, read=read)).expanduser()
        if command == "overlay" and getattr(given, "image", None) is None:
            answers["image"] = [
                Path(
                    ask(f"Path of the saved {gender} Gender100 result ({name}):", "--image", check=_file, read=read)
                ).expanduser()
                for gender, name in (("male", "gender100_male.npz or .png"), ("female", "gender100_female.npz or .png"))
            ]
        return command_args(command, given, **answers)
    dataset = "gender" if letter == "A" else "malaria"
    answers["dataset"] = dataset
    own = ask("Your own picture (A) or the demo pictures (B)?", "--image PATH", ["A", "B"], read=read) == "A"
    if own and getattr(given, "image", None) is None:
        question = "Path of your picture (or a folder of pictures):"
        answers["image"] = [Path(ask(question, "--image PATH", check=_file, read=read)).expanduser()]
    command = "single"
    if dataset == "malaria":
        question = "Heatmap of the last conv layer only (A) or of every layer (B)?"
        if ask(question, "single or multi", ["A", "B"], read=read) == "B":
            command = "multi"
            if getattr(given, "loss", None) is None:
                question = "The model trained with last-layer loss (A) or with every-layer loss (B)?"
                loss = ask(question, "--loss {last,every}", ["A", "B"], read=read)
                answers["loss"] = "last" if loss == "A" else "every"
    if not own:
        answers.update(_demo_answers(given, dataset, read))
    return command_args(command, given, **answers)


def _demo_answers(given: argparse.Namespace, dataset: str, read: Callable[[str], str]) -> dict[str, object]:
    """Where the demo pictures come from: the bundled cells, or the test split of a data set."""
    data_dir = getattr(given, "data_dir", None)
    if dataset == "gender":
        if data_dir is None:
            question = "Path to the gender data set (the Dataset/ folder or its parent):"
            data_dir = Path(ask(question, "--data-dir PATH", check=_gender_folder, read=read)).expanduser()
        return {"demo_pictures": "manifest", "data_dir": data_dir}
    if data_dir is None:
        answer = ask(
            "Path to the malaria data set (press Enter for the bundled demo cells):",
            "--data-dir PATH",
            check=lambda a: None if not a else _folder(a),
            read=read,
        )
        if not answer:
            return {"demo_pictures": "bundled"}
        data_dir = Path(answer).expanduser()
    return {"demo_pictures": "manifest", "data_dir": data_dir}


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> list[Path]:
    """Carry out one command; returns the files it wrote."""
    module, function = COMMANDS[args.command]
    return getattr(importlib.import_module(module), function)(args)


def _is_user_error(error: BaseException) -> bool:
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & USER_ERRORS) or isinstance(error, (RuntimeError, OSError))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: prompts for what flags left open; one line and exit 2 on any bad input."""
    args = parse_args(argv)
    try:
        if args.command is None:
            args = complete_with_prompts(args)
        written = run(args)
        if getattr(args, "show", False) and written:
            import render

            if not render.show_files(written):
                print("no display found: the pictures are saved, not shown")
    except NoAnswer as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if not _is_user_error(error):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
