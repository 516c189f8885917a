"""Fault injection for the tests, read from the environment; unset in real runs.

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

EXIT_INJECTED = 86  # distinct from every status a real run ends with, so a test knows its hook fired


def armed(name: str, step: int) -> bool:
    return os.environ.get(name) == str(step)


def exit_if_armed(name: str, step: int) -> None:
    if armed(name, step):
        os._exit(EXIT_INJECTED)  # no cleanup, no flushing: as abrupt as a kill
