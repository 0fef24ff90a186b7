"""Where to sample the deletion/insertion curves: each grid's error against a fine reference, and its cost.

    python benchmarks/faithfulness_grid.py --model models/bundled/model_malaria_last.pt --data-dir ~/cell_images
    python benchmarks/faithfulness_grid.py --model models/bundled/model_gender_last.pt --data-dir ~/celeba --images 96

The pictures are a seeded sample of the model's test split, each map explaining what evaluate
explains (Parasitized for cells, each face's own class); the maps are evaluate's views of each
method. Every curve is measured once on a reference grid of 125 nodes (every 1/1024 of the
pixels up to 1/16, every 1/64 after) and integrated on each candidate grid by the trapezoid, as
evaluate integrates it. Printed per grid: the forward passes per curve (the nodes between the two
shared ends) and, over the pictures, the mean and the mean absolute difference of the deletion and
the insertion AUC from the reference's. docs/faithfulness.md holds the runs on the shared cells and faces.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wtl.checkpoints.loading import load_model  # noqa: E402
from wtl.data.datasets import balanced_sample, dataset_kind, model_dataset  # noqa: E402
from wtl.evaluation.inputs import as_input  # noqa: E402
from wtl.maps import methods as map_methods  # noqa: E402
from wtl.maps.registry import class_of_interest  # noqa: E402
from wtl.metrics.faithfulness import FRACTIONS, curves_of_maps  # noqa: E402

REFERENCE = tuple(sorted({k / 1024 for k in range(65)} | {k / 64 for k in range(4, 65)}))
CANDIDATES: dict[str, tuple[float, ...]] = {
    "16 equal steps (RISE's grid; the default before)": tuple(k / 16 for k in range(17)),
    "8 equal steps": tuple(k / 8 for k in range(9)),
    "32 equal steps": tuple(k / 32 for k in range(33)),
    "halving towards 0 only: 1/128 ... 1/2": (0, 1 / 128, 1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1),
    "the default (faithfulness.FRACTIONS)": FRACTIONS,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--images", type=int, default=96, help="pictures of the test split (default 96)")
    parser.add_argument("--methods", nargs="+", default=["cam", "gradcam"])
    args = parser.parse_args()
    model = load_model(args.model)
    names = list(model.class_names)
    kind = dataset_kind(names, model.checkpoint.get("dataset"))
    dataset = model_dataset(args.data_dir, "test", names, kind, model.image_size, model.preprocess)
    target = class_of_interest(names)
    if target is not None:
        dataset.samples = [sample for sample in dataset.samples if sample[1] == target]
    dataset.samples = balanced_sample(dataset.samples, args.images, 0)
    curves: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(dataset), 8):
        items = [dataset[i] for i in range(start, min(start + 8, len(dataset)))]
        images = as_input(torch.stack([image for image, _ in items]), model.image_size, "cpu")
        labels = torch.tensor([label for _, label in items])
        classes = torch.full_like(labels, target) if target is not None else labels
        maps = {}
        for method in args.methods:
            views = map_methods.views(model.network, method, images, classes)
            maps.update({f"{method} {view}": heat for view, heat in views.items()})
        for key, curve in curves_of_maps(model.network, images, maps, classes, REFERENCE).items():
            curves.setdefault(key, []).append(curve.numpy())
        print(f"{start + len(items)} of {len(dataset)} pictures", file=sys.stderr)
    reference = np.array(REFERENCE)
    print(f"{args.model.name}, {len(dataset)} pictures of the test split of {args.data_dir}; reference: 125 nodes")
    for key, parts in curves.items():
        curve = np.concatenate(parts, axis=2)  # (2, nodes, pictures)
        exact = np.trapezoid(curve, reference, axis=1)
        print(f"\n{key}: reference deletion {exact[0].mean():.4f}, insertion {exact[1].mean():.4f}")
        print("  grid | passes per curve | deletion: mean error, mean |error| | insertion: mean error, mean |error|")
        for name, grid in CANDIDATES.items():
            rows = [int(np.argmin(np.abs(reference - fraction))) for fraction in grid]
            error = np.trapezoid(curve[:, rows], reference[rows], axis=1) - exact
            print(
                f"  {name} | {len(grid) - 2} | {error[0].mean():+.4f}, {np.abs(error[0]).mean():.4f} | "
                f"{error[1].mean():+.4f}, {np.abs(error[1]).mean():.4f}"
            )


if __name__ == "__main__":
    main()
