"""A Trainer that resumes where a run stopped and writes its checkpoint atomically after every epoch."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DistributedSampler

from wtl import names
from wtl.checkpoints.io import load_checkpoint, save_checkpoint
from wtl.errors import CheckpointError
from wtl.training.distributed import barrier
from wtl.training.trainer import Trainer


class CheckpointTrainer(Trainer):
    """A Trainer that resumes from chkpt_path and writes it atomically after every epoch.

    The checkpoint holds the latest epoch's state (to resume); the best-validation
    weights go to `<name>.best.pt` beside it, without optimizer state (for inference).
    With EMA on, those are the averaged weights. Without a validation split, the last
    epoch's weights count as best.
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
        select_best: bool = True,
        **trainer_options: Any,
    ) -> None:
        trainer_options.setdefault("total_epochs", epochs)
        super().__init__(network, loss_function, every_layer_loss, **trainer_options)
        self.chkpt_path = Path(chkpt_path)
        self.best_path = names.best_file(self.chkpt_path)
        self.epochs = epochs
        self.metadata = dict(metadata or {})
        self.seed = seed
        # False: every epoch replaces the best weights (a shuffled-label model is meant to memorise,
        # and its validation accuracy on true labels cannot choose among epochs).
        self.select_best = select_best
        self.ep = 0
        self.best_val_acc: float | None = 0.0
        self.history: list[dict[str, Any]] = []  # every epoch's row, kept across resumes for the metrics file
        if self.dist.is_main:
            self._remove_partial_writes()
        if resume and self.chkpt_path.exists():
            self._resume()

    def _remove_partial_writes(self) -> None:
        """Delete the temporary files of a write that a killed run left behind (save_checkpoint's `.x.pt.*.part`).

        A kill during save_checkpoint cannot clean up after itself; the checkpoint it was replacing is intact.
        """
        for target in (self.chkpt_path, self.best_path):
            for stale in target.parent.glob(f".{target.name}.*.part"):
                stale.unlink(missing_ok=True)

    def _resume(self) -> None:
        checkpoint = load_checkpoint(self.chkpt_path)
        missing = {"optim_state_dict", "scheduler_state_dict", "epoch"} - checkpoint.keys()
        if missing:
            raise CheckpointError(
                f"{self.chkpt_path}: cannot resume, the checkpoint lacks {', '.join(sorted(missing))} "
                "(pass --restart to train a new model over it, or another --models-dir)"
            )
        keys = (
            "network",
            "loss",
            "dataset",
            "image_size",
            "class_names",
            "preprocess",
            "ema",
            "schedule",
            "architecture",
            "arch",
            "pretrained",
            "freeze_backbone",
            "shuffled_labels",
        )
        for key in keys:
            if key in checkpoint and key in self.metadata and checkpoint[key] != self.metadata[key]:
                raise CheckpointError(
                    f"{self.chkpt_path}: was trained with {key}={checkpoint[key]!r}, this run asks for "
                    f"{self.metadata[key]!r} (pass --restart to replace it, or another --models-dir)"
                )
        try:
            self.network.load_state_dict(checkpoint["net_state_dict"], strict=True)
            self.optim.load_state_dict(checkpoint["optim_state_dict"])
            self.scheduler.load_state_dict(checkpoint["scheduler_state_dict"])
            if self.ema is not None:
                if "ema_state_dict" not in checkpoint:
                    raise KeyError("it holds no moving average of the weights (trained without --ema)")
                self.ema.load_state_dict(checkpoint["ema_state_dict"])
        except (RuntimeError, ValueError, KeyError) as error:
            first = str(error).strip().strip("'\"").splitlines()[0]
            raise CheckpointError(f"{self.chkpt_path}: does not match this network, cannot resume ({first})") from None
        self.ep = int(checkpoint["epoch"])
        self.history = [dict(row) for row in checkpoint.get("history", [])]
        best = checkpoint.get("best_val_acc", 0.0)
        self.best_val_acc = None if best is None else float(best)
        if not self.dist.is_main:
            return
        if self.ep >= self.epochs:
            print(
                f"{self.chkpt_path} has been trained for all {self.ep} of {self.epochs} epochs: nothing to train "
                "(pass a higher --epochs to go on, or --restart to start over)",
                file=sys.stderr,
            )
        else:
            print(f"resuming {self.chkpt_path} after epoch {self.ep} of {self.epochs}", file=sys.stderr)

    def _state(self) -> dict[str, Any]:
        state = {
            "net_state_dict": self.network.state_dict(),
            "optim_state_dict": self.optim.state_dict(),
            "scheduler_state_dict": self.scheduler.state_dict(),
            "best_val_acc": self.best_val_acc,
            "epoch": self.ep,
            "history": self.history,
            **self.metadata,
        }
        if self.ema is not None:
            state["ema_state_dict"] = self.ema.state_dict()
        return state

    def _best_state(self) -> dict[str, Any]:
        """What `<name>.best.pt` holds: the judged weights and the metadata, no resume state."""
        resume_only = ("optim_state_dict", "scheduler_state_dict", "ema_state_dict", "history")
        best = {k: v for k, v in self._state().items() if k not in resume_only}
        best["net_state_dict"] = self.evaluated.state_dict()
        return best

    def train(self, loader_train: Iterable, loader_val: Iterable | None) -> list[dict[str, Any]]:
        """Run the epochs still missing up to self.epochs; returns one history row per epoch run now.

        `self.history` holds the rows of every epoch, those of earlier runs that this one resumed included.

        With `loader_val` None there is nothing to choose by: every epoch's weights
        replace the best ones, so the last epoch's count, and best_val_acc is None.
        """
        history: list[dict[str, Any]] = []
        sampler = getattr(loader_train, "sampler", None)
        while self.ep < self.epochs:
            # Seeding per epoch makes a resumed run draw the same shuffles and
            # augmentations as one that never stopped. Under torchrun each rank draws its
            # own augmentations and dropout (rank 0 those of a single process), and the
            # DistributedSampler its own epoch's shard of one shuffle seeded by the run.
            torch.manual_seed(self.seed * 100_003 + self.ep + 1_000_003 * self.dist.rank)
            if isinstance(sampler, DistributedSampler):
                sampler.set_epoch(self.ep)
            label = f"epoch {self.ep + 1}/{self.epochs}"
            # From the epoch number alone: a resumed run freezes exactly where one that never stopped did.
            frozen = self.freeze_for(self.ep)
            wall, cpu = time.perf_counter(), time.process_time()
            train_loss, train_acc = self.epoch(
                loader_train, True, f"{label} train" + (" (head only)" if frozen else "")
            )
            row: dict[str, Any] = {"epoch": self.ep + 1, "train_loss": train_loss, "train_acc": train_acc}
            # The training pass's own cost (validation left out): wall time, and CPU time of this process.
            row.update(seconds=time.perf_counter() - wall, cpu_seconds=time.process_time() - cpu)
            if frozen:
                row["frozen_backbone"] = True
            if loader_val is not None:
                val_loss, val_acc = self.epoch(loader_val, False, f"{label} val")
                row.update(val_loss=val_loss, val_acc=val_acc)
                if self.ema is not None:
                    # The raw weights too, so that a run shows whether the average helped.
                    row["val_loss_raw"], row["val_acc_raw"] = self.epoch(loader_val, False, "", self.network)
                improved = (
                    not self.select_best
                    or self.best_val_acc is None
                    or val_acc > self.best_val_acc
                    or not self.best_path.exists()
                )
                self.best_val_acc = val_acc if improved else self.best_val_acc
            else:
                improved, self.best_val_acc = True, None
            self.scheduler.step()
            self.ep += 1
            self.history.append(row)
            if self.dist.is_main:
                save_checkpoint(self._state(), self.chkpt_path)
                if improved:
                    save_checkpoint(self._best_state(), self.best_path)
            if self.dist.enabled:
                barrier()  # the other ranks wait until rank 0's checkpoint is complete, then go on or exit
            history.append(row)
            if self.dist.is_main:
                best_mark = " (best)" if improved and loader_val is not None else ""
                print(f"{label}: {_history_line(row)}{best_mark}", file=sys.stderr)
        return history


def _history_line(row: dict[str, Any]) -> str:
    """One epoch's figures as the line the trainer prints."""
    line = f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}%"
    if "val_acc" in row:
        line += f" | val loss {row['val_loss']:.4f} acc {row['val_acc']:.2f}%"
    if "val_acc_raw" in row:
        line += f" (without EMA {row['val_acc_raw']:.2f}%)"
    return line
