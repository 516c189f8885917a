"""A preemption signal to a prepare step's whole process group (as SLURM signals a job step) stops it promptly,
exit 75, with the running tasks finished — not a worker raising inside the pool's queue lock and the pool's
shutdown waiting forever (seen in CI: a SLURM USR2 left `nepa prepare` hung until the job's time ran out)."""

from __future__ import annotations

import signal
import subprocess
import sys

from nepa.data.parallel import run_parallel
from nepa.stopping import stop_on_signals

PREPARE_LIKE = """
import os, signal, sys, time
from nepa.data.parallel import run_parallel
from nepa.stopping import Stopped, stop_on_signals

def work(i):
    time.sleep(0.2)
    return i

if __name__ == "__main__":
    stop_on_signals()
    done = []
    try:
        for i in run_parallel(work, [(i, 1) for i in range(60)], workers=2, desc="t", unit="x"):
            done.append(i)
            if len(done) == 3:
                os.killpg(0, signal.SIGUSR2)  # every process of the group: this one and the pool's workers
    except Stopped:
        print(f"stopped after {len(done)} tasks", flush=True)
        sys.exit(75)
    sys.exit(0)
"""


def test_a_signalled_pool_stops_promptly_and_whole(tmp_path) -> None:
    script = tmp_path / "prepare_like.py"
    script.write_text(PREPARE_LIKE)
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, start_new_session=True
    )
    assert out.returncode == 75, out.stderr[-2000:]
    assert "stopped after" in out.stdout
    assert int(out.stdout.split()[2]) < 60  # queued tasks were cancelled, not all run


def signal_disposition(_: int) -> tuple[str, bool]:
    """In a pool worker: what SIGUSR2 does there, and whether it is still blocked."""
    return str(signal.getsignal(signal.SIGUSR2)), signal.SIGUSR2 in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_pool_workers_leave_the_preemption_signals_to_the_parent() -> None:
    previous = stop_on_signals()  # as the CLI does before a verb runs
    try:
        seen = set(run_parallel(signal_disposition, [(i, 1) for i in range(4)], workers=2, desc="t", unit="x"))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert seen == {(str(signal.SIG_IGN), False)}
