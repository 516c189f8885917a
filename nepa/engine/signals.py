"""Preemption: SIGTERM, SIGUSR1 or SIGUSR2 -> a checkpoint at the next step boundary, then EXIT_REQUEUE.
(Before training starts, the CLI's handler stops the verb at once: nepa/stopping.py.)

Who sends them: SLURM sends SIGTERM when it preempts or cancels a job (SIGKILL follows after its grace
time), and the signal of `--signal=SIG@SECONDS` ahead of the time limit (submitit asks for USR2 90 s
before; nepa's SLURM params: launcher.slurm.signal_delay_s); torchrun and the deepspeed launcher pass
SIGTERM on to their workers. A signal only sets a flag: the step in flight finishes, all ranks agree
(the flag is max-reduced over a gloo group, a few microseconds of CPU, no GPU sync), the checkpoint is
written, and the process exits with

EXIT_REQUEUE = 75, sysexits.h's EX_TEMPFAIL ("temporary failure; retry"): the run is checkpointed and
running the same command again resumes it. A job script requeues on it
(`[ $? -eq 75 ] && scontrol requeue "$SLURM_JOB_ID"`), as does SLURM's RequeueExit=75; Snakemake's
--retries and torchrun's --max-restarts resume the same way. It is not 0 because a preempted run has not
finished: a caller that sees 0 goes on to look for outputs that are not there yet.

submitit 1.5.4 (submitit/core/job_environment.py) requeues from its own handler of its preemption signal
(USR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise): on global rank 0 it calls the job's `checkpoint()`,
runs `scontrol requeue` and leaves with sys.exit(-1); it reads no exit status, and a job function that
returns is recorded as finished and not requeued. So the handler that was installed before ours (in a
submitit job, submitit's) is called once our checkpoint is on disk: submitit's requeue happens after the
checkpoint is complete instead of racing it, and the requeued job resumes from it.
"""

from __future__ import annotations

import atexit
import functools
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.synchronize import Event
from types import FrameType

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from nepa.engine.distributed import several_processes
from nepa.stopping import EXIT_REQUEUE, PREEMPTION_SIGNALS, ignore_preemption, preemption_held, stop

__all__ = ["EXIT_REQUEUE", "Preemption", "shield_workers", "shielded_batches"]


class Preemption:
    """Context manager that records preemption signals while training runs, then restores the old handlers."""

    def __init__(self) -> None:
        self.received = 0  # the last signal's number, 0 for none
        self._previous: dict[int, object] = {}
        self._group = None

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def __enter__(self) -> Preemption:
        if several_processes() and dist.get_backend() != "gloo":
            self._group = dist.new_group(backend="gloo")  # agree on CPU, without touching the GPU stream
        for sig in PREEMPTION_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def agreed(self) -> int:
        """The signal any rank received (0 if none): every rank must call this at the same step."""
        if not several_processes():
            return self.received
        flag = torch.tensor([self.received])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return int(flag.item())

    def hand_over(self, signum: int) -> None:
        """After the checkpoint: call the handler that was there before ours (submitit's), if it is a function
        other than the CLI's start-up one (nepa.stopping), whose work the checkpoint has just done."""
        previous = self._previous.get(signum)
        if callable(previous) and previous is not stop:
            previous(signum, None)


def shield_workers(batches: object) -> None:
    """Make a DataLoader's worker processes ignore the preemption signals while this process runs.

    SLURM signals every process of the job step, DataLoader workers included, and torch's workers die on a
    SIGTERM that does not come from their parent, which then stops the training process with "DataLoader
    worker is killed by signal" before it reaches the step boundary where it would checkpoint. The training
    process decides what a signal means; its workers end with it as usual. Start the workers inside
    nepa.stopping.preemption_held: one signalled between its fork and its worker_init_fn would still die of it.
    shielded_batches does both.

    Once this process exits, a worker ends at SIGTERM after all: multiprocessing ends its daemonic children, the
    workers among them, with SIGTERM and then waits for them, so a process that exits while its loader's workers
    still run (an uncaught error's traceback holds the training loop's frames, and with them the loader's
    iterator) would otherwise wait forever, holding its SLURM allocation.
    """
    if isinstance(batches, DataLoader) and batches.num_workers > 0:
        batches.worker_init_fn = functools.partial(_shielded_worker, _exiting(), batches.worker_init_fn)


@functools.cache
def _exiting() -> Event:
    """Set when this process exits, before multiprocessing's exit handler sends its SIGTERMs: atexit runs the last
    registered first, and multiprocessing registered its handler when torch.utils.data imported it."""
    exiting = multiprocessing.Event()
    atexit.register(exiting.set)
    return exiting


def _shielded_worker(exiting: Event, worker_init: Callable[[int], None] | None, worker_id: int) -> None:
    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if exiting.is_set():
            os._exit(0)  # quietly: torch's SIGCHLD check in the parent reports a worker that ends otherwise

    ignore_preemption()
    signal.signal(signal.SIGTERM, on_sigterm)
    if worker_init is not None:
        worker_init(worker_id)


def shielded_batches(batches: Iterable) -> Iterator:
    """iter(batches), its DataLoader workers shielded (shield_workers) and started while the signals are held."""
    shield_workers(batches)
    with preemption_held():
        return iter(batches)
