"""The batch rule, once: global batch = micro-batch x processes x gradient accumulation.

A training stage's params give its global batch (the paper's) and a micro-batch. The recipe's micro-batch is
an upper bound, the most one process holds in memory: on N processes the stage runs the largest micro-batch
within it that divides the global batch over N (at least the stage's minimum, even where Mixup pairs a batch
with its reverse), and gradient accumulation makes up the rest. So the paper's batches hold on any process
count that divides them, 1 to 16 nodes of 8 GPUs alike. A micro-batch set in params.yaml or with --set is
pinned: used as given, or refused with what to change.

Params check what holds on any number of processes (config.py), `nepa plan` checks each job on its stage's
processes, the launcher checks a stage before it submits it, and the engine splits on the processes it got:
all through `stage_batch`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from nepa.errors import UserError

TRAINED = ("pretrain", "finetune", "segment")  # the stages whose params section has a micro_batch


class Params(Protocol):
    """What the rule reads of nepa.config.Params (which imports this module): the stages' sections and which of
    their micro-batches params.yaml pins."""

    @property
    def pinned_micro_batches(self) -> frozenset[str]: ...


class BatchError(UserError, ValueError):
    """A global batch that does not split: one line (a UserError), also inside params validation (a ValueError)."""


@dataclass(frozen=True)
class BatchSplit:
    global_batch: int
    micro_batch: int  # per process and forward pass
    processes: int
    accumulation: int  # micro-batches per process and optimizer step
    limit: int  # the params' micro_batch: the upper bound, or the pinned value
    pinned: bool

    def __str__(self) -> str:
        how = "pinned" if self.pinned else f"<= {self.limit}"
        return f"{self.global_batch} = {self.micro_batch} ({how}) x {self.processes} proc. x {self.accumulation} acc."


def split_batch(
    global_batch: int,
    micro_batch: int,
    processes: int,
    *,
    pinned: bool = False,
    minimum: int = 1,
    multiple: int = 1,
    name: str = "",
) -> BatchSplit:
    """The split of `global_batch` over `processes`: `micro_batch` itself if pinned, else the largest micro-batch
    up to it; each at least `minimum` and a multiple of `multiple`. `name` ("pretrain") names the keys in errors."""
    if min(global_batch, micro_batch, processes) < 1:
        raise BatchError(f"global batch {global_batch}, micro-batch {micro_batch}, {processes} processes: each >= 1")

    def fits(micro: int, n: int) -> bool:
        return micro >= minimum and micro % multiple == 0 and global_batch % (micro * n) == 0

    def largest(n: int) -> int | None:
        return next((m for m in range(micro_batch, 0, -1) if fits(m, n)), None)

    chosen = micro_batch if pinned else largest(processes)
    if chosen is not None and fits(chosen, processes):
        accumulation = global_batch // (chosen * processes)
        return BatchSplit(global_batch, chosen, processes, accumulation, micro_batch, pinned)
    key = f"{name}." if name else ""
    even = ", even (Mixup pairs a batch with its reverse)" if multiple == 2 else ""
    sizes = (
        f"{micro_batch}"
        if micro_batch == minimum
        else f"at most {micro_batch}" + (f", at least {minimum}" if minimum > 1 else "")
    )
    counts = _process_counts(processes, lambda n: fits(micro_batch, n) if pinned else largest(n) is not None)
    elsewhere = f"run it on {counts} processes" if counts else "change the global batch"
    if not pinned:
        raise BatchError(
            f"{key}global_batch {global_batch} does not split over {_processes(processes)} in micro-batches of "
            f"{sizes}{even}; {elsewhere}"
        )
    other = largest(processes)
    fixes = [f"set {key}micro_batch to {other}"] if other else []
    fixes += [elsewhere, f"or remove {key}micro_batch to let nepa choose"]
    pinned_one = f"{key}micro_batch {micro_batch} (pinned in params)"
    if micro_batch % multiple:
        problem = f"{pinned_one}: Mixup pairs each batch with its reverse, use an even one"
    elif micro_batch < minimum:
        problem = f"{pinned_one} is below the stage's minimum of {minimum}"
    else:
        problem = f"{pinned_one} x {_processes(processes)} does not divide {key}global_batch {global_batch}"
    raise BatchError(f"{problem}; " + ", ".join(fixes))


def _processes(n: int) -> str:
    return f"{n} process" + ("es" if n != 1 else "")


def _process_counts(processes: int, works) -> str:
    """The nearest process counts below and above `processes` that split, e.g. '2 or 4'."""
    below = next((n for n in range(processes - 1, 0, -1) if works(n)), None)
    above = next((n for n in range(processes + 1, 2 * processes + 1) if works(n)), None)
    return " or ".join(str(n) for n in (below, above) if n is not None)


def stage_batch(params: Params, stage: str, processes: int) -> BatchSplit:
    """The split of a training stage's global batch over `processes`, with that stage's rules."""
    section = getattr(params, stage)
    field = type(section).model_fields["micro_batch"]
    minimum = max((getattr(rule, "ge", 1) for rule in field.metadata), default=1)  # segment: 2 (BatchNorm)
    mixup = stage == "finetune" and section.mixup + section.cutmix > 0
    return split_batch(
        section.global_batch,
        section.micro_batch,
        processes,
        pinned=stage in params.pinned_micro_batches,
        minimum=int(minimum),
        multiple=2 if mixup else 1,
        name=stage,
    )


def section_for(params: Params, stage: str, processes: int) -> Any:
    """The stage's params section with the micro-batch it runs on `processes` processes (what a verb trains with;
    its resume key stays the params' own, so a run moved to another process count resumes)."""
    split = stage_batch(params, stage, processes)
    return getattr(params, stage).model_copy(update={"micro_batch": split.micro_batch})
