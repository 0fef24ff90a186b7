"""What explaining costs on top of classifying: every map against the forward pass it rides on.

    python benchmarks/cam_speed.py                          # random weights, 32 images at 128 px
    python benchmarks/cam_speed.py --model models/bundled/model_malaria_last.pt \
        --model models/bundled/model_malaria_every_multi_loss.pt
    python benchmarks/cam_speed.py --batch 64 --repeats 9 --device cuda

One run times, after warm-up, with the median of --repeats (candidate and baseline
alternate within each repeat, so both see the same machine load):

- cams.explain_last_block against the same Network's bare forward pass (no_grad): target <= 1.05
- wtl.explain (the Python API: a tensor batch in, a Result with the maps out) against the same: target <= 1.05
- cams.explain_every_block against the same NetworkMultiLoss's bare forward pass: target <= 1.05
- each Grad-CAM method against the floor of the same batch's forward + backward: target <= 1.1
- Score-CAM's images/s (it runs one forward pass per channel and image: no target)
- evaluation.gender100.gender100_maps on 200 generated faces (100 per class, JPEG) against the
  floor of decoding them (model_data.load_image) and forwarding them: target <= 1.3

Thread count: torch's default (torch.set_num_threads is left as is).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import wtl  # noqa: E402
from wtl.checkpoints.loading import LoadedModel, load_model  # noqa: E402
from wtl.data.datasets import GenderSet  # noqa: E402
from wtl.data.images import load_image  # noqa: E402
from wtl.evaluation.gender100 import gender100_maps  # noqa: E402
from wtl.maps import cam as cams  # noqa: E402
from wtl.maps import gradcam as gradcams  # noqa: E402
from wtl.nets.seed import BLOCK_CHANNELS, Network, NetworkMultiLoss  # noqa: E402
from wtl.runtime import pick_device  # noqa: E402

CAM_TARGET = 1.05
GRADCAM_TARGET = 1.1
GENDER_TARGET = 1.3


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def paired(
    candidate: Callable[[], object], baseline: Callable[[], object], device: torch.device, warmup: int, repeats: int
) -> tuple[float, float, float]:
    """(median candidate s, median baseline s, median of the per-repeat ratios), alternating the two."""
    for _ in range(warmup):
        candidate()
        baseline()
    times: dict[str, list[float]] = {"candidate": [], "baseline": []}
    ratios = []
    for repeat in range(repeats):
        # Alternate which goes first, so neither always inherits the other's warm caches.
        order = [("candidate", candidate), ("baseline", baseline)]
        if repeat % 2:
            order.reverse()
        taken = {}
        for name, function in order:
            sync(device)
            start = time.perf_counter()
            function()
            sync(device)
            taken[name] = time.perf_counter() - start
            times[name].append(taken[name])
        ratios.append(taken["candidate"] / taken["baseline"])
    return statistics.median(times["candidate"]), statistics.median(times["baseline"]), statistics.median(ratios)


def verdict(ratio: float, target: float) -> str:
    """'ok' when a ratio meets its target."""
    return "ok" if ratio <= target else "OVER TARGET"


def report(name: str, seconds: float, base_name: str, base_seconds: float, ratio: float, target: float) -> None:
    """One line per comparison."""
    print(
        f"{name:<34} {1000 * seconds:9.1f} ms   {base_name:<22} {1000 * base_seconds:9.1f} ms   "
        f"ratio {ratio:5.3f} (target <= {target:.2f}) {verdict(ratio, target)}",
        flush=True,
    )


def networks(paths: Sequence[Path], device: torch.device) -> dict[str, LoadedModel]:
    """A random Network and NetworkMultiLoss, each replaced by a --model checkpoint of its kind."""
    torch.manual_seed(0)
    models = {
        kind: LoadedModel(network.to(device).eval(), kind, ["Female", "Male"], 128, Path(f"random-{kind}"), {})
        for kind, network in (("last", Network()), ("every", NetworkMultiLoss()))
    }
    for path in paths:
        loaded = load_model(path, device)
        models[loaded.kind] = loaded
    return models


def make_faces(root: Path, per_class: int, seed: int = 0) -> Path:
    """root/Dataset/Test/{Female,Male}/*.jpg: CelebA-sized (178 x 218) noisy pictures; returns root."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(GenderSet.CLASSES):
        folder = root / "Dataset" / "Test" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(60, 200, size=(218, 178, 3), dtype=np.uint8)
            if label:
                pixels[150:] //= 3
            Image.fromarray(pixels).save(folder / f"{name.lower()}_{i:03d}.jpg", quality=90)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Run every comparison once and print it."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, action="append", default=[], help="checkpoint to use (repeatable)")
    parser.add_argument("--batch", type=int, default=32, help="images per batch (default 32)")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--scorecam-images", type=int, default=2, help="images for Score-CAM's images/s")
    parser.add_argument("--gender-count", type=int, default=100, help="Gender100 faces per class (default 100)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    models = networks(args.model, device)
    last, every = models["last"].network, models["every"].network
    assert isinstance(last, Network) and isinstance(every, NetworkMultiLoss)
    images = torch.rand((args.batch, 3, args.size, args.size), generator=torch.Generator().manual_seed(1)).to(device)
    print(
        f"device {device}, {torch.get_num_threads()} threads, batch {args.batch} x {args.size} px, "
        f"median of {args.repeats} after {args.warmup} warm-up; models: "
        + ", ".join(f"{kind}={m.path.name}" for kind, m in models.items()),
        flush=True,
    )

    def bare(network: nn.Module) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return network(images)

        return run

    def forward_backward(network: nn.Module) -> Callable[[], object]:
        # The floor any gradient method pays: one forward with autograd and one backward of the class scores.
        def run() -> object:
            logits = network(images)
            logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
            network.zero_grad(set_to_none=True)
            return logits

        return run

    seconds, base, ratio = paired(
        lambda: cams.explain_last_block(last, images), bare(last), device, args.warmup, args.repeats
    )
    report("cams.explain_last_block", seconds, "bare forward", base, ratio, CAM_TARGET)
    api_model = models["last"]
    seconds, base, ratio = paired(
        lambda: wtl.explain(api_model, images, batch_size=args.batch), bare(last), device, args.warmup, args.repeats
    )
    report("wtl.explain (tensor batch)", seconds, "bare forward", base, ratio, CAM_TARGET)
    seconds, base, ratio = paired(
        lambda: cams.explain_every_block(every, images), bare(every), device, args.warmup, args.repeats
    )
    report("cams.explain_every_block", seconds, "bare forward (multi)", base, ratio, CAM_TARGET)

    for name in (n for n in gradcams.METHODS if n != "scorecam"):
        method = gradcams.make_method(name, last)
        seconds, base, ratio = paired(
            partial(method, images), forward_backward(last), device, args.warmup, args.repeats
        )
        report(f"{name} (last block)", seconds, "forward+backward", base, ratio, GRADCAM_TARGET)
    _, forward_only, _ = paired(bare(last), bare(last), device, 1, args.repeats)
    print(f"{'(bare forward of that batch':<34} {1000 * forward_only:9.1f} ms)", flush=True)

    few = images[: args.scorecam_images]
    scorecam = gradcams.make_method("scorecam", last, batch_size=args.batch)
    scorecam(few)  # warm-up
    sync(device)
    start = time.perf_counter()
    scorecam(few)
    sync(device)
    taken = time.perf_counter() - start
    channels = BLOCK_CHANNELS[-1]  # the last block's channels: one masked image each
    print(
        f"{'scorecam (last block)':<34} {len(few) / taken:9.2f} images/s "
        f"({channels} masked forward passes per image, {len(few) * channels / taken:.0f} masked images/s)",
        flush=True,
    )

    with tempfile.TemporaryDirectory(prefix="cam-speed-") as folder:
        root = make_faces(Path(folder), args.gender_count)
        model = models["last"]
        test = GenderSet(root, "test", max_samples_per_class=args.gender_count, seed=0, size=model.image_size)
        paths = [path for path, _ in test.samples]

        def floor() -> object:
            # Decoding and one forward pass of the very same files, in the CLI's batch size.
            for start in range(0, len(paths), 32):
                chunk = paths[start : start + 32]
                batch = torch.stack([load_image(p, model.image_size, model.preprocess) for p in chunk]).to(device)
                with torch.no_grad():
                    last(batch)
            return None

        seconds, base, ratio = paired(
            lambda: gender100_maps(model, root, args.gender_count, 0, None, "cam", 32),
            floor,
            device,
            1,
            max(3, args.repeats // 2),
        )
        report(f"gender100_maps ({len(paths)} faces)", seconds, "decode + forward", base, ratio, GENDER_TARGET)
    return 0


if __name__ == "__main__":
    sys.exit(main())
