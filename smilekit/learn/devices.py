"""Where training runs: the device (CPU, CUDA, Apple MPS) and this process's place among ``torchrun`` workers.

One process on the CPU is the default and needs none of this. Under ``torchrun``
(``WORLD_SIZE`` > 1) every worker trains on its own share of each epoch's draws,
gradients are averaged by DistributedDataParallel (gloo on CPU, NCCL on CUDA),
and only the first worker validates and writes files.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

DEVICES = ("auto", "cpu", "cuda", "mps")


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: a CUDA GPU, else Apple's MPS, else the CPU; a named device must be present."""
    if name not in DEVICES:
        raise ValueError(f"Unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if name == "auto":
        name = next(d for d in ("cuda", "mps", "cpu") if available[d])
    if not available[name]:
        raise ValueError(f"Device {name!r} is not available on this machine (use --device cpu or auto)")
    return torch.device(name)


class Workers:
    """The training processes started by ``torchrun`` (or just this one)."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        #: this worker's device: under torchrun each worker of a machine has its own GPU (LOCAL_RANK)
        self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if device.type == "cuda" and self.world > 1 else device
        if self.device.type == "cuda" and self.world > 1:
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def is_main(self) -> bool:
        """The worker that validates, logs and writes files."""
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model whose backward pass averages gradients over the workers."""
        if self.world == 1:
            return model
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def share(self, flag: bool) -> bool:
        """The main worker's ``flag``, on every worker (e.g. "stop early")."""
        if self.world == 1:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        dist.broadcast(value, src=0)
        return bool(value.item())

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
