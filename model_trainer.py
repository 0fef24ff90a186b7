"""Training loop, metrics, and checkpoints that resume where a run stopped."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

import augment as augmentations
from distributed import DistInfo, barrier, broadcast_buffers, reduce_sums
from model_network import NetworkMultiLoss
from weights import CheckpointError, load_checkpoint, save_checkpoint


def to_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch from a loader as network input: float in [0, 1] on the device."""
    images = images.to(device, non_blocking=True)
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


# Kept under its old name: the cell augmentation now lives in augment.py with the others.
dihedral_augment = augmentations.dihedral

SCHEDULES = ("exponential", "cosine")


def pick_amp_dtype(device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for --amp: bf16 on CUDA GPUs that have it, fp16 on older ones, None elsewhere."""
    device = torch.device(device)
    if device.type != "cuda":
        return None  # CPU autocast would be bf16 emulation on most CPUs: slower, not faster
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class Trainer:
    """Adam training of a Network or NetworkMultiLoss (optionally every-block loss), one LR step per epoch.

    The learning rate decays per epoch: exponentially by `gamma` (the original project's
    schedule) or along a cosine to 1 % of `lr` over `total_epochs`. With `ema_decay` an
    exponential moving average of the weights (and batch-norm statistics) follows every
    step (see `ema_update`); validation then judges the average.
    With `dist` (from distributed.setup() under torchrun) the network trains wrapped in
    DistributedDataParallel; `self.network` stays the plain module, whose state_dict
    (no `module.` or `_orig_mod.` prefixes) is what checkpoints hold.
    """

    def __init__(
        self,
        network: nn.Module,
        loss_function: nn.Module,
        every_layer_loss: bool = False,
        lr: float = 1e-4,
        gamma: float = 0.95,
        device: torch.device | str = "cpu",
        augment: bool | augmentations.Augment | None = False,
        show_progress: bool = True,
        dist: DistInfo | None = None,
        amp_dtype: torch.dtype | None = None,
        channels_last: bool = False,
        compile_model: bool = False,
        schedule: str = "exponential",
        total_epochs: int | None = None,
        ema_decay: float | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.dist = dist or DistInfo(device=self.device)
        self.memory_format = torch.channels_last if channels_last else None
        self.network = network.to(self.device)
        if self.memory_format is not None:
            self.network = self.network.to(memory_format=self.memory_format)
        self.loss_function = loss_function
        self.every_layer_loss = every_layer_loss
        # True is the cell augmentation, for callers from before augment.py had others.
        self.augment = augmentations.dihedral if augment is True else augment or None
        self.show_progress = show_progress and self.dist.is_main
        self.optim = torch.optim.Adam(self.network.parameters(), lr=lr)
        self.scheduler = make_scheduler(self.optim, schedule, gamma, total_epochs)
        self.ema = (
            AveragedModel(self.network, multi_avg_fn=ema_update(ema_decay), use_buffers=True) if ema_decay else None
        )
        self.amp_dtype = amp_dtype
        # Only fp16 needs loss scaling; bf16 has float32's exponent range.
        self.scaler = torch.amp.GradScaler(self.device.type) if amp_dtype == torch.float16 else None
        # self.model is what training steps call: the network, DDP-wrapped under torchrun,
        # compiled with --compile. Validation and predict() call self.network itself.
        self.model: nn.Module = self.network
        if self.dist.enabled:
            # A NetworkMultiLoss trained on its last block's loss never uses transform1-3;
            # DDP must be told, or it waits forever for their gradients.
            unused = isinstance(network, NetworkMultiLoss) and not every_layer_loss
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.network, device_ids=device_ids, find_unused_parameters=unused)
        self._eager = self.model
        if compile_model:
            self.model = cast(nn.Module, torch.compile(self.model))  # lazily: errors show at the first step

    def _loss_and_logits(
        self, images: torch.Tensor, labels: torch.Tensor, model: nn.Module | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.network if model is None else model
        with self._autocast():
            if self.every_layer_loss:
                outputs = model(images, return_outputs=True)
                # The sum of the four heads' losses: every block must classify on its own.
                loss = sum(self.loss_function(logits, labels) for _, logits in outputs)
                return loss, outputs[-1][1]  # accuracy is the last block's
            logits = model(images)
            return self.loss_function(logits, labels), logits

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        images = to_input(images, self.device)
        if self.memory_format is not None:
            images = images.contiguous(memory_format=self.memory_format)
        return images

    @property
    def evaluated(self) -> nn.Module:
        """The weights that validation judges and the best checkpoint keeps: the EMA's, else the network's."""
        return self.ema.module if self.ema is not None else self.network

    def _backward_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.optim.zero_grad(set_to_none=True)
        loss, logits = self._loss_and_logits(images, labels, self.model)
        if self.scaler is None:
            loss.backward()
            self.optim.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optim)
            self.scaler.update()
        if self.ema is not None:
            self.ema.update_parameters(self.network)
        return loss.detach(), logits.detach()

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on a batch on the device, in the network's current mode; (loss, logits)."""
        if self.model is self._eager:
            return self._backward_step(images, labels)
        try:
            return self._backward_step(images, labels)
        except Exception as error:
            # torch.compile fails late and in many ways (no C compiler, an unsupported
            # op, a backend bug); the uncompiled model computes the same thing. A real
            # error of the model itself happens again below and is raised from there.
            first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            if self.dist.is_main:
                print(f"note: torch.compile failed, training uncompiled ({first})", file=sys.stderr)
            self.model = self._eager
            return self._backward_step(images, labels)

    def epoch(
        self, loader: Iterable, training: bool, description: str = "", network: nn.Module | None = None
    ) -> tuple[float, float]:
        """One pass over the loader; returns (mean loss per image, accuracy in %), over every process.

        Validation judges `network` if given, else `self.evaluated` (the EMA weights when on).
        """
        judged = network if network is not None else self.evaluated
        if training:
            self.model.train()
        else:
            judged.eval()
        # Sums stay on the device: reading them every step would make the GPU wait for the CPU.
        sums = torch.zeros(3, dtype=torch.float32 if self.device.type == "mps" else torch.float64, device=self.device)
        bar = tqdm(loader, desc=description, leave=False, disable=not self.show_progress, dynamic_ncols=True)
        with torch.set_grad_enabled(training):
            for step, (images, labels) in enumerate(bar):
                images = self._input(images)
                labels = labels.to(self.device).reshape(-1)
                if training:
                    if self.augment is not None:
                        images = self.augment(images)
                    loss, logits = self.train_step(images, labels)
                else:
                    loss, logits = self._loss_and_logits(images, labels, judged)
                sums[0] += loss.to(sums.dtype) * len(labels)
                sums[1] += (logits.argmax(1) == labels).sum()
                sums[2] += len(labels)
                if self.show_progress and step % 10 == 0:
                    total_loss, correct, seen = sums.tolist()
                    bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{100.0 * correct / seen:.2f}%")
        if training and self.dist.enabled:
            broadcast_buffers(self.network)  # rank 0's batch-norm statistics, the ones it saves
        if self.dist.enabled:
            sums = reduce_sums(sums)  # every rank's (loss sum, correct, count): figures of the whole split
        total_loss, correct, count = sums.tolist()
        if count == 0:
            raise ValueError("the loader yielded no images")
        return total_loss / count, 100.0 * correct / count

    @torch.no_grad()
    def predict(self, loader: Iterable) -> tuple[torch.Tensor, torch.Tensor]:
        """(true labels, predicted labels) of every image in the loader, in eval mode."""
        self.network.eval()
        truths, predictions = [], []
        for images, labels in loader:
            logits = self.network(self._input(images))
            truths.append(labels.reshape(-1).cpu())
            predictions.append(logits.argmax(1).cpu())
        return torch.cat(truths), torch.cat(predictions)


Tensors = list[torch.Tensor] | tuple[torch.Tensor, ...]


def ema_update(decay: float) -> Callable[[Tensors, Tensors, torch.Tensor | int], None]:
    """The moving-average step for AveragedModel: ema = d_n * ema + (1 - d_n) * weights after update n.

    d_n = min(decay, (1 + n) / (10 + n)) (n updates so far; the first update copies the
    weights), as TensorFlow's ExponentialMovingAverage does with num_updates: without the
    ramp, a slow average would still be mostly the random initial weights (and their
    batch-norm statistics) for thousands of steps, and validate at chance level.
    """

    def update(averages: Tensors, current: Tensors, updates: torch.Tensor | int) -> None:
        n = float(updates)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        if averages[0].is_floating_point():
            torch._foreach_lerp_(list(averages), list(current), weight)
        else:  # batch-norm's step counters: integers, kept as the network's own
            for average, value in zip(averages, current):
                average.copy_(value)

    return update


def make_scheduler(
    optim: torch.optim.Optimizer, schedule: str, gamma: float, total_epochs: int | None
) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-epoch learning-rate schedule: 'exponential' (lr * gamma^epoch) or 'cosine' (to 1 % over the run)."""
    if schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optim, gamma)
    if schedule == "cosine":
        if not total_epochs:
            raise ValueError("the cosine schedule needs the run's total number of epochs")
        base = optim.param_groups[0]["lr"]
        return torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=total_epochs, eta_min=base / 100)
    raise ValueError(f"unknown schedule {schedule!r} (expected one of {', '.join(SCHEDULES)})")


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
        **trainer_options: Any,
    ) -> None:
        trainer_options.setdefault("total_epochs", epochs)
        super().__init__(network, loss_function, every_layer_loss, **trainer_options)
        self.chkpt_path = Path(chkpt_path)
        self.best_path = self.chkpt_path.with_suffix(".best.pt")
        self.epochs = epochs
        self.metadata = dict(metadata or {})
        self.seed = seed
        self.ep = 0
        self.best_val_acc: float | None = 0.0
        self.history: list[dict[str, Any]] = []  # every epoch's row, kept across resumes for the metrics file
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
        for key in ("network", "loss", "dataset", "image_size", "class_names", "preprocess", "ema", "schedule"):
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
            train_loss, train_acc = self.epoch(loader_train, True, f"{label} train")
            row: dict[str, Any] = {"epoch": self.ep + 1, "train_loss": train_loss, "train_acc": train_acc}
            if loader_val is not None:
                val_loss, val_acc = self.epoch(loader_val, False, f"{label} val")
                row.update(val_loss=val_loss, val_acc=val_acc)
                if self.ema is not None:
                    # The raw weights too, so that a run shows whether the average helped.
                    row["val_loss_raw"], row["val_acc_raw"] = self.epoch(loader_val, False, "", self.network)
                improved = self.best_val_acc is None or val_acc > self.best_val_acc or not self.best_path.exists()
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
