"""Data-parallel training under torchrun: one process per device, gradients averaged by DDP.

Launched as `torchrun --nproc_per_node N -m SAMBACore.cli train lora ...`, each process finds
RANK, WORLD_SIZE and LOCAL_RANK in its environment; without them (a plain run, or Slicer) the
same code runs as a world of one and nothing here touches torch.distributed. Backend: nccl for
CUDA, gloo on the CPU. All ranks read the same data folder and checkpoint (a shared file
system, as on one machine); only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: str = "cpu"

    @property
    def main(self) -> bool:
        """Rank 0: the one process that prints progress and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def start(device: str = "cpu") -> World:
    """Join the process group torchrun set up (if any); each rank gets its own GPU on CUDA."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(device=device)
    rank = int(os.environ["RANK"])
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device, backend = f"cuda:{local}", "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return World(rank, size, device)


def stop(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, world: World) -> nn.Module:
    """DDP around the trainable model: rank 0's weights are broadcast now, gradients averaged
    in every backward. A world of one gets the model itself."""
    if not world.distributed:
        return model
    ids = [torch.device(world.device).index] if world.device.startswith("cuda") else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def sum_over_ranks(values: list[float], world: World) -> list[float]:
    """Element-wise sum of a few numbers over all ranks (validation counts)."""
    if not world.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=world.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().tolist()

