"""torch.distributed as launched by ``torchrun``: one process per device, on one machine or many.

A plain ``python -m rcvcore ...`` is a world of one and touches nothing of torch.distributed.
Under ``torchrun`` each process reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``, takes one GPU
(``cuda:LOCAL_RANK``, NCCL) or a share of the CPU cores (gloo), and joins the process group.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ._shared import resolve_device


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (a world of one when not launched by torchrun)."""

    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_pref: str = "auto") -> tuple[Dist, torch.device]:
    """Join the torchrun job (if any) and pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), resolve_device(device_pref)
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_pref)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:  # share the cores between the local processes instead of oversubscribing them
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local), device


def barrier(d: Dist) -> None:
    if d.enabled:
        import torch.distributed as dist

        dist.barrier()


def allreduce(d: Dist, values: list[float], device) -> list[float]:
    """Sum ``values`` over the processes."""
    if not d.enabled:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64,
                     device=device if torch.device(device).type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def broadcast(d: Dist, obj):
    """Rank 0's ``obj`` on every process."""
    if not d.enabled:
        return obj
    import torch.distributed as dist

    box = [obj if d.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(d: Dist, obj) -> list | None:
    """Every process's ``obj`` on rank 0 (in rank order); ``None`` on the other ranks."""
    if not d.enabled:
        return [obj]
    import torch.distributed as dist

    out = [None] * d.world if d.main else None
    dist.gather_object(obj, out, dst=0)
    return out
