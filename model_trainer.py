"""Training loop, metrics, and checkpoints that resume where a run stopped."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from weights import CheckpointError, load_checkpoint, save_checkpoint


def to_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch from a loader as network input: float in [0, 1] on the device."""
    images = images.to(device, non_blocking=True)
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def dihedral_augment(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random flips and 90-degree turns per image (the 8 symmetries of a square).

    A blood cell has no 'up': every turn or mirror image of it is just as real, so
    this multiplies the data eightfold without inventing anything. Done on the batch
    tensor (three masked selects) instead of per image, so it costs next to nothing.
    """
    n = images.shape[0]
    masks = torch.rand((3, n, 1, 1, 1), generator=generator).to(images.device) < 0.5
    images = torch.where(masks[0], images.flip(-1), images)
    images = torch.where(masks[1], images.flip(-2), images)
    if images.shape[-1] == images.shape[-2]:
        images = torch.where(masks[2], images.transpose(-1, -2), images)
    return images


class Trainer:
    """Adam + ExponentialLR training of a Network or NetworkMultiLoss (optionally every-block loss)."""

    def __init__(
        self,
        network: nn.Module,
        loss_function: nn.Module,
        every_layer_loss: bool = False,
        lr: float = 1e-4,
        gamma: float = 0.95,
        device: torch.device | str = "cpu",
        augment: bool = False,
        show_progress: bool = True,
    ) -> None:
        self.device = torch.device(device)
        self.network = network.to(self.device)
        self.loss_function = loss_function
        self.every_layer_loss = every_layer_loss
        self.augment = augment
        self.show_progress = show_progress
        self.optim = torch.optim.Adam(self.network.parameters(), lr=lr)
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optim, gamma)

    def _loss_and_logits(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.every_layer_loss:
            outputs = self.network(images, return_outputs=True)
            # The sum of the four heads' losses: every block must classify on its own.
            loss = sum(self.loss_function(logits, labels) for _, logits in outputs)
            return loss, outputs[-1][1]  # accuracy is the last block's
        logits = self.network(images)
        return self.loss_function(logits, labels), logits

    def epoch(self, loader: Iterable, training: bool, description: str = "") -> tuple[float, float]:
        """One pass over the loader; returns (mean loss per image, accuracy in %)."""
        self.network.train(training)
        total_loss, correct, count = 0.0, 0, 0
        bar = tqdm(loader, desc=description, leave=False, disable=not self.show_progress, dynamic_ncols=True)
        with torch.set_grad_enabled(training):
            for images, labels in bar:
                images = to_input(images, self.device)
                labels = labels.to(self.device).reshape(-1)
                if training and self.augment:
                    images = dihedral_augment(images)
                loss, logits = self._loss_and_logits(images, labels)
                if training:
                    self.optim.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optim.step()
                total_loss += loss.item() * len(labels)
                correct += int((logits.argmax(1) == labels).sum())
                count += len(labels)
                bar.set_postfix(loss=f"{total_loss / count:.4f}", acc=f"{100.0 * correct / count:.2f}%")
        if count == 0:
            raise ValueError("the loader yielded no images")
        return total_loss / count, 100.0 * correct / count

    @torch.no_grad()
    def predict(self, loader: Iterable) -> tuple[torch.Tensor, torch.Tensor]:
        """(true labels, predicted labels) of every image in the loader, in eval mode."""
        self.network.eval()
        truths, predictions = [], []
        for images, labels in loader:
            logits = self.network(to_input(images, self.device))
            truths.append(labels.reshape(-1).cpu())
            predictions.append(logits.argmax(1).cpu())
        return torch.cat(truths), torch.cat(predictions)


def classification_report(truth: torch.Tensor, predicted: torch.Tensor, class_names: list[str]) -> dict[str, Any]:
    """Accuracy, confusion matrix (rows: true class) and per-class precision/recall/F1."""
    n = len(class_names)
    confusion = torch.zeros((n, n), dtype=torch.long)
    confusion.index_put_((truth.long(), predicted.long()), torch.ones_like(truth, dtype=torch.long), accumulate=True)
    per_class = {}
    for i, name in enumerate(class_names):
        true_positive = int(confusion[i, i])
        predicted_i = int(confusion[:, i].sum())
        actual_i = int(confusion[i, :].sum())
        precision = true_positive / predicted_i if predicted_i else 0.0
        recall = true_positive / actual_i if actual_i else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": actual_i}
    total = int(confusion.sum())
    return {
        "accuracy": float(confusion.diag().sum()) / total if total else 0.0,
        "images": total,
        "class_names": list(class_names),
        "confusion_matrix": confusion.tolist(),
        "per_class": per_class,
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as the text table that notebook 003 of the seed prints."""
    names = report["class_names"]
    width = max(12, *(len(n) for n in names))
    lines = [
        f"accuracy: {100 * report['accuracy']:.2f}% on {report['images']} images",
        "",
        "confusion matrix (rows: true, columns: predicted)",
    ]
    lines.append(" " * width + "".join(f"{n:>{width}}" for n in names))
    for name, row in zip(names, report["confusion_matrix"]):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>{width}}" for v in row))
    lines += ["", f"{'':<{width}}{'precision':>10}{'recall':>10}{'f1-score':>10}{'support':>10}"]
    for name in names:
        m = report["per_class"][name]
        lines.append(f"{name:<{width}}{m['precision']:>10.3f}{m['recall']:>10.3f}{m['f1']:>10.3f}{m['support']:>10d}")
    return "\n".join(lines)


class CheckpointTrainer(Trainer):
    """A Trainer that resumes from chkpt_path and writes it atomically after every epoch.

    The checkpoint holds the latest epoch's state (to resume); the best-validation
    weights go to `<name>.best.pt` beside it, without optimizer state (for inference).
    """

    def __init__(
        self,
        network: nn.Module,
        loss_function: nn.Module,
        chkpt_path: str | Path,
        epochs: int,
        every_layer_loss: bool = False,
        metadata: dict[str, Any] | None = None,
        seed: int = 0,
        resume: bool = True,
        **trainer_options: Any,
    ) -> None:
        super().__init__(network, loss_function, every_layer_loss, **trainer_options)
        self.chkpt_path = Path(chkpt_path)
        self.best_path = self.chkpt_path.with_suffix(".best.pt")
        self.epochs = epochs
        self.metadata = dict(metadata or {})
        self.seed = seed
        self.ep = 0
        self.best_val_acc = 0.0
        if resume and self.chkpt_path.exists():
            self._resume()

    def _resume(self) -> None:
        checkpoint = load_checkpoint(self.chkpt_path)
        missing = {"optim_state_dict", "scheduler_state_dict", "epoch"} - checkpoint.keys()
        if missing:
            raise CheckpointError(
                f"{self.chkpt_path}: cannot resume, the checkpoint lacks {', '.join(sorted(missing))} "
                "(pass --restart to train a new model over it, or another --models-dir)"
            )
        for key in ("network", "loss", "dataset", "image_size", "class_names"):
            if key in checkpoint and key in self.metadata and checkpoint[key] != self.metadata[key]:
                raise CheckpointError(
                    f"{self.chkpt_path}: was trained with {key}={checkpoint[key]!r}, this run asks for "
                    f"{self.metadata[key]!r} (pass --restart to replace it, or another --models-dir)"
                )
        try:
            self.network.load_state_dict(checkpoint["net_state_dict"], strict=True)
            self.optim.load_state_dict(checkpoint["optim_state_dict"])
            self.scheduler.load_state_dict(checkpoint["scheduler_state_dict"])
        except (RuntimeError, ValueError, KeyError) as error:
            first = str(error).strip().splitlines()[0]
            raise CheckpointError(f"{self.chkpt_path}: does not match this network, cannot resume ({first})") from None
        self.ep = int(checkpoint["epoch"])
        self.best_val_acc = float(checkpoint.get("best_val_acc", 0.0))
        print(f"resuming {self.chkpt_path} after epoch {self.ep} of {self.epochs}", file=sys.stderr)

    def _state(self) -> dict[str, Any]:
        return {
            "net_state_dict": self.network.state_dict(),
            "optim_state_dict": self.optim.state_dict(),
            "scheduler_state_dict": self.scheduler.state_dict(),
            "best_val_acc": self.best_val_acc,
            "epoch": self.ep,
            **self.metadata,
        }

    def train(self, loader_train: Iterable, loader_val: Iterable | None) -> list[dict[str, float]]:
        """Run the epochs still missing up to self.epochs; returns one history row per epoch run."""
        history = []
        while self.ep < self.epochs:
            # Seeding per epoch makes a resumed run draw the same shuffles and
            # augmentations as one that never stopped.
            torch.manual_seed(self.seed * 100_003 + self.ep)
            label = f"epoch {self.ep + 1}/{self.epochs}"
            train_loss, train_acc = self.epoch(loader_train, True, f"{label} train")
            if loader_val is not None:
                val_loss, val_acc = self.epoch(loader_val, False, f"{label} val")
            else:
                val_loss, val_acc = train_loss, train_acc
            self.scheduler.step()
            self.ep += 1
            improved = val_acc > self.best_val_acc or not self.best_path.exists()
            self.best_val_acc = max(self.best_val_acc, val_acc)
            save_checkpoint(self._state(), self.chkpt_path)
            if improved:
                best = {k: v for k, v in self._state().items() if k not in ("optim_state_dict", "scheduler_state_dict")}
                save_checkpoint(best, self.best_path)
            row = {
                "epoch": self.ep,
                "train_loss": train_loss,
                "train_acc": train_acc,
                "val_loss": val_loss,
                "val_acc": val_acc,
            }
            history.append(row)
            print(
                f"{label}: train loss {train_loss:.4f} acc {train_acc:.2f}% | "
                f"val loss {val_loss:.4f} acc {val_acc:.2f}%{' (best)' if improved else ''}",
                file=sys.stderr,
            )
        return history
