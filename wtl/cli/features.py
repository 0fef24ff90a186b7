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
    from wtl.plot.outputs import Outputs

SUMMARY = (
    "what the network looks for: the channels that carry a class's evidence, their activation maximisers "
    "and the real patches that drive them"
)
EXAMPLE = "python where_to_look.py features --block 3 --channels 8 --class Parasitized"
DREAM_LR = 0.01  # the mean pixel change per step (features.dream.DEFAULT_LR)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `features`."""
    p.add_argument("--block", type=int, help="which conv block, 1..n (default the last: 4 for the original networks)")
    p.add_argument(
        "--channels", type=common.positive, default=8, help="how many channels, the largest weights first (default 8)"
    )
    p.add_argument(
        "--channel",
        type=int,
        nargs="+",
        metavar="INDEX",
        help="exactly these channels of the block (0-based), instead of the top --channels",
    )
    p.add_argument(
        "--all-maps",
        action="store_true",
        help="draw every channel's map of the block on one picture per class (the most confident one)",
    )
    p.add_argument("--class", dest="class_", help="whose evidence (name or index; default Parasitized, else class 0)")
    p.add_argument("--image", type=Path, nargs="+", help="pictures for the real examples (default: the demo cells)")
    p.add_argument("--data-dir", type=Path, help="or every picture of this data set (see --max-images)")
    p.add_argument("--max-images", type=common.positive, help="with --data-dir: a seeded, class-balanced sample")
    p.add_argument("--examples", type=common.positive, default=6, help="real patches per channel (default 6)")
    p.add_argument(
        "--steps", type=common.positive, default=96, help="optimisation steps of the maximisers (default 96)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the maximisers' start and the dream's jitter")
    dreams = p.add_argument_group("deep dream: amplify what the block (or the class) sees in real pictures")
    dreams.add_argument(
        "--dream", type=Path, nargs="+", metavar="IMAGE", help="dream on these pictures instead of the other views"
    )
    dreams.add_argument(
        "--amplify",
        choices=["channels", "class"],
        default="channels",
        help="raise the chosen channels of --block (default), or the logit of --class",
    )
    dreams.add_argument("--octaves", type=common.positive, default=4, help="scales, each 1.4x the last (default 4)")
    dreams.add_argument(
        "--dream-steps", type=common.positive, default=20, help="gradient steps per octave (default 20)"
    )
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
    """One PNG per view: block 1's and 2's filters; the chosen channels' maps on the first picture (or every
    channel's on one picture per class); per channel its activation maximiser beside the real patches that drive it
    most; the class's own maximiser through every head. With --dream: the dreams instead."""
    import numpy as np
    import torch

    from wtl import names
    from wtl.data.images import chunks, load_batch
    from wtl.errors import UsageError
    from wtl.features import stages
    from wtl.features.maximise import maximize_class
    from wtl.features.view import channel_view
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
    class_index, block, chosen = _choices(args, model)
    name = model.class_names[class_index]
    outputs = Outputs(args.out, args.save_npz)
    if args.dream:
        from wtl.cli.dreams import dream_pictures

        return dream_pictures(args, model, block, class_index, chosen, outputs)
    pictures = _pictures(args, model)
    count = len(chosen) if chosen is not None else args.channels
    print(f"class {name}; {len(pictures)} pictures for the real examples; block {block}, {count} channels")
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
        channels=chosen,
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
    numbers: dict[str, object] = {}
    if stages.block_count(network) >= 2:
        second = stages.input_mean_filters(network, 2)
        inputs = stages.channel_count(network, 1)
        title = f"block 2 filters ({model.path.name}): each kernel's mean over its {inputs} input channels"
        outputs.save(figures.mean_filters_figure(second.numpy(), title), f"{stem}_filters_block2")
        numbers["filters_block2"] = second.numpy()
    look = common.look_of(args, cmap=figures.FEATURE_CMAP)
    if args.all_maps:
        numbers.update(_all_maps(model, block, pictures, outputs, stem, look.cmap, device))
    else:
        first = load_batch(pictures[:1], model.image_size, model.preprocess).to(device)[0]
        maps = stages.feature_maps(network, block, channels, first)
        title = f"block {block}: the {len(channels)} channels for {name} on {pictures[0].name}"
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
        f"{model.path.name}, block {block}: the {len(channels)} channels with the largest {source} for {name}"
        if chosen is None
        else f"{model.path.name}, block {block}: channels {', '.join(map(str, channels.tolist()))} ({source})",
    )
    numbers.update(
        {
            **view.arrays(),
            "filters": kernels.numpy(),
            "class_maximizer": class_images.numpy(),
            "class_maximizer_logits": class_logits.numpy(),
            "class_maximizer_blocks": np.array(blocks),
            "class_index": class_index,
            "class_names": np.array(model.class_names),
            "block": block,
        }
    )
    outputs.save(sheet, f"{stem}_block{block}_{name}", numbers)
    return outputs.written


def _choices(args: argparse.Namespace, model: LoadedModel) -> tuple[int, int, torch.Tensor | None]:
    """(class index, block, the --channel indices or None), each checked against the model."""
    import torch

    from wtl.errors import UsageError
    from wtl.features import stages
    from wtl.maps.registry import class_of_interest

    network = model.network
    class_index = common.class_index_of(args.class_, model.class_names)
    if class_index is None:
        class_index = class_of_interest(model.class_names) or 0
    block = stages.block_count(network) if args.block is None else args.block
    try:
        stages.check_block(block, stages.block_count(network))
    except ValueError as error:
        raise UsageError(f"--block {block}: {error}") from None
    available = stages.channel_count(network, block)
    if args.channels > available:
        raise UsageError(f"--channels {args.channels}: block {block} has 1..{available} channels")
    chosen = None
    if args.channel:
        outside = [c for c in args.channel if not 0 <= c < available]
        if outside:
            raise UsageError(f"--channel {outside[0]}: block {block} has channels 0..{available - 1}")
        chosen = torch.tensor(args.channel, dtype=torch.long)
    return class_index, block, chosen


def _all_maps(
    model: LoadedModel,
    block: int,
    pictures: list[Path],
    outputs: Outputs,
    stem: str,
    cmap: str,
    device: torch.device,
) -> dict[str, object]:
    """--all-maps: every channel of the block on one picture per class, the one the model finds most typical of it.

    Per class the picture with the highest predicted probability of that class among the pictures is
    drawn; returns the npz arrays (all_maps_<class>, all_maps_file_<class>).
    """
    import torch

    from wtl.data.images import chunks, load_batch
    from wtl.features import stages
    from wtl.plot import features as figures

    probabilities = []
    with torch.no_grad():
        for chunk in chunks(pictures, 64):
            batch = load_batch(chunk, model.image_size, model.preprocess).to(device)
            probabilities.append(model.network(batch).softmax(dim=1).cpu())
    every = torch.cat(probabilities)
    channels = torch.arange(stages.channel_count(model.network, block))
    numbers: dict[str, object] = {}
    for index, class_name in enumerate(model.class_names):
        row = int(every[:, index].argmax())
        picture = load_batch(pictures[row : row + 1], model.image_size, model.preprocess).to(device)[0]
        maps = stages.feature_maps(model.network, block, channels, picture)
        title = (
            f"block {block}, all {len(channels)} channels on {pictures[row].name} (predicted {class_name} "
            f"{float(every[row, index]):.1%}: the most {class_name} of the {len(pictures)} pictures)"
        )
        fig = figures.all_maps_figure(picture.cpu().numpy(), maps.numpy(), title, cmap)
        outputs.save(fig, f"{stem}_all_maps_block{block}_{class_name}")
        numbers[f"all_maps_{class_name}"] = maps.numpy()
        numbers[f"all_maps_file_{class_name}"] = str(pictures[row])
    return numbers
