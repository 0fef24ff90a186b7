"""`features --dream`: real pictures with the chosen channels' (or the class's) evidence amplified, beside them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from wtl.checkpoints.loading import LoadedModel
    from wtl.plot.outputs import Outputs


def dream_pictures(
    args: argparse.Namespace,
    model: LoadedModel,
    block: int,
    class_index: int,
    chosen: torch.Tensor | None,
    outputs: Outputs,
) -> list[Path]:
    """One PNG (the picture | its dream) and npz per --dream picture, as the network sees it (its input size)."""
    import numpy as np
    import torch

    from wtl import names
    from wtl.data.images import load_batch, resolve_images
    from wtl.features.channels import chosen_channels, class_channels
    from wtl.features.dream import Ascent, channel_means, dream_channels, dream_class
    from wtl.features.stages import block_head
    from wtl.plot import features as figures

    network, classes = model.network, model.class_names
    device = next(network.parameters()).device
    files = resolve_images(args.dream)
    images = load_batch(files, model.image_size, model.preprocess).to(device)
    channels = None
    if args.amplify == "channels":
        # A Network's blocks without a head rank their channels by Grad-CAM over the pictures themselves.
        rank = None if block_head(network, block) is not None else images
        if chosen is None:
            channels, _ = class_channels(network, block, class_index, args.channels, rank)
        else:
            channels, _ = chosen_channels(network, block, class_index, chosen, rank)
        what = f"block {block} channels {', '.join(map(str, channels.tolist()))}"
    else:
        what = f"the {classes[class_index]} logit"
    ascent = Ascent(args.octaves, args.dream_steps, args.seed)
    print(
        f"dreaming {len(files)} pictures: raising {what}; {ascent.octaves} octaves x {ascent.steps} steps, "
        f"seed {ascent.seed}"
    )
    stem = names.features_stem(model.path)
    for path, image in zip(files, images):
        if channels is not None:
            dreamed = dream_channels(network, image, block, channels, ascent)
        else:
            dreamed = dream_class(network, image, class_index, ascent)
        with torch.no_grad():
            before = network(image[None]).softmax(dim=1)[0].cpu()
            after = network(dreamed.image[None].to(device)).softmax(dim=1)[0].cpu()
        numbers: dict[str, object] = {
            "image": image.cpu().numpy(),
            "dreamed": dreamed.image.numpy(),
            "objective_before": dreamed.objective_before,
            "objective_after": dreamed.objective_after,
            "probabilities_before": before.numpy(),
            "probabilities_after": after.numpy(),
            "class_names": np.array(classes),
            "amplify": args.amplify,
            "octaves": ascent.octaves,
            "octave_scale": ascent.octave_scale,
            "steps": ascent.steps,
            "seed": ascent.seed,
            "picture": str(path),
        }
        line = f"{path.name}: "
        if channels is not None:
            means = (
                channel_means(network, image, block, channels),
                channel_means(network, dreamed.image, block, channels),
            )
            numbers.update(
                block=block,
                channels=channels.numpy(),
                activation_before=means[0].numpy(),
                activation_after=means[1].numpy(),
            )
            change = f"mean activation {float(means[0].mean()):.3g} -> {float(means[1].mean()):.3g}"
            tag = f"block{block}"
        else:
            numbers.update(class_index=class_index)
            change = f"{classes[class_index]} logit {dreamed.objective_before:.3g} -> {dreamed.objective_after:.3g}"
            tag = classes[class_index]
        top_before, top_after = int(before.argmax()), int(after.argmax())
        line += (
            f"{change}; prediction {classes[top_before]} {float(before[top_before]):.1%} -> "
            f"{classes[top_after]} {float(after[top_after]):.1%}"
        )
        print(line)
        title = f"deep dream of {path.name} ({model.path.name})\nraising {what}"
        subtitle = f"dreamed: {change}\npredicted {classes[top_after]} {float(after[top_after]):.1%}"
        fig = figures.dream_figure(image.cpu().numpy(), dreamed.image.numpy(), title, subtitle)
        outputs.save(fig, f"{stem}_dream_{path.stem}_{tag}", numbers)
    return outputs.written
