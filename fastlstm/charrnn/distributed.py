"""Data-parallel training under torchrun: which process this is, and the few collective
steps the trainer needs. Without torchrun (WORLD_SIZE unset or 1) every call is local."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


class Ranks:
    def __init__(self, device_type: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.active = self.world > 1
        if self.active and not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        """Rank 0: the only one that writes logs, samples and checkpoints."""
        return self.rank == 0

    def rows(self, batch: int) -> slice:
        """This rank's share of the `batch` parallel streams (disjoint, in rank order)."""
        share = batch // self.world
        return slice(self.rank * share, (self.rank + 1) * share)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.active:
            value = value.detach().clone()
            dist.all_reduce(value)
            value /= self.world
        return value

    def first(self, value: float) -> float:
        """Rank 0's value, on every rank."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._device())
        dist.broadcast(t, src=0)
        return float(t.item())

    def any(self, *flags: bool) -> tuple:
        """For each flag: whether it is set on any rank (one collective for all of them)."""
        if not self.active:
            return tuple(bool(f) for f in flags)
        t = torch.tensor([int(bool(f)) for f in flags], device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return tuple(bool(v) for v in t.tolist())

    def cat_rows(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        """Every rank's slice of a batch dimension, joined in rank order."""
        if not self.active:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts, dim=dim)

    def gather(self, obj) -> list:
        if not self.active:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()

    def _device(self):
        return (torch.device("cuda", torch.cuda.current_device())
                if dist.get_backend() == "nccl" else torch.device("cpu"))
