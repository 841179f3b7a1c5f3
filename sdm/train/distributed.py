"""Who this training process is (rank, world size, device) and the torch.distributed helpers.

The loop uses plain ``torch.distributed``: under Ray, ``TorchTrainer`` sets up
the process group; in tests ``init_process_group`` is called directly (gloo on
CPU, nccl on CUDA). One process with no process group is world size 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class WorkerContext:
    """This process's place in the worker group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_process_group(cls, device: torch.device | str | None = None, local_rank: int | None = None
                           ) -> WorkerContext:
        """The context of an initialised process group (or a single process when there is none)."""
        if dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
        else:
            rank, world = 0, 1
        local = rank if local_rank is None else local_rank
        if device is None:
            device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
        return cls(rank=rank, world_size=world, local_rank=local, device=torch.device(device))


def barrier(ctx: WorkerContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(values: torch.Tensor, ctx: WorkerContext) -> torch.Tensor:
    """Sum a float64 tensor over all ranks (a no-op for one process)."""
    if ctx.distributed:
        backend = dist.get_backend()
        # nccl needs the tensor on the GPU; gloo works on CPU.
        dev = ctx.device if backend == "nccl" else torch.device("cpu")
        out = values.to(dev)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.cpu()
    return values


def broadcast_flag(flag: bool, ctx: WorkerContext) -> bool:
    """Rank 0's boolean, on every rank."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.to(ctx.device)
    dist.broadcast(t, src=0)
    return bool(t.item() > 0.5)
