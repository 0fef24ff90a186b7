"""`features`: what the network looks for: the channels behind a class, their maximisers and real patches."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from wtl.cli import common

if TYPE_CHECKING:
    import torch

    from wtl.checkpoints.loading import LoadedModel

SUMMARY = (
    "what the network looks for: the channels that carry a class's evidence, their activation maximisers "
    "and the real patches that drive them"
)
EXAMPLE = "python where_to_look.py features --block 3 --channels 8 --class Parasitized"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `features`."""
    p.add_argument("--block", type=int, help="which conv block, 1..n (default the last: 4 for the original networks)")
    p.add_argument("--channels", type=common.positive, default=8, help="how many channels (default 8)")
    p.add_argument("--class", dest="class_", help="whose evidence (name or index; default Parasitized, else class 0)")
    p.add_argument("--image", type=Path, nargs="+", help="pictures for the real examples (default: the demo cells)")
    p.add_argument("--data-dir", type=Path, help="or every picture of this data set (see --max-images)")
    p.add_argument("--max-images", type=common.positive, help="with --data-dir: a seeded, class-balanced sample")
    p.add_argument("--examples", type=common.positive, default=6, help="real patches per channel (default 6)")
    p.add_argument(
        "--steps", type=common.positive, default=96, help="optimisation steps of the maximisers (default 96)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the maximisers' random start (default 0)")
    common.model_flags(p, dataset=True)
    common.output_flags(p)


def _pictures(args: argparse.Namespace, model: LoadedModel) -> list[Path]:
    """The real pictures: --image, --data-dir (every image, or a sample), or the demo cells."""
    from wtl.data.datasets import balanced_sample, dataset_kind, model_dataset
    from wtl.data.demo import demo_cells
    from wtl.data.images import resolve_images
    from wtl.errors import UsageError

    if args.image:
        return resolve_images(args.image)
    if args.data_dir:
        kind = dataset_kind(model.class_names, model.checkpoint.get("dataset"))
        dataset = model_dataset(
            args.data_dir, "all", model.class_names, kind, model.image_size, model.preprocess, args.seed
        )
        samples = dataset.samples
        if args.max_images is not None and args.max_images < len(samples):
            samples = balanced_sample(samples, args.max_images, args.seed)
        return [path for path, _ in samples]
    if model.class_names == ["Uninfected", "Parasitized"]:
        return [path for path, _ in demo_cells()]
    raise UsageError("pass pictures with --image or --data-dir (only cells ship with the tool)")


def run(args: argparse.Namespace) -> list[Path]:
    """One PNG per view: block 1's filters; the chosen channels' maps on the first picture; per channel its
    activation maximiser beside the real patches that drive it most; the class's own maximiser through every head."""
    import numpy as np
    import torch

    from wtl import names
    from wtl.data.images import chunks, load_batch
    from wtl.errors import UsageError
    from wtl.features import stages
    from wtl.features.maximise import maximize_class
    from wtl.features.view import channel_view
    from wtl.maps.registry import class_of_interest
    from wtl.plot import features as figures
    from wtl.plot.outputs import Outputs
    from wtl.runtime import pick_device

    device = pick_device(args.device)
    model = common.open_model(
        args.model, args.dataset or "malaria", args.models_dir, device, plain=common.plain_of(args)
    )
    if model.kind == "torchvision":
        raise UsageError(
            "features maps the channels of Where-to-look's own networks (Network, NetworkMultiLoss), not of a "
            f"{model.arch}: for where it looks, use single or multi --method gradcam"
        )
    network = model.network
    class_index = common.class_index_of(args.class_, model.class_names)
    if class_index is None:
        class_index = class_of_interest(model.class_names) or 0
    name = model.class_names[class_index]
    block = stages.block_count(network) if args.block is None else args.block
    try:
        stages.check_block(block, stages.block_count(network))
    except ValueError as error:
        raise UsageError(f"--block {block}: {error}") from None
    available = stages.channel_count(network, block)
    if args.channels > available:
        raise UsageError(f"--channels {args.channels}: block {block} has 1..{available} channels")
    pictures = _pictures(args, model)
    print(f"class {name}; {len(pictures)} pictures for the real examples; block {block}, {args.channels} channels")
    outputs = Outputs(args.out, args.save_npz)
    stem = names.features_stem(model.path)

    def picture_batches() -> Iterator[torch.Tensor]:
        for chunk in chunks(pictures, 64):
            yield load_batch(chunk, model.image_size, model.preprocess).to(device)

    head = stages.block_head(network, block) is not None
    rank = None if head else torch.cat(list(picture_batches()))
    view = channel_view(
        network,
        block,
        class_index,
        args.channels,
        rank,
        picture_batches(),
        args.examples,
        args.steps,
        args.seed,
        model.image_size,
    )
    channels, weights, activations, examples = view.channels, view.weights, view.activations, view.examples
    assert examples is not None  # example pictures were given
    source = "head weight" if head else f"mean Grad-CAM weight over the {len(pictures)} pictures"
    print(f"\n{'channel':>8}{source:>44}{'maximiser':>11}{'best real':>11}  (mean activation after the ReLU)")
    for i, channel in enumerate(channels.tolist()):
        best = float(examples.best_mean[i])
        won = "" if float(activations[i]) > best else "  <- not converged: raise --steps"
        print(f"{channel:>8}{float(weights[i]):>+44.6f}{float(activations[i]):>11.3f}{best:>11.3f}{won}")

    kernels = stages.filters(network)
    outputs.save(figures.filters_figure(kernels, f"block 1 filters ({model.path.name})"), f"{stem}_filters")
    first = load_batch(pictures[:1], model.image_size, model.preprocess).to(device)[0]
    maps = stages.feature_maps(network, block, channels, first)
    title = f"block {block}: the {len(channels)} channels for {name} on {pictures[0].name}"
    look = common.look_of(args, cmap=figures.FEATURE_CMAP)
    fig = figures.feature_maps_figure(
        first.cpu().numpy(), maps.numpy(), channels.tolist(), weights.tolist(), title, look.cmap
    )
    outputs.save(fig, f"{stem}_maps_block{block}_{pictures[0].stem}")
    blocks = stages.head_blocks(network)
    class_images, class_logits = maximize_class(network, class_index, blocks, args.steps, args.seed, model.image_size)
    outputs.save(
        figures.class_maximizer_figure(class_images.numpy(), class_logits.tolist(), list(blocks), name),
        f"{stem}_class_{name}",
    )
    sheet = figures.channel_sheet(
        view.maximizers.numpy(),
        activations.tolist(),
        examples.patches.numpy(),
        examples.activations.numpy(),
        channels.tolist(),
        weights.tolist(),
        examples.best_mean.tolist(),
        f"{model.path.name}, block {block}: the {len(channels)} channels with the largest {source} for {name}",
    )
    numbers = {
        **view.arrays(),
        "filters": kernels.numpy(),
        "class_maximizer": class_images.numpy(),
        "class_maximizer_logits": class_logits.numpy(),
        "class_maximizer_blocks": np.array(blocks),
        "class_index": class_index,
        "class_names": np.array(model.class_names),
        "block": block,
    }
    outputs.save(sheet, f"{stem}_block{block}_{name}", numbers)
    return outputs.written
