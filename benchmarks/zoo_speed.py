"""What a training step of a torchvision network costs against the seed Network's, on the same batch.

    python benchmarks/zoo_speed.py                              # resnet18 against the seed Network, 16 x 128 px
    python benchmarks/zoo_speed.py --networks resnet18 densenet121 efficientnet_b0 --repeats 7
    python benchmarks/zoo_speed.py --threads 1 --images 4004    # one thread; an epoch of 4,004 training cells

One training step is what model_main.py's trainer does per batch: forward, cross-entropy,
backward, Adam step, in train mode. After warm-up, each repeat times one step of every network
in turn (so all see the same machine load); the medians are printed with the CPU time of the
process (which a machine shared with other jobs inflates less than the wall time), the ratio to
the seed Network's step (the floor: the network the project trains by default), and the time an
epoch of --images images would take at that rate (the loader's cost left out: the cache makes it small).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wtl.nets import zoo  # noqa: E402
from wtl.nets.registry import ZOO  # noqa: E402
from wtl.nets.seed import Network  # noqa: E402


def step_timer(network: nn.Module, images: torch.Tensor, labels: torch.Tensor):
    """A function that runs one training step and returns its (wall, CPU) seconds."""
    optimiser = torch.optim.Adam(network.parameters(), lr=1e-3)
    loss_function = nn.CrossEntropyLoss()
    network.train()

    def step() -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        optimiser.zero_grad(set_to_none=True)
        loss_function(network(images), labels).backward()
        optimiser.step()
        return time.perf_counter() - wall, time.process_time() - cpu

    return step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--networks", nargs="+", choices=ZOO, default=["resnet18"], help="torchvision networks to time")
    p.add_argument("--batch", type=int, default=16, help="images per step (model_main.py's default 16)")
    p.add_argument("--size", type=int, default=128, help="image side in px (default 128)")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per network (median; default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    p.add_argument(
        "--images", type=int, default=4004, help="training images per epoch (default 4,004: the shared cells)"
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.rand(args.batch, 3, args.size, args.size)
    labels = torch.randint(0, 2, (args.batch,))
    networks: dict[str, nn.Module] = {"seed Network": Network(2)}
    networks.update({name: zoo.build(name, 2) for name in args.networks})
    steps = {name: step_timer(network, images, labels) for name, network in networks.items()}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            times[name].append(step())
    print(
        f"one training step (forward, backward, Adam) of {args.batch} images at {args.size} px, "
        f"{torch.get_num_threads()} thread(s), median of {args.repeats}:"
    )
    print(f"{'network':<20}{'params':>10}{'wall s':>9}{'CPU s':>8}{'img/s':>8}{'x seed':>8}{'epoch min':>11}")
    floor = statistics.median(wall for wall, _ in times["seed Network"])
    floor_cpu = statistics.median(cpu for _, cpu in times["seed Network"])
    for name, measured in times.items():
        wall = statistics.median(w for w, _ in measured)
        cpu = statistics.median(c for _, c in measured)
        params = sum(p.numel() for p in networks[name].parameters()) / 1e6
        epoch = wall * args.images / args.batch / 60
        print(
            f"{name:<20}{params:>9.2f}M{wall:>9.3f}{cpu:>8.3f}{args.batch / wall:>8.1f}"
            f"{wall / floor:>8.2f}{epoch:>11.1f}   (CPU x seed {cpu / floor_cpu:.2f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
