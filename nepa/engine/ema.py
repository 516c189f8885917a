"""Exponential moving average of the weights, in fp32, updated after every optimizer step.

    ema <- decay * ema + (1 - decay) * weights

The engine keeps fp32 weights in the model at every precision (bf16 runs under autocast), so the average
is of the same fp32 weights the optimizer updates.

Under ZeRO-3 a parameter exists in full only inside a forward pass; between steps each rank holds one
partition of it (`param.ds_tensor`, flat, padded to equal sizes). Each rank averages its own partition:
no communication per step and 1/world of the memory, which is what ZeRO-3 is chosen for. Gathering every
parameter after every step (`deepspeed.zero.GatheredParameters`) would cost a full all-gather per step
and a full fp32 copy per rank. The partitions are gathered only when a checkpoint is written, so the
file on disk is the full average, independent of the number of processes; a resumed rank takes its
partition back out of it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def _local(param: nn.Parameter) -> Tensor:
    """The part of `param` this rank holds: its ZeRO-3 partition, or all of it."""
    return param.ds_tensor if hasattr(param, "ds_tensor") else param


class Ema:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.named = list(model.named_parameters())
        self.shadow = [_local(p).detach().float().clone() for _, p in self.named]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.shadow, [_local(p).float() for _, p in self.named], 1.0 - self.decay)

    @torch.no_grad()
    def state_dict(self) -> dict[str, Tensor]:
        """The full average by parameter name; a collective call under ZeRO-3 (every rank must call it)."""
        out = {}
        for (name, p), avg in zip(self.named, self.shadow, strict=True):
            if hasattr(p, "ds_tensor"):
                parts = [torch.empty_like(avg) for _ in range(dist.get_world_size())]
                dist.all_gather(parts, avg)
                avg = torch.cat(parts)[: p.ds_numel].view(p.ds_shape)
            out[name] = avg.clone()
        return out

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for (name, p), avg in zip(self.named, self.shadow, strict=True):
            full = state[name].to(avg.device, torch.float32)
            if hasattr(p, "ds_tensor"):
                part = full.flatten()[dist.get_rank() * avg.numel() :][: avg.numel()]
                avg.zero_()
                avg[: part.numel()].copy_(part)
            else:
                avg.copy_(full)
