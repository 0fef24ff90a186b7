"""The model-parameter randomisation test (Adebayo et al. 2018): do the maps depend on the weights at all?"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from wtl.metrics.agreement import spearman
from wtl.nets import blocks as net_blocks
from wtl.nets.modes import eval_mode

# A map for the test: (network, images (B, 3, H, W) in [0, 1], classes (B,)) -> (B, H, W) heatmaps.
MapFunction = Callable[[nn.Module, Tensor, Tensor], Tensor]
Stages = Sequence[tuple[str, Sequence[nn.Module]]]


def randomisation_stages(network: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """The cascade of Adebayo et al.: (stage name, modules to re-initialise), from the top layer down.

    Our networks: 'head' (the classifier and, for NetworkMultiLoss, the blocks' transforms),
    then each block from the last to the first (its conv and batch norm; nets.blocks says which).
    A torchvision network: 'head' (its classifier), then its four stages from the last to the first,
    named by the module ending each (layer4 ... layer1; the stem goes with the first).
    Any other model: each module with parameters of its own, last registered first, named by its path.
    """
    if not net_blocks.is_known(network):
        own = [(name, m) for name, m in network.named_modules() if any(True for _ in m.parameters(recurse=False))]
        return [(name, [module]) for name, module in reversed(own)]
    stages: list[tuple[str, list[nn.Module]]] = [("head", net_blocks.head_modules(network))]
    for block in reversed(net_blocks.blocks(network)):
        stages.append((block.module_name or block.name, [m for m in block.stage if any(True for _ in m.parameters())]))
    return stages


def _reinitialise(modules: Sequence[nn.Module], seed: int) -> None:
    """reset_parameters() of every submodule that has one, under `seed`, leaving the caller's RNG state alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in modules:
            for sub in module.modules():
                reset = getattr(sub, "reset_parameters", None)
                if callable(reset):
                    reset()


@dataclass
class SanityResult:
    """Per method and stage, the rank correlation of each image's map with the trained model's (NaN: undefined)."""

    stages: list[str]  # top first, cumulative
    rhos: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # method -> stage -> per image

    @property
    def images(self) -> int:
        """How many images the test ran on."""
        first = next(iter(self.rhos.values()), {})
        return len(next(iter(first.values()), []))

    def mean(self, method: str, stage: str) -> float | None:
        """The mean rho over the images where it is defined (None where it is nowhere)."""
        defined = [r for r in self.rhos[method][stage] if not math.isnan(r)]
        return sum(defined) / len(defined) if defined else None

    def defined(self, method: str, stage: str) -> int:
        """On how many images rho is defined (both maps not constant)."""
        return sum(not math.isnan(r) for r in self.rhos[method][stage])

    def to_json(self) -> dict[str, Any]:
        """{'images', 'stages', 'methods': {method: {stage: mean rho or None}}, 'defined': {method: {stage: n}}}."""
        return {
            "images": self.images,
            "stages": list(self.stages),
            "methods": {m: {s: self.mean(m, s) for s in self.stages} for m in self.rhos},
            "defined": {m: {s: self.defined(m, s) for s in self.stages} for m in self.rhos},
        }


def cascading_randomisation(
    network: nn.Module,
    images: Tensor,
    classes: Tensor,
    methods: Mapping[str, MapFunction],
    seed: int = 0,
    stages: Stages | None = None,
) -> SanityResult:
    """The cascading randomisation test on a deep copy of `network` (the original is never touched).

    The stages of randomisation_stages are re-initialised one after another, cumulatively, each
    with its modules' own reset_parameters under seed + stage number. After each stage every
    method's heatmaps of `images` (explaining `classes`) are compared with the trained network's
    by Spearman's rank correlation, per image. A method whose maps keep rho near 1 while the
    weights are destroyed explains the image, not the model.
    """
    randomised = copy.deepcopy(network)  # re-initialised in place, stage after stage
    if stages is None:
        cascade = randomisation_stages(randomised)
    else:
        # The caller names the original's modules: re-initialise their twins in the copy.
        path = {id(module): name for name, module in network.named_modules()}
        twin = dict(randomised.named_modules())
        cascade = [(stage, [twin[path[id(m)]] for m in modules]) for stage, modules in stages]
    if not cascade:
        raise ValueError("the network has nothing to randomise")
    size = tuple(images.shape[-2:])
    result = SanityResult([name for name, _ in cascade])
    with eval_mode(network):
        reference = {name: fn(network, images, classes).detach().cpu() for name, fn in methods.items()}
    for name, maps in reference.items():
        if tuple(maps.shape) != (len(images), *size):
            raise ValueError(f"method {name!r} gave maps of {tuple(maps.shape)}, not (B, {size[0]}, {size[1]})")
        result.rhos[name] = {}
    for number, (stage, modules) in enumerate(cascade):
        _reinitialise(modules, seed + number)
        with eval_mode(randomised):
            for name, fn in methods.items():
                maps = fn(randomised, images, classes).detach().cpu()
                result.rhos[name][stage] = [spearman(a, b) for a, b in zip(reference[name], maps)]
    return result
