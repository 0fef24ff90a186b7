"""Train a Where-to-look model: answer the prompts, or pass every answer as a flag.

python model_main.py                                   # asks what to train
python model_main.py --dataset malaria --data-dir ~/cell_images --network last --epochs 10
torchrun --standalone --nproc_per_node=4 model_main.py --dataset malaria --data-dir ~/cell_images --network last
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import augment as augmentations
from distributed import DistInfo, cleanup, env_rank, eval_shard, launched_by_torchrun, log_shard, setup, train_sampler
from model_data import (
    DATASETS,
    DEFAULT_PREPROCESS,
    PREPROCESS,
    SPLIT_BY,
    DatasetCache,
    DatasetError,
    ImageError,
    TrainingSplits,
    find_identity_manifest,
    identities_by_split,
    read_identities,
    shared_identities,
    training_splits,
    write_test_manifest,
)
from model_network import BLOCK_DROPOUT, DROPOUT, build_network
from model_trainer import SCHEDULES, CheckpointTrainer, classification_report, format_report, pick_amp_dtype
from prompts import NoAnswer, ask
from runtime import DEVICE_CHOICES, pick_device, seed_everything
from weights import CheckpointError, load_checkpoint

PROJECT = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Every prompt's answer and every training knob as a flag, grouped as the help shows them."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument(
        "--dataset", choices=["gender", "malaria", "folder"], help="data set to train on (asked if missing)"
    )
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
    model.add_argument("--network", choices=["last", "every"], help="CAM of the last block only, or of every block")
    model.add_argument(
        "--loss", choices=["last", "every"], help="for --network every: loss on the last block or summed over all"
    )
    model.add_argument(
        "--dropout", type=float, default=DROPOUT, help=f"dropout before the classifier (default {DROPOUT})"
    )
    model.add_argument(
        "--block-dropout",
        type=float,
        default=BLOCK_DROPOUT,
        help=f"--network last: channel dropout after blocks 1-3 (default {BLOCK_DROPOUT})",
    )
    model.add_argument("--models-dir", type=Path, default=PROJECT / "models", help="where checkpoints go (models/)")
    model.add_argument(
        "--manifest-dir",
        type=Path,
        help="also write the test-split manifest here under the original name (default: only beside the checkpoint)",
    )
    model.add_argument("--restart", action="store_true", help="train from scratch, replacing an existing checkpoint")

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
        choices=augmentations.CHOICES,
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

    runtime = p.add_argument_group("runtime")
    runtime.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="auto picks CUDA, then MPS, then CPU")
    runtime.add_argument(
        "--amp", action="store_true", help="mixed precision on CUDA: bf16 autocast (fp16 on older GPUs)"
    )
    runtime.add_argument("--channels-last", action="store_true", help="channels-last memory format (faster on GPUs)")
    runtime.add_argument("--compile", action="store_true", help="torch.compile the network (falls back if it fails)")
    args = p.parse_args(argv)
    if args.image_size <= 0 or args.image_size % 16:
        p.error("--image-size must be a positive multiple of 16")
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


def _existing_folder(answer: str) -> str | None:
    return None if Path(answer).expanduser().is_dir() else f"{answer}: no such folder, please try again."


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
        answer = ask(f"Path to {where}:", "--data-dir PATH", check=_existing_folder, read=read)
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
    if args.network == "last":
        args.loss = "last"
    return args


def data_name(args: argparse.Namespace) -> str:
    """The data-set part of file names: gender, malaria, or the folder's own name."""
    if args.dataset != "folder":
        return args.dataset
    return re.sub(r"[^A-Za-z0-9]+", "_", Path(args.data_dir).resolve().name).strip("_").lower() or "folder"


def run_name(args: argparse.Namespace) -> str:
    """The seed's naming: last, every_single_loss or every_multi_loss."""
    if args.network == "last":
        return "last"
    return "every_multi_loss" if args.loss == "every" else "every_single_loss"


def manifest_name(args: argparse.Namespace) -> str:
    """The seed's manifest names: *_testing_filenames_{last,every,every_every}.json."""
    suffix = {"last": "last", "every_single_loss": "every", "every_multi_loss": "every_every"}[run_name(args)]
    return f"{data_name(args)}_testing_filenames_{suffix}.json"


def checkpoint_path(args: argparse.Namespace) -> Path:
    """The seed's checkpoint names: model_malaria_last.pt, model_malaria_every_multi_loss.pt..."""
    return args.models_dir / f"model_{data_name(args)}_{run_name(args)}.pt"


def test_manifest_path(checkpoint: Path) -> Path:
    """Where a model's test-split file names go: beside its checkpoint, never into the repository's data/."""
    return checkpoint.with_name(checkpoint.name.removesuffix(".pt") + ".test_files.json")


def identity_check(args: argparse.Namespace, splits: TrainingSplits) -> str:
    """One line saying whether any person (faces) or patient (cells) sits in two splits."""
    noun = "patients" if args.dataset in ("malaria", "folder") else "people"
    source = args.identities or find_identity_manifest(args.data_dir)
    known = read_identities(source) if source else None
    by_split = identities_by_split(
        {"train": splits.train, "val": splits.val, "test": splits.test}, DATASETS[args.dataset].group, known
    )
    if not any(by_split.values()):
        return (
            f"{noun}: unknown (the file names carry no identity); pass --identities CSV to check that "
            f"no one is in two splits"
        )
    counts = ", ".join(f"{len(ids)} in {split}" for split, ids in by_split.items())
    where = f" (identities from {source})" if source else " (identities from the file names)"
    shared = shared_identities(by_split)
    if not shared:
        return f"{noun}: {counts}; none in two splits{where}"
    example = ", ".join(f"{i} in {'+'.join(s)}" for i, s in list(shared.items())[:3])
    return (
        f"warning: {len(shared)} {noun} sit in two splits (e.g. {example}){where}: validation and test "
        f"accuracy overstate the accuracy on new {noun}"
    )


def confirm_restart(args: argparse.Namespace, read: Callable[[str], str] = input) -> None:
    """Ask before replacing a checkpoint that holds weights but no training state (bundled, downloaded)."""
    path = checkpoint_path(args)
    if args.restart or not path.is_file():
        return
    content = load_checkpoint(path)
    if "optim_state_dict" in content:
        return  # a run of ours that can be resumed: resume it
    answer = ask(
        f"{path} holds weights without training state (bundled or downloaded), so it cannot be resumed. "
        "Train a new model and replace it?",
        "--restart (or another --models-dir)",
        ["Y", "N"],
        read=read,
    )
    if answer == "N":
        raise CheckpointError(f"{path}: kept; pass another --models-dir to train a model beside it")
    args.restart = True


def loss_function(args: argparse.Namespace) -> torch.nn.Module:
    """Cross-entropy, with --label-smoothing eps: (1 - eps) * CE + eps * mean over classes of -log p."""
    return torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)


def train(args: argparse.Namespace, dist: DistInfo | None = None) -> dict | None:
    """Train (or resume) one model as the arguments say; returns the test report (None on ranks but 0).

    `dist` comes from distributed.setup(); without it this is a plain single-process run.
    """
    dist = dist or DistInfo(device=pick_device(args.device))
    device, main = dist.device, dist.is_main
    seed_everything(args.seed)
    preprocess = DEFAULT_PREPROCESS[args.dataset] if args.preprocess == "auto" else args.preprocess
    splits = training_splits(
        args.dataset, args.data_dir, args.max_per_class, args.seed, args.image_size, preprocess, args.split_by
    )
    class_names = splits.train.class_names
    checkpoint = checkpoint_path(args)
    if main:
        for note in splits.notes:
            print(note, file=sys.stderr)
        manifest = None
        if splits.test.samples:
            manifest = write_test_manifest(splits.test, test_manifest_path(checkpoint))
            if args.manifest_dir is not None:
                write_test_manifest(splits.test, args.manifest_dir / manifest_name(args))
        processes = f" x {dist.world_size} processes (torchrun)" if dist.enabled else ""
        print(
            f"{args.dataset}: {len(splits.train)} training, {len(splits.val)} validation, {len(splits.test)} test "
            f"images; classes {', '.join(class_names)}; {preprocess} to {args.image_size} px; device {device}"
            f"{processes}" + (f"; test files listed in {manifest}" if manifest else ""),
            file=sys.stderr,
        )
        print(identity_check(args, splits), file=sys.stderr)
    amp_dtype = pick_amp_dtype(device) if args.amp else None
    if args.amp and main:
        if amp_dtype is None:
            note = f"note: --amp has no effect on {device.type} (mixed precision is for CUDA GPUs); training in float32"
            print(note, file=sys.stderr)
        else:
            print(f"mixed precision: {str(amp_dtype).removeprefix('torch.')} autocast", file=sys.stderr)
    # On the CPU, inductor's C++ build of this network took 14 minutes on a 2-core machine:
    # a CPU run does not earn that back.
    compile_model = args.compile and device.type == "cuda"
    if args.compile and not compile_model and main:
        note = f"note: --compile is for CUDA GPUs (compiling for {device.type} takes minutes); training uncompiled"
        print(note, file=sys.stderr)

    # Under torchrun every rank decodes the whole train and val split (N times the work
    # and memory on one machine): a rank's shard changes every epoch, and a full cache
    # on every rank keeps that simple and the ranks identical.
    train_cache = DatasetCache(splits.train).fill(args.workers, "decoding train", progress=main)
    sampler = train_sampler(train_cache, dist, args.seed) if dist.enabled else None
    if sampler is None:
        loader_train = DataLoader(train_cache, batch_size=args.batch_size, shuffle=True)
    else:
        loader_train = DataLoader(train_cache, batch_size=args.batch_size, sampler=sampler)
    loader_val = None
    if splits.val.samples:
        val_cache = DatasetCache(splits.val).fill(args.workers, "decoding val", progress=main)
        loader_val = DataLoader(eval_shard(val_cache, dist), batch_size=256)
    log_shard(sampler, dist, len(train_cache))

    network = build_network(args.network, len(class_names), args.dropout, args.block_dropout)
    metadata = {
        "class_names": class_names,
        "image_size": args.image_size,
        "preprocess": preprocess,
        "network": args.network,
        "loss": args.loss,
        "dataset": args.dataset,
        "seed": args.seed,
        "schedule": args.schedule,
        "ema": args.ema,
    }
    trainer = CheckpointTrainer(
        network,
        loss_function(args),
        checkpoint,
        args.epochs,
        every_layer_loss=args.loss == "every",
        metadata=metadata,
        seed=args.seed,
        resume=not args.restart,
        lr=args.lr,
        gamma=args.gamma,
        schedule=args.schedule,
        ema_decay=args.ema,
        device=device,
        augment=augmentations.for_dataset(args.augment, args.dataset),
        dist=dist,
        amp_dtype=amp_dtype,
        channels_last=args.channels_last,
        compile_model=compile_model,
    )
    try:
        history = trainer.train(loader_train, loader_val)
    except KeyboardInterrupt:
        if main:
            print(
                f"\ninterrupted: {checkpoint} holds epoch {trainer.ep} of {args.epochs}; "
                "run the same command again to resume",
                file=sys.stderr,
            )
        raise SystemExit(130) from None
    if not main:
        return None  # rank 0 alone judges the test split and writes the metrics

    report: dict = {"test": None}
    if splits.test.samples:
        # The test split is judged with the best-validation weights, as they are the ones to use.
        best = load_checkpoint(trainer.best_path)
        trainer.network.load_state_dict(best["net_state_dict"])
        loader_test = DataLoader(DatasetCache(splits.test).fill(args.workers, "decoding test"), batch_size=256)
        report = classification_report(*trainer.predict(loader_test), class_names)
        report["best_epoch"] = best.get("epoch")
        print(format_report(report))
    report.update(checkpoint=str(checkpoint), best_checkpoint=str(trainer.best_path), notes=splits.notes)
    report["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report["settings"]["preprocess"] = preprocess
    if dist.enabled:
        report["settings"]["processes"] = dist.world_size
    report["history"] = trainer.history  # every epoch, also those before a resume
    metrics_path = checkpoint.with_suffix(".metrics.json")
    if history or not metrics_path.exists():
        # A rerun of a finished run trains nothing: keep the metrics of the run that did.
        metrics_path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"checkpoint: {checkpoint}\nbest weights: {trainer.best_path}\nmetrics: {metrics_path}")
    return report


def _no_terminal(prompt: str) -> str:
    raise EOFError  # ask() turns this into NoAnswer, which names the flag to pass


def main(argv: list[str] | None = None) -> int:
    """Entry point: prompts for what flags left open, trains, prints one line on any error."""
    args = parse_args(argv)
    torchrun, main_rank = launched_by_torchrun(), env_rank() == 0
    try:
        # torchrun's processes cannot share one terminal's answers: there, every answer is a flag.
        read = _no_terminal if torchrun else input
        args = complete_with_prompts(args, read=read)
        confirm_restart(args, read=read)
        args.models_dir.mkdir(parents=True, exist_ok=True)
        train(args, setup(args.device))
    except NoAnswer as error:
        if main_rank:
            text = f"torchrun runs several processes, which cannot answer prompts: pass {error.flag}"
            print(f"error: {text if torchrun else error}", file=sys.stderr)
        return 2
    except (DatasetError, ImageError, CheckpointError, RuntimeError, OSError) as error:
        # Data and checkpoint problems are the same on every rank: rank 0 reports them.
        if main_rank or not isinstance(error, (DatasetError, ImageError, CheckpointError)):
            print(f"error: {error}" if main_rank else f"error (rank {env_rank()}): {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if main_rank:
            print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
