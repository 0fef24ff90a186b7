"""Training in several processes with PyTorch's own engine: torchrun + DistributedDataParallel.

    torchrun --standalone --nproc_per_node=4 model_main.py --dataset malaria --data-dir ~/cell_images ...

torchrun starts one process per GPU (or per share of the CPU) and tells each its
place through the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).
A plain `python model_main.py` run has none of these and gets a DistInfo of one
process and no process group at all, so it behaves exactly as before.

WTL_SHARD_LOG=<folder> (a test aid, off by default) makes every rank write the
training-set indices its sampler gives it in epoch 1 to <folder>/rank{r}.json.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler, Subset

from wtl.errors import UsageError
from wtl.runtime import pick_device

SHARD_LOG_ENV = "WTL_SHARD_LOG"


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank among world_size processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0 alone prints, writes checkpoints, the manifest and the metrics."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when this process trains together with others (DDP, sharded data, reduced metrics)."""
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher that speaks its language) started this process."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def env_rank() -> int:
    """This process's global rank as torchrun says it (0 outside torchrun), before any setup."""
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


def setup(device_name: str = "auto") -> DistInfo:
    """Join torchrun's process group (nccl on CUDA, gloo on the CPU), or describe a plain run."""
    if not launched_by_torchrun():
        return DistInfo(device=pick_device(device_name))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if device_name == "mps":
        raise UsageError("torchrun trains on CUDA GPUs or the CPU; Apple MPS has no distributed backend")
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        device = pick_device("cuda")  # says so in one line if there is no GPU
        if local_rank >= torch.cuda.device_count():
            raise UsageError(
                f"torchrun started process {local_rank} on this machine, but it has only "
                f"{torch.cuda.device_count()} GPU(s): pass --nproc_per_node={torch.cuda.device_count()} or less"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)  # NCCL and every default-device tensor then use this process's own GPU
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        # device_id binds NCCL to this process's GPU at once (barriers then need no guess).
        options = {"backend": "nccl", "device_id": device} if use_cuda else {"backend": "gloo"}
        dist.init_process_group(rank=rank, world_size=world_size, **options)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def cleanup() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    """True outside torchrun and on rank 0 inside it."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    """Wait until every process gets here (nothing to wait for in a plain run)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _collective_device() -> torch.device:
    # NCCL reduces CUDA tensors only, gloo CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def reduce_sums(values: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `values` over every process, as a float64 CPU tensor."""
    totals = torch.as_tensor(values, dtype=torch.float64).detach().cpu()
    if not (dist.is_available() and dist.is_initialized()):
        return totals
    totals = totals.to(_collective_device())
    dist.all_reduce(totals, op=dist.ReduceOp.SUM)
    return totals.cpu()


def broadcast_buffers(module: nn.Module) -> None:
    """Give every process rank 0's buffers (batch-norm running statistics).

    Each rank updates its running statistics with its own batches; after an epoch's
    training they differ slightly, and validation should judge the weights that rank 0
    saves, not a rank-specific mix.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


def train_sampler(dataset: Dataset, info: DistInfo, seed: int) -> DistributedSampler:
    """This rank's shard of the training set, reshuffled each epoch (set_epoch) from the run's seed.

    drop_last=False pads the last round with a few repeated indices so that every
    rank runs the same number of steps (DDP needs that); an even split has no padding.
    """
    return DistributedSampler(
        dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed, drop_last=False
    )


def eval_shard(dataset: Dataset, info: DistInfo) -> Dataset:
    """Every world_size-th item from this rank's offset: disjoint, no padding, together the whole set.

    Unlike DistributedSampler this repeats nothing, so sums reduced over the ranks
    count every validation image exactly once.
    """
    if info.world_size == 1:
        return dataset
    return Subset(dataset, range(info.rank, len(dataset), info.world_size))  # type: ignore[arg-type]


def log_shard(sampler: Iterable[int] | None, info: DistInfo, size: int) -> Path | None:
    """Test aid: write the indices this rank trains on in epoch 1 to $WTL_SHARD_LOG/rank{r}.json."""
    folder = os.environ.get(SHARD_LOG_ENV)
    if not folder:
        return None
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(0)  # epoch 1's order; the trainer sets the same epoch again
        indices = [int(i) for i in sampler]
    else:
        indices = list(range(size))  # a single process trains on everything (its shuffle is not drawn here)
    path = Path(folder) / f"rank{info.rank}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rank": info.rank, "world_size": info.world_size, "indices": indices}) + "\n")
    return path
