"""A network's parameter summary, as Keras' `model.summary()` prints it: per block its output shape and parameters.

The rows are the conv blocks (conv + batch norm; pooling and ReLU have no weights), each
NetworkMultiLoss block's transform, and the classifier's last linear layer (a torchvision network's
stages are its blocks, the rest of an MLP head counts as 'other'); any parameter of no row goes to an
'other' row, so the total, the sum of the rows, always counts every parameter of the network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from wtl.nets import blocks as net_blocks


@dataclass(frozen=True)
class Row:
    """One line of the summary."""

    name: str  # 'block 1', 'transform 1', 'classifier', 'other'
    output_shape: tuple[int, ...]  # per picture, without the batch: (C, h, w) for a block, (classes,) for a head
    parameters: int


def _count(modules: list[nn.Module], seen: set[int]) -> int:
    """The parameters of `modules` not counted before (a shared module counts once)."""
    total = 0
    for module in modules:
        for parameter in module.parameters():
            if id(parameter) not in seen:
                seen.add(id(parameter))
                total += parameter.numel()
    return total


def summary(network: nn.Module, image_size: int = 128) -> list[Row]:
    """The summary's rows for pictures of image_size x image_size, found by one forward pass of a blank picture."""
    found = net_blocks.blocks(network)
    parameter = next(network.parameters())
    blank = torch.zeros(1, 3, image_size, image_size, device=parameter.device, dtype=parameter.dtype)
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            outputs = net_blocks.block_outputs(network, blank)
    finally:
        network.train(was_training)
    seen: set[int] = set()
    rows = [
        Row(f"block {block.number}", tuple(output.shape[1:]), _count(list(block.stage), seen))
        for block, output in zip(found, outputs)
    ]
    classifier = net_blocks.classifier(network)
    for block in found:
        if isinstance(block.transform, nn.Linear):
            rows.append(
                Row(f"transform {block.number}", (block.transform.out_features,), _count([block.transform], seen))
            )
    rows.append(Row("classifier", (classifier.out_features,), _count([classifier], seen)))
    other = _count([network], seen)
    if other:
        rows.append(Row("other", (), other))
    return rows


def total(rows: list[Row]) -> int:
    """The parameters of all rows."""
    return sum(row.parameters for row in rows)


def format_summary(rows: list[Row], title: str = "") -> str:
    """The rows as a text table with the total, e.g. 'block 1   32 x 64 x 64   2,432'."""
    shapes = [" x ".join(map(str, row.output_shape)) or "-" for row in rows]
    width = max(10, *(len(s) for s in shapes))
    lines = [title] if title else []
    lines.append(f"{'layer':<14}{'output shape':>{width + 2}}{'parameters':>14}")
    lines += [f"{row.name:<14}{shape:>{width + 2}}{row.parameters:>14,}" for row, shape in zip(rows, shapes)]
    lines.append(f"{'total':<14}{'':>{width + 2}}{total(rows):>14,}")
    return "\n".join(lines)
