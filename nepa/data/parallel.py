"""One process pool with a progress bar, shared by the prepare steps (image writing, shard writing)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import TypeVar

from tqdm import tqdm

from nepa.stopping import ignore_preemption, preemption_held

T = TypeVar("T")
R = TypeVar("R")


def cpu_workers(workers: int) -> int:
    """`data.workers`: 0 means every core this process may run on."""
    return workers if workers > 0 else len(os.sched_getaffinity(0))


def run_parallel(
    fn: Callable[[T], R], tasks: Iterable[tuple[T, int]], *, workers: int, desc: str, unit: str
) -> Iterator[R]:
    """fn(task) for each (task, weight) over a process pool, results as they finish; the bar counts weights.

    A failing task stops the run: queued tasks are cancelled (the running ones finish, so what they write is
    whole) and its exception is raised here, so a UserError from a worker reaches the CLI as it is. So does a
    preemption signal: the workers ignore it (raised inside one, it could leave the pool's queue lock held and
    the pool's shutdown waiting forever); this process stops, and the running tasks finish first.
    """
    tasks = list(tasks)
    if not tasks:
        return
    with (
        ProcessPoolExecutor(max_workers=min(cpu_workers(workers), len(tasks)), initializer=ignore_preemption) as pool,
        tqdm(total=sum(w for _, w in tasks), desc=desc, unit=unit, dynamic_ncols=True) as bar,
    ):
        pending: dict[Future[R], int] = {}
        try:
            with preemption_held():  # the pool forks its workers at the first submit
                for task, weight in tasks:
                    pending[pool.submit(fn, task)] = weight
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    bar.update(pending.pop(future))
                    yield future.result()
        finally:
            for future in pending:
                future.cancel()
