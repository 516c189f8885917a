"""Batch arithmetic and the learning-rate schedule, all counted in optimizer steps.

The peak lr is the stage's, taken as it is (each stage's params say how they get it: nepa/config.py); linear
warm-up, then cosine to 0 at the end of `epochs`. An optimizer step never spans two epochs: the micro-batches of an
epoch that do not fill a last global batch are skipped, as drop_last does for single batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nepa.errors import UserError


def accumulation_steps(global_batch: int, micro_batch: int, world: int) -> int:
    """Micro-batches per process and optimizer step; the global batch must be a whole number of them."""
    if global_batch < 1 or micro_batch < 1:
        raise UserError(f"global_batch {global_batch} and micro_batch {micro_batch} must both be at least 1")
    per_step = micro_batch * world
    if global_batch % per_step:
        raise UserError(
            f"global_batch {global_batch} is not a multiple of micro_batch {micro_batch} x {world} process(es) "
            f"= {per_step}; change global_batch or micro_batch so that gradient accumulation is a whole number"
        )
    return global_batch // per_step


@dataclass(frozen=True)
class StepCounts:
    """How many optimizer steps an epoch, the schedule, its warm-up and this run have."""

    steps_per_epoch: int
    total_steps: int  # the schedule's length: `epochs` worth of steps
    warmup_steps: int
    stop_step: int  # where this run stops: total_steps, or max_steps if smaller


def step_counts(
    epochs: float,
    warmup_epochs: float,
    max_steps: int | None,
    batches_per_epoch: int,
    accumulation: int,
    steps: int | None = None,
    warmup_steps: int | None = None,
) -> StepCounts:
    """The schedule's length from `epochs` (pretraining, fine-tuning), or from `steps` where a recipe counts
    optimizer steps (segmentation's iterations); warm-up likewise."""
    steps_per_epoch = batches_per_epoch // accumulation
    if steps_per_epoch < 1:
        raise UserError(
            f"the global batch is larger than the training data: one optimizer step takes {accumulation} "
            f"micro-batch(es) per process, an epoch has {batches_per_epoch}; lower global_batch or prepare more data"
        )
    total = max(1, steps if steps is not None else round(epochs * steps_per_epoch))
    warmup = warmup_steps if warmup_steps is not None else round(warmup_epochs * steps_per_epoch)
    stop = total if max_steps is None else min(total, max_steps)
    return StepCounts(steps_per_epoch, total, min(total, warmup), stop)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """The lr factor of optimizer step `step` (0-based): (step+1)/warmup during warm-up, then cosine to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
