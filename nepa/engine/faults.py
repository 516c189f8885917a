"""Fault injection for the tests: the failures a run is made to have, fixed when it starts.

A test in the same process hands the Trainer a `Faults`; a test that runs a verb as a subprocess sets these
variables, which `Faults.from_environ` reads once, when the Trainer is built. Unset in real runs: no fault.

NEPA_INJECT_NAN_AT_STEP=N  the loss of optimizer step N (1-based) is NaN: the NaN guard must stop the run
                           there with EXIT_NONFINITE and leave the last good checkpoint as it was.
NEPA_EXIT_AT_STEP=N        the process ends at once (os._exit, status EXIT_INJECTED) right after optimizer
                           step N, before any checkpoint of that step: a crash or SIGKILL.
NEPA_EXIT_IN_CHECKPOINT=N  the process ends at once midway through writing the checkpoint of step N,
                           after DeepSpeed's model and optimizer files and before the EMA, the state and
                           the rename: a kill during a checkpoint write.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

EXIT_INJECTED = 86  # distinct from every status a real run ends with, so a test knows its hook fired
VARIABLES = {
    "nan_at_step": "NEPA_INJECT_NAN_AT_STEP",
    "exit_at_step": "NEPA_EXIT_AT_STEP",
    "exit_in_checkpoint": "NEPA_EXIT_IN_CHECKPOINT",
}


@dataclass(frozen=True)
class Faults:
    """Optimizer steps (1-based) at which a fault happens; None: never."""

    nan_at_step: int | None = None
    exit_at_step: int | None = None
    exit_in_checkpoint: int | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Faults:
        return cls(**{field: int(environ[name]) for field, name in VARIABLES.items() if name in environ})

    def loss(self, step: int, loss: Tensor) -> Tensor:
        """The loss of a micro-batch of optimizer step `step`, NaN at `nan_at_step`."""
        return loss * float("nan") if step == self.nan_at_step else loss

    def after_step(self, step: int) -> None:
        if step == self.exit_at_step:
            _exit()

    def in_checkpoint(self, step: int) -> None:
        if step == self.exit_in_checkpoint:
            _exit()


NO_FAULTS = Faults()


def _exit() -> None:
    os._exit(EXIT_INJECTED)  # no cleanup, no flushing: as abrupt as a kill
