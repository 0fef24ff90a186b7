"""What activation maximisation costs on top of the forward/backward passes it cannot avoid.

    python benchmarks/feature_speed.py                                   # bundled last-block model, block 3, K = 8
    python benchmarks/feature_speed.py --block 4 --channels 8 --steps 96 --repeats 3
    python benchmarks/feature_speed.py --model models/bundled/model_malaria_every_multi_loss.pt --device cuda

One run times, after one short warm-up, with the median of --repeats (candidate and floor
alternate within each repeat, so both see the same machine load):

- features.maximize_channels for K channels of one block at the model's input size, --steps Adam
  steps (the Fourier image, its colour matrix and sigmoid, a random affine transform per image,
  blocks 1..block forward and backward, the final activations)
- against the floor: a bare loop of the same number of forward/backward steps of the same batch
  (K images) through the same blocks, on a plain pixel tensor with a plain gradient step.
  Target: ratio <= 1.25, and block 3 with K = 8 at the default steps in under a minute.

Both run in channels_last with the parameters' requires_grad off (what wtl.features does); wall
seconds and the process's CPU seconds are printed, since a busy machine inflates only the first.
Thread count: torch's default (torch.set_num_threads is left as is). On a busy machine also run it
with OMP_NUM_THREADS=1: there two threads that wait for each other time the load, not the code.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wtl.checkpoints.loading import load_model  # noqa: E402
from wtl.features import maximise  # noqa: E402
from wtl.features import stages as feature_stages  # noqa: E402
from wtl.nets.seed import Network, NetworkMultiLoss  # noqa: E402
from wtl.runtime import pick_device  # noqa: E402

BUNDLED = Path(__file__).resolve().parents[1] / "models" / "bundled" / "model_malaria_last.pt"
RATIO_TARGET = 1.25
SECONDS_TARGET = 60.0


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def floor_loop(
    network: Network | NetworkMultiLoss, block: int, channels: torch.Tensor, steps: int, size: int, device: torch.device
) -> Callable[[], object]:
    """The bare loop: steps x (forward through blocks 1..block, backward to the pixels, x += lr * g)."""
    stages = feature_stages.block_stages(network)[:block]
    rows = torch.arange(len(channels), device=device)
    picked = channels.to(device)

    def run() -> object:
        pixels = torch.rand((len(channels), 3, size, size), device=device).contiguous(memory_format=torch.channels_last)
        pixels.requires_grad_(True)
        with feature_stages.frozen(network):
            for _ in range(steps):
                x = pixels
                for index, stage in enumerate(stages):
                    x = stage(x)
                    if index < block - 1:
                        x = F.relu(x)
                score = x[rows, picked].mean(dim=(1, 2)).sum()
                (gradient,) = torch.autograd.grad(score, pixels)
                with torch.no_grad():
                    pixels += 0.01 * gradient
        return pixels

    return run


def main(argv: Sequence[str] | None = None) -> int:
    """Time the maximisation against its floor and print both."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=BUNDLED, help="checkpoint (default: the bundled last-block one)")
    parser.add_argument("--block", type=int, default=3)
    parser.add_argument("--channels", type=int, default=8, help="K, the batch of images (default 8)")
    parser.add_argument("--steps", type=int, default=maximise.DEFAULT_STEPS)
    parser.add_argument("--size", type=int, default=0, help="pixels (default: the model's input size)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    if args.model.is_file():
        loaded = load_model(args.model, device)
        network, size, name = loaded.network, args.size or loaded.image_size, loaded.path.name
    else:
        torch.manual_seed(0)
        network, size, name = Network().to(device).eval(), args.size or 128, "random Network"
    if not isinstance(network, (Network, NetworkMultiLoss)):
        raise SystemExit(f"{name} is not a Network or NetworkMultiLoss")
    channels = torch.arange(args.channels)
    print(
        f"device {device}, {torch.get_num_threads()} threads, model {name}, block {args.block}, "
        f"K = {args.channels} at {size} px, {args.steps} steps, median of {args.repeats}",
        flush=True,
    )

    def candidate() -> object:
        return maximise.maximize_channels(network, args.block, channels, steps=args.steps, size=size)

    floor = floor_loop(network, args.block, channels, args.steps, size, device)
    # Warm-up: a few steps of each (allocator, oneDNN kernels).
    maximise.maximize_channels(network, args.block, channels, steps=2, size=size)
    floor_loop(network, args.block, channels, 2, size, device)()
    times: dict[str, list[tuple[float, float]]] = {"candidate": [], "floor": []}
    ratios = []
    for repeat in range(args.repeats):
        order = [("candidate", candidate), ("floor", floor)]
        if repeat % 2:
            order.reverse()
        taken = {}
        for label, function in order:
            taken[label] = timed(function, device)
            times[label].append(taken[label])
        ratios.append(taken["candidate"][0] / taken["floor"][0])
    wall = statistics.median(t[0] for t in times["candidate"])
    cpu = statistics.median(t[1] for t in times["candidate"])
    floor_wall = statistics.median(t[0] for t in times["floor"])
    floor_cpu = statistics.median(t[1] for t in times["floor"])
    ratio = statistics.median(ratios)
    print(
        f"{'features.maximize_channels':<28} {wall:8.2f} s wall {cpu:8.2f} s CPU   "
        f"({1000 * wall / max(args.steps, 1):.0f} ms/step)",
        flush=True,
    )
    print(
        f"{'bare forward/backward loop':<28} {floor_wall:8.2f} s wall {floor_cpu:8.2f} s CPU   "
        f"({1000 * floor_wall / max(args.steps, 1):.0f} ms/step)",
        flush=True,
    )
    print(
        f"ratio {ratio:5.3f} (target <= {RATIO_TARGET:.2f}) {'ok' if ratio <= RATIO_TARGET else 'OVER TARGET'}; "
        f"{wall:.1f} s (target < {SECONDS_TARGET:.0f} s) {'ok' if wall < SECONDS_TARGET else 'OVER TARGET'}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
