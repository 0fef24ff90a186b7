"""The features view of one block and class: the chosen channels, their maximisers and their real examples."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from torch import Tensor, nn

from wtl.features.channels import chosen_channels, class_channels
from wtl.features.examples import DEFAULT_EXAMPLES, Examples, top_patches
from wtl.features.maximise import DEFAULT_LR, DEFAULT_STEPS, maximize_channels


@dataclass
class ChannelView:
    """The features view of one block and class: chosen channels, their maximizers and real examples."""

    block: int
    class_index: int
    channels: Tensor  # (K,) long, by descending weight
    weights: Tensor  # (K,) head weight, or mean Grad-CAM weight for a Network's blocks 1-3
    maximizers: Tensor  # (K, 3, H, W) in [0, 1]
    activations: Tensor  # (K,) each maximizer's own mean of A_b[k]
    examples: Examples | None  # the strongest real patches, where images were given

    def arrays(self) -> dict[str, np.ndarray]:
        """The npz's arrays by key; with examples also examples, example_activations, best_real_activations.

        best_real_activations (K,) is the highest mean of A_b[k] over the images, to set against activations.
        """
        arrays = {
            "channels": self.channels.numpy(),
            "weights": self.weights.numpy(),
            "maximizers": self.maximizers.numpy(),
            "activations": self.activations.numpy(),
        }
        if self.examples is not None:
            arrays["examples"] = self.examples.patches.numpy()
            arrays["example_activations"] = self.examples.activations.numpy()
            arrays["best_real_activations"] = self.examples.best_mean.numpy()
        return arrays


def channel_view(
    network: nn.Module,
    block: int,
    class_index: int,
    k: int,
    rank_images: Tensor | None = None,
    example_images: Tensor | Iterable[Tensor] | None = None,
    n: int = DEFAULT_EXAMPLES,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    size: int = 128,
    lr: float = DEFAULT_LR,
    channels: Tensor | None = None,
) -> ChannelView:
    """class_channels (ranked over rank_images where the block has no head), maximize_channels, top_patches.

    example_images may be the same tensor as rank_images, or an iterable of batches for a large folder.
    With `channels` those channels are shown, in that order (k is then ignored), with their weights.
    """
    if channels is None:
        channels, weights = class_channels(network, block, class_index, k, rank_images)
    else:
        channels, weights = chosen_channels(network, block, class_index, channels, rank_images)
    maximizers, activations = maximize_channels(network, block, channels, steps, seed, size, lr)
    examples = None if example_images is None else top_patches(network, block, channels, example_images, n)
    return ChannelView(block, class_index, channels, weights, maximizers, activations, examples)
