"""Train/eval mode handling that leaves a model exactly as it was found."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


class ModeKeeper:
    """Puts a model in eval mode and later restores every submodule's own train/eval flag."""

    def __init__(self, model: nn.Module) -> None:
        # Per module, not model.train(was_training): a model may mix modes on purpose (e.g. frozen BN).
        self.flags = [(module, module.training) for module in model.modules()]
        model.eval()

    def restore(self) -> None:
        """Every module back to the mode it had before."""
        for module, flag in self.flags:
            module.training = flag


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode inside the block; every module's own mode back afterwards, also on error."""
    modes = ModeKeeper(model)
    try:
        yield model
    finally:
        modes.restore()
