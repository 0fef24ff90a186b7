"""What `evaluate` with its defaults costs against the floor of decoding and forwarding the same cells.

    python benchmarks/evaluate_speed.py                          # 2,000 generated NIH-like cells
    python benchmarks/evaluate_speed.py --data-dir ~/cell_images --images 2000   # a seeded sample of real cells

The candidate is `wtl.evaluation.driver.evaluate` with the command's defaults (methods cam and
gradcam, the pointing game on every Parasitized cell, deletion/insertion and the intervention on
a seeded sample, the sanity check on 16 cells, 5,000 bootstrap replicates when the intervals are
computed); the floor decodes every cell (the data set's own reader) and forwards it through the same
network in batches of 32 without gradients, once before and once after evaluate (the ratio is against
their mean: a busy machine moves each by a few seconds). Target: ratio <= 4. The script also reports the
progress bar's rate over the first and the second half of the pass: a rate that holds from the
start gives the same number twice (the costly cells are spread over the pass).

Thread count: torch's default.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wtl.checkpoints.loading import load_model  # noqa: E402
from wtl.data.datasets import MalariaSet, balanced_sample  # noqa: E402
from wtl.evaluation import driver  # noqa: E402
from wtl.evaluation.inputs import as_input  # noqa: E402
from wtl.resources import bundled_dir  # noqa: E402

TARGET = 4.0


def generate(folder: Path, count: int, seed: int = 0) -> Path:
    """`count` NIH-like cells (half with a purple blob) of 100 patients, named as the NIH files are."""
    rng = np.random.default_rng(seed)
    for name in ("Parasitized", "Uninfected"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        infected = index % 2 == 0
        size = int(rng.integers(110, 150))
        canvas = Image.new("RGB", (size, size), (0, 0, 0))
        draw = ImageDraw.Draw(canvas)
        margin = int(rng.integers(4, 12))
        draw.ellipse([margin, margin, size - margin, size - margin], fill=(215, 150, 170))
        if infected:
            x, y = rng.integers(size // 4, size // 2, size=2)
            draw.ellipse([x, y, x + size // 8, y + size // 8], fill=(90, 30, 110))
        pixels = np.asarray(canvas, dtype=np.int16) + rng.integers(-12, 13, size=(size, size, 3))
        patient = index % 100
        file = f"C{patient + 1}P{patient + 61}ThinF_IMG_20150918_144104_cell_{index}.png"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            folder / ("Parasitized" if infected else "Uninfected") / file
        )
    return folder


class RateWatch:
    """Wraps the driver's tqdm to note when each image of the main pass was counted."""

    def __init__(self) -> None:
        self.stamps: list[tuple[float, int]] = []

    def factory(self, original: type) -> type:
        watch = self

        class Watched(original):  # type: ignore[misc, valid-type]
            def update(self, n: float | None = 1) -> bool | None:
                if getattr(self, "desc", "") == "evaluating":
                    watch.stamps.append((time.perf_counter(), int(n or 0)))
                return super().update(n)

        return Watched

    def halves(self) -> tuple[float, float]:
        """Images per second over the first and the second half of the images."""
        total = sum(n for _, n in self.stamps)
        if not self.stamps or total < 2:
            return float("nan"), float("nan")
        start = self.stamps[0][0] - 1e-9
        seen, middle = 0, None
        for stamp, n in self.stamps:
            seen += n
            if middle is None and seen >= total / 2:
                middle = (stamp, seen)
        assert middle is not None
        end = self.stamps[-1][0]
        first = middle[1] / (middle[0] - start)
        second = (total - middle[1]) / max(end - middle[0], 1e-9)
        return first, second


def floor_seconds(model, dataset, batch_size: int = 32) -> float:
    """Decode every cell with the data set's reader and forward it in batches without gradients."""
    start = time.perf_counter()
    batch = []
    with torch.no_grad():
        for index in range(len(dataset)):
            batch.append(dataset[index][0])
            if len(batch) == batch_size or index == len(dataset) - 1:
                model.network(as_input(torch.stack(batch), model.image_size, "cpu"))
                batch = []
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, help="real cells (Parasitized/, Uninfected/); default: generated")
    parser.add_argument("--images", type=int, default=2000, help="cells to evaluate (default 2000)")
    parser.add_argument("--model", type=Path, default=bundled_dir() / "model_malaria_last.pt")
    parser.add_argument("--faithful-images", type=int, help="evaluate's --faithful-images (default: its own)")
    args = parser.parse_args()
    model = load_model(args.model)
    with tempfile.TemporaryDirectory() as temporary:
        root = args.data_dir or generate(Path(temporary), args.images)
        dataset = MalariaSet(root, "all")
        if len(dataset) > args.images:
            dataset.samples = balanced_sample(dataset.samples, args.images, 0)
        before = floor_seconds(model, dataset)
        watch = RateWatch()
        driver.tqdm = watch.factory(driver.tqdm)  # type: ignore[misc]
        options = driver.EvaluateOptions(sanity_images=16, progress=True, faithful_images=args.faithful_images)
        start = time.perf_counter()
        result = driver.evaluate(model, dataset, ("cam", "gradcam"), options)
        result.to_json()  # the intervals are part of what evaluate prints and saves
        seconds = time.perf_counter() - start
        after = floor_seconds(model, dataset)
    floor = (before + after) / 2
    first, second = watch.halves()
    views = result.methods["cam"]["last"]
    print(f"{len(dataset)} cells ({'generated' if args.data_dir is None else args.data_dir}), model {args.model.name}")
    print(f"floor (decode + forward): {floor:.1f} s (before {before:.1f} s, after {after:.1f} s)")
    print(
        f"evaluate with the defaults: {seconds:.1f} s  -> ratio {seconds / floor:.2f} (target <= {TARGET:g}); "
        f"pointing game on {views.counted} cells, deletion/insertion on {views.faithful_images}, "
        f"intervention on {result.intervention.images if result.intervention else 0}"
    )
    print(f"progress bar: {first:.1f} images/s over the first half, {second:.1f} over the second")


if __name__ == "__main__":
    main()
