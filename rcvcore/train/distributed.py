"""Data-parallel helpers for runs under ``torchrun`` (DDP; gloo on CPU, NCCL on CUDA).

Outside ``torchrun`` (``WORLD_SIZE`` unset or 1) every helper is a no-op and the run is a plain
single process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..extract import resolve_device


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank, number of processes, local rank."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes the run directory."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device_pref: str) -> tuple[Dist, torch.device]:
    """Join the process group of ``torchrun`` (if any) and pick this process's device.

    Args:
        device_pref: the run's configured device (``auto``, ``cpu``, ``cuda`` ...); under DDP on
            CUDA each process takes ``cuda:LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), resolve_device(device_pref)
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
        dist.barrier()


def allreduce(d: Dist, values: list[float], device) -> list[float]:
    """Sum ``values`` over the processes (identity in a single process)."""
    if not d.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64,
                     device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def epoch_batches(n: int, batch: int, seed: int, epoch: int, d: Dist) -> list[list[int]]:
    """This process's batches of epoch ``epoch``: a permutation fixed by (seed, epoch), split
    across processes, cut into batches; a trailing batch of one image is dropped (BatchNorm)."""
    g = torch.Generator().manual_seed(int(seed) * 1000 + int(epoch))
    perm = torch.randperm(n, generator=g).tolist()
    if d.world > 1:
        pad = (-len(perm)) % d.world
        perm = perm + perm[:pad]
        perm = perm[d.rank::d.world]
    batches = [perm[i:i + batch] for i in range(0, len(perm), batch)]
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches.pop()
    return batches
