"""Train a Where-to-look model: answer the prompts, or pass every answer as a flag.

python model_main.py                                   # asks what to train
python model_main.py --dataset malaria --data-dir ~/cell_images --network last --epochs 10
torchrun --standalone --nproc_per_node=4 model_main.py --dataset malaria --data-dir ~/cell_images --network last
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from wtl import resources
from wtl.cli.prompts import ask
from wtl.data.registry import AUGMENTATIONS, DATASET_NAMES, PREPROCESS, SPLIT_BY
from wtl.errors import CheckpointError, NoAnswer, UsageError, WtlError
from wtl.nets.registry import BLOCK_DROPOUT, DROPOUT, NETWORKS, PRETRAINED_IMAGENET, ZOO
from wtl.runtime import DEVICE_CHOICES
from wtl.training.registry import SCHEDULES

if TYPE_CHECKING:
    from wtl.training.run import TrainConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Every prompt's answer and every training knob as a flag, grouped as the help shows them."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASET_NAMES, help="data set to train on (asked if missing)")
    data.add_argument("--data-dir", type=Path, help="the data set's folder (asked if missing)")
    data.add_argument("--max-per-class", type=int, default=None, help="use at most this many training images per class")
    data.add_argument(
        "--split-by",
        choices=SPLIT_BY,
        default="group",
        help="malaria and cell folders: split by patient (default; no leak) or by file (for a few patients; leaks)",
    )
    data.add_argument(
        "--identities", type=Path, help="CSV of file names and identities (people, patients) to check the split with"
    )
    data.add_argument(
        "--preprocess",
        choices=["auto", *PREPROCESS],
        default="auto",
        help="squash the picture to a square, or cut its centred square (auto: center-crop for faces, else squash)",
    )
    data.add_argument("--image-size", type=int, default=128, help="side of the square network input, divisible by 16")
    data.add_argument("--workers", type=int, default=2, help="processes that decode images into the cache (default 2)")

    model = p.add_argument_group("model")
    model.add_argument(
        "--network",
        choices=NETWORKS,
        metavar="{last,every,resnet18,...}",
        help="last: CAM of the last block only; every: of every block; or a torchvision network: " + ", ".join(ZOO),
    )
    model.add_argument(
        "--pretrained",
        metavar="imagenet|PATH",
        help="torchvision networks: start from torchvision's ImageNet weights (downloaded once) or a local weights "
        "file; the head starts new",
    )
    model.add_argument(
        "--freeze-backbone",
        type=int,
        default=0,
        metavar="N",
        help="torchvision networks: train only the head for the first N epochs (default 0)",
    )
    model.add_argument(
        "--loss", choices=["last", "every"], help="for --network every: loss on the last block or summed over all"
    )
    model.add_argument(
        "--blocks",
        type=int,
        choices=range(1, 7),
        default=4,
        metavar="N",
        help="conv blocks of the network (default 4, the original; each halves the resolution)",
    )
    model.add_argument("--kernel", type=int, choices=(3, 5, 7), default=5, help="conv kernel side (default 5)")
    model.add_argument("--width", type=int, default=32, help="block 1's channels, doubled by each block (default 32)")
    model.add_argument(
        "--dropout", type=float, default=DROPOUT, help=f"dropout before the classifier (default {DROPOUT})"
    )
    model.add_argument(
        "--block-dropout",
        type=float,
        default=BLOCK_DROPOUT,
        help=f"--network last: channel dropout after blocks 1-3 (default {BLOCK_DROPOUT})",
    )
    model.add_argument(
        "--models-dir", type=Path, default=resources.default_models_dir(), help="where checkpoints go (models/)"
    )
    model.add_argument(
        "--manifest-dir",
        type=Path,
        help="also write the test-split manifest here under the original name (default: only beside the checkpoint)",
    )
    model.add_argument("--restart", action="store_true", help="train from scratch, replacing an existing checkpoint")
    model.add_argument(
        "--summary",
        action="store_true",
        help="print the parameter summary of --network with --blocks/--kernel/--width and exit (no data, no training)",
    )

    optimisation = p.add_argument_group("optimisation")
    optimisation.add_argument("--epochs", type=int, default=10, help="epochs in total, resumes included (default 10)")
    optimisation.add_argument("--batch-size", type=int, default=16, help="images per step and process (default 16)")
    optimisation.add_argument(
        "--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3; the original project used 1e-4)"
    )
    optimisation.add_argument(
        "--schedule", choices=SCHEDULES, default="exponential", help="per-epoch LR decay (default exponential)"
    )
    optimisation.add_argument(
        "--gamma",
        type=float,
        default=0.85,
        help="exponential schedule: decay per epoch (default 0.85; the original project used 0.95)",
    )
    optimisation.add_argument(
        "--augment",
        choices=AUGMENTATIONS,
        default="auto",
        help="training augmentation (auto: flips and 90-degree turns for cells, horizontal flips for faces; "
        "faces: flips plus small crops, scales and colour jitter)",
    )
    optimisation.add_argument(
        "--no-augment", dest="augment", action="store_const", const="none", help="the same as --augment none"
    )
    optimisation.add_argument(
        "--ema", type=float, metavar="DECAY", help="keep a moving average of the weights (e.g. 0.999); judged and saved"
    )
    optimisation.add_argument(
        "--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing (default 0)"
    )
    optimisation.add_argument("--seed", type=int, default=0, help="seed for subsets, shuffling, augmentation and init")
    optimisation.add_argument(
        "--shuffle-labels",
        action="store_true",
        help="the data-randomisation test: train on the training labels permuted (seeded), saved as "
        "model_<data>_<run>_shuffled_labels.pt; compare its maps with evaluate --sanity-model",
    )

    runtime = p.add_argument_group("runtime")
    runtime.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="auto picks CUDA, then MPS, then CPU")
    runtime.add_argument(
        "--amp", action="store_true", help="mixed precision on CUDA: bf16 autocast (fp16 on older GPUs)"
    )
    runtime.add_argument("--channels-last", action="store_true", help="channels-last memory format (faster on GPUs)")
    runtime.add_argument("--compile", action="store_true", help="torch.compile the network (falls back if it fails)")
    args = p.parse_args(argv)
    if args.network in ZOO:
        if args.image_size < 32 or args.image_size % 32:
            p.error(f"--image-size must be a multiple of 32 for {args.network} (its last stage has stride 32)")
    elif args.image_size <= 0 or args.image_size % 16 or args.image_size % 2**args.blocks:
        p.error(f"--image-size must be a positive multiple of 16 (and of 2^{args.blocks} for {args.blocks} blocks)")
    if (args.pretrained or args.freeze_backbone) and args.network not in ZOO:
        p.error("--pretrained and --freeze-backbone are for torchvision networks (--network resnet18 ...)")
    if args.freeze_backbone < 0:
        p.error("--freeze-backbone must be 0 or more")
    if args.pretrained not in (None, PRETRAINED_IMAGENET) and not Path(args.pretrained).expanduser().is_file():
        p.error(f"--pretrained {args.pretrained}: no such file (or pass --pretrained {PRETRAINED_IMAGENET})")
    if args.width < 1:
        p.error("--width must be positive")
    for name in ("epochs", "batch_size", "max_per_class"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.ema is not None and not 0 < args.ema < 1:
        p.error("--ema must be between 0 and 1 (e.g. 0.999)")
    if not 0 <= args.label_smoothing < 1:
        p.error("--label-smoothing must be in [0, 1)")
    if not (0 <= args.dropout < 1 and 0 <= args.block_dropout < 1):
        p.error("--dropout and --block-dropout must be in [0, 1)")
    return args


def _data_folder(dataset: str) -> Callable[[str], str | None]:
    """The prompt's check: the answer must be a folder in the data set's layout (else the reason, and asked again)."""

    def check(answer: str) -> str | None:
        from wtl.data.checks import data_set_problem

        if not answer:
            return "Please type the data set's folder."
        problem = data_set_problem(dataset, answer)
        return None if problem is None else f"{problem}; please try again."

    return check


def complete_with_prompts(args: argparse.Namespace, read: Callable[[str], str] = input) -> argparse.Namespace:
    """Ask, in the seed's order, for every answer that no flag gave (answers come from `read`)."""
    if args.dataset is None:
        letter = ask(
            "Train on the Gender (G) or the Malaria (M) data set, or on any folder of class sub-folders (F)?",
            "--dataset {gender,malaria,folder}",
            choices=["G", "M", "F"],
            read=read,
        )
        args.dataset = {"G": "gender", "M": "malaria", "F": "folder"}[letter]
    if args.data_dir is None:
        where = {
            "malaria": "the malaria data set (the folder holding Parasitized/ and Uninfected/, or its parent)",
            "gender": "the gender data set (the Dataset/ folder with Train/, Validation/, Test/, or its parent)",
            "folder": "the folder of class sub-folders",
        }[args.dataset]
        answer = ask(f"Path to {where}:", "--data-dir PATH", check=_data_folder(args.dataset), read=read)
        args.data_dir = Path(answer).expanduser()
    if args.network is None:
        if args.dataset == "malaria":
            letter = ask(
                "Heatmaps of the last conv block only (L) or of every block (E)?",
                "--network {last,every}",
                ["L", "E"],
                read=read,
            )
            args.network = "last" if letter == "L" else "every"
        else:
            args.network = "last"
    if args.network == "every" and args.loss is None:
        question = "Loss on the last block only (L) or summed over every block (E)?"
        letter = ask(question, "--loss {last,every}", ["L", "E"], read=read)
        args.loss = "last" if letter == "L" else "every"
    if args.network != "every":
        args.loss = "last"
    return args


def config_of(args: argparse.Namespace) -> TrainConfig:
    """The run's TrainConfig from the parsed flags and the prompts' answers (the Namespace stops here)."""
    from wtl.training.run import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{name: value for name, value in vars(args).items() if name in fields})


def confirm_restart(config: TrainConfig, read: Callable[[str], str] = input) -> TrainConfig:
    """Ask before replacing a checkpoint that holds weights but no training state (bundled, downloaded)."""
    from wtl.training.run import needs_restart_question

    if not needs_restart_question(config):
        return config  # nothing in the way, or a run of ours that can be resumed: resume it
    answer = ask(
        f"{config.checkpoint} holds weights without training state (bundled or downloaded), so it cannot be "
        "resumed. Train a new model and replace it?",
        "--restart (or another --models-dir)",
        ["Y", "N"],
        read=read,
    )
    if answer == "N":
        raise CheckpointError(f"{config.checkpoint}: kept; pass another --models-dir to train a model beside it")
    return dataclasses.replace(config, restart=True)


def _no_terminal(prompt: str) -> str:
    raise EOFError  # ask() turns this into NoAnswer, which names the flag to pass


def write_history(config: TrainConfig, history: list[dict]) -> None:
    """<name>.history.png beside the checkpoint: loss and accuracy of every epoch, those before a resume included."""
    from wtl import names
    from wtl.plot.history import save_history

    epochs = [int(row["epoch"]) for row in history]
    title = f"{names.checkpoint_name(config.checkpoint)}: epochs {min(epochs)}-{max(epochs)}"
    path = save_history(history, names.history_file(config.checkpoint), title)
    print(f"history: {path}")


def print_summary(args: argparse.Namespace) -> None:
    """The parameter summary of the network the flags describe: nothing is read, asked or trained."""
    from wtl.nets.seed import Architecture, build_network
    from wtl.nets.summary import format_summary, summary

    classes = 2  # malaria and gender; a folder's own number of classes only changes the classifier's row
    network = build_network(
        args.network or "last", classes, architecture=Architecture(args.blocks, args.kernel, args.width)
    )
    title = (
        f"--network {args.network or 'last'}, {args.blocks} blocks, {args.kernel} x {args.kernel} kernels, "
        f"width {args.width}, {args.image_size} px input, {classes} classes"
    )
    print(format_summary(summary(network, args.image_size), title))


def main(argv: list[str] | None = None) -> int:
    """Entry point: prompts for what flags left open, trains; one line and exit 2 on bad input."""
    from wtl.training.distributed import cleanup, env_rank, launched_by_torchrun, setup

    args = parse_args(argv)
    if args.summary:
        print_summary(args)
        return 0
    torchrun, main_rank = launched_by_torchrun(), env_rank() == 0
    try:
        # torchrun's processes cannot share one terminal's answers: there, every answer is a flag.
        read = _no_terminal if torchrun else input
        config = confirm_restart(config_of(complete_with_prompts(args, read=read)), read=read)
        try:
            config.models_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageError(
                f"{config.models_dir}: cannot write checkpoints there ({error.strerror or error})"
            ) from None
        from wtl.training.run import train

        report = train(config, setup(config.device))
        if report is not None and report.get("history"):
            write_history(config, report["history"])
    except NoAnswer as error:
        if main_rank:
            text = f"torchrun runs several processes, which cannot answer prompts: pass {error.flag}"
            print(f"error: {text if torchrun else error}", file=sys.stderr)
        return 2
    except WtlError as error:
        # Bad data or checkpoints are the same on every rank: rank 0 alone reports them.
        if main_rank:
            print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if main_rank:
            print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        cleanup()
    return 0
