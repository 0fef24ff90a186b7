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
python where_to_look.py ood --model models/bundled/model_malaria_last.pt --image face.jpg
python where_to_look.py download [--weights-url URL]
python where_to_look.py scale --model runs/model_malaria_last.best.pt --data-dir ~/cell_images

`python where_to_look.py COMMAND --help` lists that command's own flags.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

# Only the standard library and torch-free modules up here: `--help` and a mistyped flag answer
# at once, and each command imports what it needs (torch, matplotlib...) when it runs.
from wtl.cli import compare, demo, download, evaluate, features, gender100, multi, ood, scale, single
from wtl.cli.common import DEVICE_CHOICES, positive
from wtl.errors import WtlError
from wtl.maps.registry import METHODS, SCALES


@dataclass(frozen=True)
class Command:
    """One sub-command: its flags, what carries it out, and its one-line summary and example."""

    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], list[Path]]
    summary: str
    example: str


COMMANDS: dict[str, Command] = {
    "single": Command(single.add_arguments, single.run, single.SUMMARY, single.EXAMPLE),
    "multi": Command(multi.add_arguments, multi.run, multi.SUMMARY, multi.EXAMPLE),
    "gender100": Command(gender100.add_arguments, gender100.run, gender100.SUMMARY, gender100.EXAMPLE),
    "overlay": Command(
        gender100.add_overlay_arguments, gender100.run_overlay, gender100.OVERLAY_SUMMARY, gender100.OVERLAY_EXAMPLE
    ),
    "demo": Command(demo.add_arguments, demo.run, demo.SUMMARY, demo.EXAMPLE),
    "evaluate": Command(evaluate.add_arguments, evaluate.run, evaluate.SUMMARY, evaluate.EXAMPLE),
    "compare": Command(compare.add_arguments, compare.run, compare.SUMMARY, compare.EXAMPLE),
    "features": Command(features.add_arguments, features.run, features.SUMMARY, features.EXAMPLE),
    "ood": Command(ood.add_arguments, ood.run, ood.SUMMARY, ood.EXAMPLE),
    "download": Command(download.add_arguments, download.run, download.SUMMARY, download.EXAMPLE),
    "scale": Command(scale.add_arguments, scale.run, scale.SUMMARY, scale.EXAMPLE),
}


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
    top.add_argument("--method", choices=list(METHODS), help="heatmap method (default cam)")
    top.add_argument("--count", type=positive, help="Gender100: faces per gender")
    top.add_argument("--seed", type=int, help="seed for the random picks of test images")
    top.add_argument("--out", type=Path, help="folder for the PNGs (default outputs/)")
    top.add_argument("--save-npz", action="store_true", help="also write the numbers beside each PNG")
    top.add_argument("--show", action="store_true", help="also open windows (where a display exists)")
    top.add_argument("--device", choices=DEVICE_CHOICES, help="auto picks CUDA, then MPS, then CPU")
    top.add_argument("--scale", choices=list(SCALES), help="colour scale: one per model (default) or per image")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, command in COMMANDS.items():
        parser = sub.add_parser(
            name,
            help=command.summary,
            description=command.summary,
            epilog=f"example:\n  {command.example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(parser)
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
    args = build_parser().parse_args(_command_first(sys.argv[1:] if argv is None else argv))
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


def run(args: argparse.Namespace) -> list[Path]:
    """Carry out one command; returns the files it wrote."""
    return COMMANDS[args.command].run(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: prompts for what flags left open; one line and exit 2 on bad input, a traceback on a bug."""
    args = parse_args(argv)
    try:
        if args.command is None:
            from wtl.cli.asking import complete_with_prompts

            args = complete_with_prompts(args, command_args)
        written = run(args)
        if getattr(args, "show", False) and written:
            from wtl.plot.maps import show_files

            if not show_files(written):
                print("no display found: the pictures are saved, not shown")
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except WtlError as error:
        # Bad input (a missing file, a wrong flag, a checkpoint of the wrong kind): one line, no traceback.
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception:
        # Anything else is a bug or the machine (out of memory...): the whole traceback, and exit 1.
        traceback.print_exc()
        return 1
    return 0
