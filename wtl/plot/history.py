"""The training history as the Keras document draws it: loss and accuracy per epoch, training beside validation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from wtl.plot.style import DPI

# (key in a history row, legend label, line style); validation of the raw weights only exists with --ema.
CURVES = {
    "loss": (
        ("train_loss", "training", "-"),
        ("val_loss", "validation", "-"),
        ("val_loss_raw", "validation, raw", ":"),
    ),
    "accuracy": (
        ("train_acc", "training", "-"),
        ("val_acc", "validation", "-"),
        ("val_acc_raw", "validation, raw", ":"),
    ),
}


def history_figure(history: Sequence[Mapping[str, Any]], title: str = "") -> Figure:
    """Two panels, loss and accuracy (%), one marker per epoch of `history` (the trainer's rows, resumes included)."""
    if not history:
        raise ValueError("the history has no epochs")
    fig = Figure(figsize=(9.0, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, (quantity, curves) in zip(axes, CURVES.items()):
        for key, label, style in curves:
            points = [(int(row["epoch"]), float(row[key])) for row in history if key in row]
            if points:
                epochs, values = zip(*points)
                ax.plot(epochs, values, style, marker="o", markersize=4, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy (%)" if quantity == "accuracy" else "loss (cross-entropy per image)")
        ax.set_title(quantity)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        # Whole epochs only: a fractional tick would suggest a measurement between epochs.
        ax.xaxis.get_major_locator().set_params(integer=True)
    validated = [row for row in history if "val_acc" in row]
    if validated:
        # The epoch whose weights <name>.best.pt keeps (the first of equals, as the trainer keeps it).
        best = max(validated, key=lambda row: (float(row["val_acc"]), -int(row["epoch"])))
        for ax in axes:
            ax.axvline(int(best["epoch"]), color="grey", linestyle="--", linewidth=0.8)
        axes[1].annotate(
            f"best validation: epoch {int(best['epoch'])}",
            (int(best["epoch"]), float(best["val_acc"])),
            textcoords="offset points",
            xytext=(-4, -14),
            ha="right",
            fontsize=8,
            color="grey",
        )
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def save_history(history: Sequence[Mapping[str, Any]], path: Path, title: str = "") -> Path:
    """Draw the history and write it to `path` (a PNG); returns the path."""
    history_figure(history, title).savefig(path, dpi=DPI)
    return path
