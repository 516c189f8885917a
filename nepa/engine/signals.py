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
import signal
import weakref
from collections.abc import Callable, Iterable, Iterator
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


def _ignore_preemption(worker_init: Callable[[int], None] | None, worker_id: int) -> None:
    ignore_preemption()
    if worker_init is not None:
        worker_init(worker_id)


def shield_workers(batches: object) -> None:
    """Make a DataLoader's worker processes ignore the preemption signals.

    SLURM signals every process of the job step, DataLoader workers included, and torch's workers die on a
    SIGTERM that does not come from their parent, which then stops the training process with "DataLoader
    worker is killed by signal" before it reaches the step boundary where it would checkpoint. The training
    process decides what a signal means; its workers end with it as usual. Start the workers inside
    nepa.stopping.preemption_held: one signalled between its fork and its worker_init_fn would still die of it.
    shielded_batches does both, and ends the workers when this process exits.
    """
    if isinstance(batches, DataLoader) and batches.num_workers > 0:
        batches.worker_init_fn = functools.partial(_ignore_preemption, batches.worker_init_fn)


# The iterators of shielded workers still open, ended at exit by _end_shielded_workers.
_OPEN_SHIELDED: weakref.WeakSet = weakref.WeakSet()


def shielded_batches(batches: Iterable) -> Iterator:
    """iter(batches) with its DataLoader workers shielded (shield_workers), started while the signals are held.

    Shielded workers also ignore the SIGTERM with which multiprocessing ends daemonic children at exit, and it
    then waits for them: a process that exits while the iterator is still referenced (an uncaught error's
    traceback holds the training loop's frames) would wait forever, holding its SLURM allocation. So at exit
    they are asked to stop as torch does when an iterator is deleted.
    """
    shield_workers(batches)
    with preemption_held():
        iterator = iter(batches)
    if isinstance(batches, DataLoader) and batches.num_workers > 0:
        _OPEN_SHIELDED.add(iterator)
        _end_shielded_workers_at_exit()
    return iterator


@functools.cache
def _end_shielded_workers_at_exit() -> None:
    # atexit runs last-registered first: this runs before multiprocessing's own exit handler (registered when
    # torch.utils.data imported it), which would wait for the workers.
    atexit.register(_end_shielded_workers)


def _end_shielded_workers() -> None:
    for iterator in list(_OPEN_SHIELDED):
        iterator._shutdown_workers()  # what torch's __del__ of the iterator calls; idempotent
