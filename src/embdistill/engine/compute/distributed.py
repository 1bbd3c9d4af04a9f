"""Data-parallel training over processes started by ``torchrun``.

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; ``process_group`` reads
them and joins the job (NCCL on CUDA, gloo on the CPU). Without them the
:class:`World` is a single process and every helper here is a no-op, so the
training loop has one code path.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from embdistill.config import ConfigError


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, evaluates and writes the run directory."""
        return self.rank == 0

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` in DistributedDataParallel (gradients averaged over ranks); itself on one process."""
        if not self.distributed:
            return model
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def gather(self, x: Tensor) -> Tensor:
        """``x`` from every rank, concatenated in rank order (every rank's batch must have the same size).

        Only this rank's slice carries a gradient, and it is multiplied by the world
        size: every rank computes the same loss on the gathered batch, and its
        gradient through the local slice is one of N parts of the single-process
        gradient, which DDP then averages (÷N) instead of summing. So N ranks × B
        give exactly the gradient of one process on N·B (tests/test_distributed.py).
        """
        if not self.distributed:
            return x
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.detach().contiguous())
        parts[self.rank] = _GradTimes.apply(x, self.size) if x.requires_grad else x
        return torch.cat(parts)

    def average(self, parts: dict[str, Tensor]) -> dict[str, float]:
        """Loss parts averaged over ranks, detached: the global batch's values, the same on every rank.

        Terms on the gathered batch are equal on every rank; per-image terms are
        means over the local images, so their average is the global mean. A NaN on
        any rank shows on all, so they all skip or stop together.
        """
        values = torch.stack([v.detach().float() for v in parts.values()])
        if self.distributed:
            dist.all_reduce(values)
            values /= self.size
        return dict(zip(parts, values.tolist()))

    def average_gradients(self, parameters: Iterable[nn.Parameter]) -> None:
        """All-reduce (mean) the gradients of parameters DDP does not hold (the objective's projections, regressors, proxies)."""
        if not self.distributed:
            return
        for p in parameters:
            if p.requires_grad:
                if p.grad is None:  # unused on this rank; the others may have used it
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
                p.grad /= self.size

    def broadcast_parameters(self, module: nn.Module) -> None:
        """Start every rank from rank 0's values (DDP does this itself for the model it wraps)."""
        if self.distributed:
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)

    def any_signal(self, signum: int | None, device: torch.device) -> int | None:
        """The stop signal any rank received, so that all ranks stop after the same step."""
        if not self.distributed:
            return signum
        flag = torch.tensor([signum or 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank; the others wait here for it (a barrier)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


class _GradTimes(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by ``factor``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.factor, None


def torchrun_world() -> World | None:
    """The World torchrun describes in the environment, or None outside torchrun."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return World(rank, size, int(os.environ.get("LOCAL_RANK", rank)))


def is_main() -> bool:
    """Whether this process is rank 0 (outside torchrun: always)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    world = torchrun_world()
    return world is None or world.is_main


@contextmanager
def process_group(device: torch.device) -> Iterator[tuple[World, torch.device]]:
    """Join the torchrun job on ``device`` and leave it afterwards; yields the World and this rank's device.

    On CUDA each rank uses ``cuda:LOCAL_RANK`` (NCCL); on the CPU, gloo. A
    process group that already exists is used as it is and left in place.
    """
    if dist.is_available() and dist.is_initialized():
        rank, size = dist.get_rank(), dist.get_world_size()
        world = World(rank, size, int(os.environ.get("LOCAL_RANK", rank)))
        yield world, _rank_device(device, world)
        return
    world = torchrun_world()
    if world is None or not world.distributed:
        yield World(), device
        return
    device = _rank_device(device, world)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            device_id=device if device.type == "cuda" else None)
    try:
        yield world, device
    finally:
        dist.destroy_process_group()


def _rank_device(device: torch.device, world: World) -> torch.device:
    if device.type != "cuda" or not world.distributed:
        return device
    if device.index is not None:
        raise ConfigError(f"device: under torchrun each process uses cuda:LOCAL_RANK; set device to auto or cuda, not {device}")
    device = torch.device("cuda", world.local_rank)
    torch.cuda.set_device(device)
    return device
