"""Data-parallel helpers for runs under ``torchrun`` (DDP; gloo on CPU, NCCL on CUDA): the
process group itself is :mod:`rcvcore._dist`'s (shared with the sharded scan); this module adds
the training batches of each process.

Outside ``torchrun`` (``WORLD_SIZE`` unset or 1) every helper is a no-op and the run is a plain
single process.
"""
from __future__ import annotations

import torch

from .._dist import Dist, allreduce, barrier, init_distributed

__all__ = ["Dist", "allreduce", "barrier", "epoch_batches", "init_distributed"]


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
