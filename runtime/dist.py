"""Ranks and devices of this process: torchrun's environment, or a single process. Both training and evaluation
(every rank scoring its share of the views) start here."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def device_id(self) -> int | None:
        return self.device.index if self.device.type == "cuda" else None


def setup_distributed(device: str = "auto") -> Dist:
    """torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) when present; a single process otherwise."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("config key 'device' is cuda, but CUDA is not available")
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank, local = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, local, dev)
