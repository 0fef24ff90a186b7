"""The training loop: Adam, a per-epoch learning-rate schedule, an optional moving average of the weights, DDP.

`Trainer` runs epochs over loaders; `checkpointing.CheckpointTrainer` adds resuming and
atomic checkpoints after every epoch.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from wtl.data import augment as augmentations
from wtl.nets.seed import NetworkMultiLoss
from wtl.training.distributed import DistInfo, broadcast_buffers, reduce_sums
from wtl.training.registry import SCHEDULES


@dataclass(frozen=True)
class Freeze:
    """--freeze-backbone: for the first `epochs` epochs only the head trains.

    The backbone's parameters get no gradient (Adam leaves them alone) and its modules stay in
    eval mode, so that its batch-norm statistics do not move either: the features are fixed.
    """

    epochs: int
    parameters: Sequence[nn.Parameter]
    modules: Sequence[nn.Module]


def to_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch from a loader as network input: float in [0, 1] on the device."""
    images = images.to(device, non_blocking=True)
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


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
        freeze: Freeze | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.freeze = freeze
        self.frozen = False
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
            if self.frozen and self.freeze is not None:
                for module in self.freeze.modules:
                    module.eval()
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

    def freeze_for(self, epoch: int) -> bool:
        """Freeze the backbone for epoch `epoch` (0-based) if it is among the first --freeze-backbone ones."""
        self.frozen = self.freeze is not None and epoch < self.freeze.epochs
        if self.freeze is not None:
            for parameter in self.freeze.parameters:
                parameter.requires_grad_(not self.frozen)
        return self.frozen

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
