"""Training throughput: the real data pipeline against a bare loop over ready-made tensors.

    python benchmarks/train_throughput.py                      # ~512 synthetic 128-px cells in a temp folder
    python benchmarks/train_throughput.py --data-dir ~/cell_images --steps 20
    python benchmarks/train_throughput.py --processes 1 2   # model_main's pipeline in 1 and 2 processes

The real pipeline is what model_main.py runs: MalariaSet -> DatasetCache.fill ->
DataLoader(shuffle) -> Trainer.epoch with dihedral augmentation. The cache is
filled (and both loops warmed up) before the clock starts, so the comparison shows
what the pipeline costs per step on top of the network itself. The bare loop is the
same network, loss and Adam settings over pre-made float batches, nothing else.
Both run in this one process, step by step alternately, and the median step counts.
A ratio of at least 0.9 means the pipeline keeps the network busy.

With --processes, it measures instead how the real pipeline scales: for each count N
it starts N processes (torchrun, DistributedDataParallel, a DistributedSampler shard
each; N=1 is a plain process, as `python model_main.py` runs) and prints the images/s
of all of them together. On a CUDA GPU every count is also timed with --amp,
--channels-last and both.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wtl.data.cache import DatasetCache  # noqa: E402
from wtl.data.datasets import MalariaSet  # noqa: E402
from wtl.nets.seed import build_network  # noqa: E402
from wtl.runtime import pick_device  # noqa: E402
from wtl.training import distributed  # noqa: E402
from wtl.training.trainer import Trainer, pick_amp_dtype  # noqa: E402

TARGET_RATIO = 0.9


def make_cells(root: Path, images: int, size: int, seed: int = 0) -> Path:
    """About `images` NIH-named cell PNGs in root/cell_images/{Parasitized,Uninfected}; returns cell_images."""
    rng = np.random.default_rng(seed)
    cells = root / "cell_images"
    per_patient = 4
    patients = max(1, images // (2 * per_patient))
    for name in ("Parasitized", "Uninfected"):
        (cells / name).mkdir(parents=True, exist_ok=True)
        for patient in range(1, patients + 1):
            for k in range(per_patient):
                side = int(rng.integers(size - 16, size + 16))
                canvas = Image.new("RGB", (side, side))
                draw = ImageDraw.Draw(canvas)
                draw.ellipse([4, 4, side - 4, side - 4], fill=(220, 150, 170))
                if name == "Parasitized":
                    x, y = rng.integers(side // 4, side // 2, size=2)
                    draw.ellipse([x, y, x + side // 6, y + side // 6], fill=(70, 20, 90))
                noisy = np.asarray(canvas, dtype=np.int16) + rng.integers(-20, 21, (side, side, 3))
                image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
                image.save(cells / name / f"C{patient}P{patient + 60}ThinF_IMG_20150918_144104_cell_{k}.png")
    return cells


def batches_forever(loader: DataLoader) -> Iterator:
    """The loader's batches epoch after epoch (a fresh shuffle each time), as a long run draws them."""
    while True:
        yield from loader


class Clock:
    """Wall and CPU seconds of one timed block (CPU seconds: less swayed by other load, not immune)."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def real_step(trainer: Trainer, batches: Iterator) -> Clock:
    """One training step through Trainer.epoch (augmentation on), fetching its batch from the cache."""
    with Clock() as clock:
        trainer.epoch(itertools.islice(batches, 1), training=True)
    return clock


def bare_step(
    network: torch.nn.Module, optim: torch.optim.Optimizer, batch: tuple[torch.Tensor, torch.Tensor]
) -> Clock:
    """One plain forward/backward/Adam step over a ready-made float batch on the device."""
    images, labels = batch
    network.train()
    with Clock() as clock:
        optim.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(network(images), labels)
        loss.backward()
        optim.step()
        loss.item()  # wait for the device, as real_step's epoch() does when it returns its sums
    return clock


def ddp_worker(args: argparse.Namespace) -> int:
    """One process of a --processes run (under torchrun, or alone for N=1); rank 0 prints a JSON line."""
    info = distributed.setup(args.device)
    try:
        cache = DatasetCache(MalariaSet(args.data_dir, "train", size=args.image_size, seed=args.seed))
        cache.fill(args.workers, progress=False)
        # As model_main.py builds it: a DistributedSampler shard per process, or one shuffled loader.
        sampler = distributed.train_sampler(cache, info, args.seed) if info.enabled else None
        loader = DataLoader(cache, batch_size=args.batch_size, sampler=sampler, shuffle=sampler is None, drop_last=True)
        trainer = Trainer(
            build_network(args.network),
            torch.nn.CrossEntropyLoss(),
            lr=1e-3,
            gamma=0.8,
            device=info.device,
            augment=True,
            show_progress=False,
            dist=info,
            amp_dtype=pick_amp_dtype(info.device) if args.amp else None,
            channels_last=args.channels_last,
        )
        batches = batches_forever(loader)
        trainer.epoch(itertools.islice(batches, max(args.warmup, 1)), training=True)
        distributed.barrier()
        start = time.perf_counter()
        # epoch() ends by reducing its sums over the processes: the clock stops when all are done.
        trainer.epoch(itertools.islice(batches, args.steps), training=True)
        seconds = time.perf_counter() - start
        if info.is_main:
            images = args.steps * args.batch_size * info.world_size
            rate = images / seconds
            print(json.dumps({"processes": info.world_size, "threads": torch.get_num_threads(), "images_per_s": rate}))
    finally:
        distributed.cleanup()
    return 0


def scaling(args: argparse.Namespace, data_dir: Path) -> None:
    """Time the real pipeline with each --processes count (and on CUDA with --amp/--channels-last)."""
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [[]]
    if device.type == "cuda":
        variants += [["--amp"], ["--channels-last"], ["--amp", "--channels-last"]]
    script = Path(__file__).resolve()
    base = [str(script), "--ddp-worker", "--data-dir", str(data_dir), "--device", args.device]
    base += ["--image-size", str(args.image_size), "--batch-size", str(args.batch_size), "--steps", str(args.steps)]
    base += ["--warmup", str(args.warmup), "--workers", str(args.workers), "--network", args.network]
    print(f"{device}; {args.batch_size} images per step and process, {args.steps} timed steps, network {args.network}")
    first: float | None = None
    for processes in args.processes:
        if device.type == "cuda" and processes > torch.cuda.device_count():
            print(f"{processes} processes: skipped, this machine has {torch.cuda.device_count()} GPU(s)")
            continue
        for flags in variants:
            if processes == 1:
                command = [sys.executable, *base, *flags]  # a plain process, as `python model_main.py`
            else:
                launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
                command = [*launcher, f"--nproc_per_node={processes}", *base, *flags]
            result = subprocess.run(command, capture_output=True, text=True, check=False, env=dict(os.environ))
            lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
            if result.returncode != 0 or not lines:
                print(f"{processes} processes {' '.join(flags)}: failed\n{result.stderr[-2000:]}", file=sys.stderr)
                continue
            rate = json.loads(lines[-1])["images_per_s"]
            first = first or rate
            label = " ".join(flags) or "float32"
            threads = json.loads(lines[-1])["threads"]
            print(
                f"{processes} process(es) x {threads} thread(s), {label:<24} {rate:9.1f} images/s "
                f"({rate / first:.2f}x the first row)"
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, help="a malaria-layout data set (default: generate one in a temp folder)")
    p.add_argument("--images", type=int, default=512, help="synthetic images to generate without --data-dir")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="timed training steps of each loop")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps of each loop first")
    p.add_argument("--workers", type=int, default=2, help="decoding processes for the cache fill")
    p.add_argument("--network", choices=["last", "every"], default="last")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads (default: torch's choice). On a machine busy with other work, 1 keeps "
        "OpenMP threads from spinning while they wait for each other, which inflates small ops the most",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--processes", type=int, nargs="+", help="time model_main's pipeline with these process counts")
    p.add_argument("--amp", action="store_true", help=argparse.SUPPRESS)  # set per variant by --processes
    p.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)  # one process of --processes
    args = p.parse_args(argv)
    if args.ddp_worker:
        return ddp_worker(args)

    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="wtl-bench-") as temporary:
        root = args.data_dir
        if root is None:
            start = time.perf_counter()
            root = make_cells(Path(temporary), args.images, args.image_size, args.seed)
            print(f"generated {args.images} synthetic cells in {time.perf_counter() - start:.1f}s", file=sys.stderr)
        if args.processes:
            scaling(args, root)
            return 0
        dataset = MalariaSet(root, "train", size=args.image_size, seed=args.seed)
        start = time.perf_counter()
        cache = DatasetCache(dataset).fill(args.workers)
        fill_seconds = time.perf_counter() - start

    torch.manual_seed(args.seed)
    loader = DataLoader(cache, batch_size=args.batch_size, shuffle=True, drop_last=True)
    if len(loader) == 0:
        p.error(f"only {len(cache)} training images, fewer than one batch of {args.batch_size}")
    real_trainer = Trainer(
        build_network(args.network),
        torch.nn.CrossEntropyLoss(),
        lr=1e-3,
        gamma=0.8,
        device=device,
        augment=True,
        show_progress=False,
    )
    batches = batches_forever(loader)

    torch.manual_seed(args.seed)
    bare_network = build_network(args.network).to(device)
    bare_optim = torch.optim.Adam(bare_network.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(args.seed)
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    bare_data = [
        (torch.rand(shape, generator=generator).to(device), torch.randint(0, 2, (args.batch_size,)).to(device))
        for _ in range(min(args.steps, 8))
    ]

    for i in range(args.warmup):
        real_step(real_trainer, batches)
        bare_step(bare_network, bare_optim, bare_data[i % len(bare_data)])

    # Steps alternate (real, bare, bare, real, ...) so that a busy machine slows both alike.
    real_clocks, bare_clocks = [], []
    for i in range(args.steps):
        bare_batch = bare_data[i % len(bare_data)]
        if i % 2 == 0:
            real_clocks.append(real_step(real_trainer, batches))
            bare_clocks.append(bare_step(bare_network, bare_optim, bare_batch))
        else:
            bare_clocks.append(bare_step(bare_network, bare_optim, bare_batch))
            real_clocks.append(real_step(real_trainer, batches))

    def rate(clocks: list[Clock], field: str) -> float:
        return args.batch_size / statistics.median(getattr(c, field) for c in clocks)

    real_wall, bare_wall = rate(real_clocks, "wall"), rate(bare_clocks, "wall")
    real_cpu, bare_cpu = rate(real_clocks, "cpu"), rate(bare_clocks, "cpu")
    ratio = real_wall / bare_wall
    images = args.steps * args.batch_size
    real_total = images / sum(c.wall for c in real_clocks)
    bare_total = images / sum(c.wall for c in bare_clocks)
    print(
        f"data: {len(cache)} training images of {args.image_size}px, cache filled in {fill_seconds:.1f}s "
        f"({args.workers} workers); device {device}, {torch.get_num_threads()} threads; network {args.network}; "
        f"{args.steps} alternating steps of {args.batch_size} images each (median step counts)"
    )
    print(f"real pipeline (cache -> DataLoader -> Trainer.epoch, augmented): {real_wall:8.1f} images/s")
    print(f"bare loop over ready-made float tensors:                         {bare_wall:8.1f} images/s")
    print(f"ratio real/bare: {ratio:.3f} (target >= {TARGET_RATIO})")
    print(f"over all steps: real {real_total:.1f}, bare {bare_total:.1f} images/s, ratio {real_total / bare_total:.3f}")
    cpu_ratio = real_cpu / bare_cpu
    print(f"per CPU second (less swayed by load): real {real_cpu:.1f}, bare {bare_cpu:.1f}, ratio {cpu_ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
