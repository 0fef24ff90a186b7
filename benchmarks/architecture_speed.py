"""Training time per epoch of smaller networks against the original 4-block one, measured alike in one run.

    python benchmarks/architecture_speed.py                         # --blocks 3 against the original
    python benchmarks/architecture_speed.py --blocks 2 3 --kernel 3 --steps 30

Each network trains with model_main's recipe (Adam 1e-3, cross-entropy, dihedral augmentation,
batch 16, 128 px) on the same ready-made batch; the architectures take turns step by step (so a
busy machine slows them alike), and the median step counts. Time per epoch is the median step
times the steps of one epoch of --train-images (4,004: the shared cells' training split) at that
batch size. The ratio is each network's step time over the original's, the floor measured in the
same run; it is what to quote, because the absolute times depend on whatever else the machine runs.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wtl.data import augment  # noqa: E402
from wtl.nets.seed import ORIGINAL, Architecture, build_network  # noqa: E402
from wtl.training.trainer import Trainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, nargs="+", default=[3], help="depths to compare with the original 4")
    parser.add_argument("--kernel", type=int, default=5)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--network", choices=["last", "every"], default="last")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per network (after 5 warm-up steps)")
    parser.add_argument("--train-images", type=int, default=4004, help="images per epoch for the estimate")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.rand(args.batch_size, 3, args.image_size, args.image_size)
    labels = torch.randint(0, 2, (args.batch_size,))
    shapes = {"original (4 blocks)": ORIGINAL}
    shapes.update({f"{b} blocks": Architecture(b, args.kernel, args.width) for b in args.blocks})
    trainers = {}
    for name, shape in shapes.items():
        network = build_network(args.network, 2, architecture=shape)
        trainer = Trainer(network, torch.nn.CrossEntropyLoss(), lr=1e-3, augment=augment.dihedral, show_progress=False)
        trainer.network.train()
        trainers[name] = trainer
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for step in range(args.steps + 5):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            assert trainer.augment is not None
            trainer.train_step(trainer.augment(images), labels)
            if step >= 5:
                times[name].append(time.perf_counter() - start)
    steps_per_epoch = math.ceil(args.train_images / args.batch_size)
    floor = statistics.median(times["original (4 blocks)"])
    print(
        f"{args.network} network, batch {args.batch_size}, {args.image_size} px, {args.threads} threads, "
        f"{args.steps} steps each, taking turns; epoch = {steps_per_epoch} steps ({args.train_images} images)"
    )
    print(f"{'network':<22}{'parameters':>12}{'s/step':>9}{'s/epoch':>10}{'ratio':>8}")
    for name, trainer in trainers.items():
        step_time = statistics.median(times[name])
        parameters = sum(p.numel() for p in trainer.network.parameters())
        print(
            f"{name:<22}{parameters:>12,}{step_time:>9.3f}{step_time * steps_per_epoch:>10.0f}{step_time / floor:>8.2f}"
        )


if __name__ == "__main__":
    main()
