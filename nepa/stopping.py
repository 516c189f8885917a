"""Preemption signals from the first instant of a verb, before the trainer takes them over.

SLURM sends SIGTERM (preemption, scancel, requeue) or the `--signal` one (USR1/USR2) whenever it decides,
also while a verb is still starting: importing torch, waiting for DeepSpeed's CPU op build, loading a
checkpoint. Until the trainer installs its own handler (nepa.engine.signals.Preemption, which finishes the
step in flight and checkpoints), such a signal stops the verb where it is: every file a stage writes is
written whole or not at all (nepa.files), so nothing is half-done, and the CLI exits EXIT_REQUEUE with one
line; the same command run again starts, or resumes, cleanly.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

# sysexits.h's EX_TEMPFAIL: stopped for now, run the same command again (see nepa.engine.signals).
EXIT_REQUEUE = 75
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class Stopped(BaseException):  # like KeyboardInterrupt: a verb's `except Exception` lets it pass
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def stop(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signum)


def stop_on_signals() -> dict[int, object]:
    """Install `stop` for the preemption signals; returns the handlers it replaced."""
    return {sig: signal.signal(sig, stop) for sig in PREEMPTION_SIGNALS}


@contextlib.contextmanager
def preemption_held() -> Iterator[None]:
    """Hold the preemption signals while worker processes fork: a worker signalled before it ignores them would
    act on them as this process does (SLURM signals every process of a job step). The workers inherit the block
    and lift it once they ignore the signals (`ignore_preemption`); this process receives what came meanwhile
    when the block ends."""
    signal.pthread_sigmask(signal.SIG_BLOCK, PREEMPTION_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, PREEMPTION_SIGNALS)


def ignore_preemption() -> None:
    """In a worker process: leave the preemption signals to the parent, which decides what they mean."""
    for sig in PREEMPTION_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, PREEMPTION_SIGNALS)  # blocked since the fork (preemption_held)
