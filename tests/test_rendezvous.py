"""Rendezvous as torchrun and Lightning do it under SLURM (nepa/engine/distributed.py): a task of any sbatch
script finds rank 0 on the job's first node at a port from the job id, with or without submitit; a world that
cannot form ends within its wait with one line (exit 2); a signal during the wait ends the process at once.

The multi-node job is simulated: two processes on this host with the variables SLURM gives the tasks of a
2-node, 1-task-per-node job step, the node list naming two loopback addresses (no second host here). On the
local one-node SLURM (tests/slurm_cluster.py) a user's own batch script runs the verb under a real srun.
"""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from slurm_cluster import SlurmCluster
from test_engine_runs import DATA, environment, root  # noqa: F401 (a fixture)

from nepa.engine.checkpoint import latest_checkpoint, read_state
from nepa.engine.distributed import Rendezvous, rendezvous_address
from nepa.errors import EXIT_USAGE
from nepa.stopping import EXIT_REQUEUE

JOB = "73021"
# What srun sets in each task of `sbatch --nodes=2 --ntasks-per-node=1` (the rank's own ones added below).
TWO_NODE_JOB = {
    "SLURM_JOB_ID": JOB,
    "SLURM_JOB_NODELIST": "127.0.0.[1-2]",
    "SLURM_STEP_NODELIST": "127.0.0.[1-2]",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_NNODES": "2",
    "SLURM_NTASKS": "2",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_LOCALID": "0",
}
# 256 images, micro-batches derived from the embedded recipe's bound (64): 16 = 8 x 2 processes x 1.
RUN = ["pretrain.global_batch=16", "pretrain.epochs=1", "pretrain.warmup_epochs=0.1", "pretrain.log_every=1",
       "pretrain.checkpoint_every=3", "pretrain.num_workers=0", "pretrain.max_steps=6"]  # fmt: skip


def task_environment(rank: int, **extra: str) -> dict[str, str]:
    return environment(**TWO_NODE_JOB, SLURM_PROCID=str(rank), SLURM_NODEID=str(rank), **extra)


def pretrain(root: Path, runs: Path, *sets: str) -> list[str]:  # noqa: F811
    every = [*DATA, f"data.root={root / 'data'}", f"runs={runs}", *RUN, *sets]
    return [
        sys.executable,
        "-m",
        "nepa.cli",
        "pretrain",
        "--params",
        str(root / "params.yaml"),
        *(x for s in every for x in ("--set", s)),
    ]


def test_the_address_comes_from_the_job(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_ID", "SLURM_JOB_NODELIST"):
        monkeypatch.delenv(name, raising=False)
    assert rendezvous_address() is None
    monkeypatch.setenv("SLURM_JOB_ID", "1234567")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[007-008,011],login1")
    at = rendezvous_address()
    assert (at.host, at.port) == ("gpu007", 20000 + 1234567 % 40000)  # the same on every task of the job
    monkeypatch.setenv("MASTER_PORT", "29777")
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.9")  # a launcher's (torchrun, submitit) win
    assert rendezvous_address() == Rendezvous("10.0.0.9", 29777, "MASTER_ADDR, MASTER_PORT")


@pytest.mark.slow
def test_a_two_node_job_step_trains_without_master_addr(root: Path, tmp_path: Path) -> None:  # noqa: F811
    """Both tasks of the simulated 2-node job meet at the first node and train: same losses on a world of 2."""
    runs = tmp_path / "runs"
    logs = [tmp_path / f"task{rank}.log" for rank in range(2)]
    procs = []
    for rank, log in enumerate(logs):
        with log.open("w") as out:
            procs.append(
                subprocess.Popen(pretrain(root, runs), env=task_environment(rank), stdout=out, stderr=subprocess.STDOUT)
            )
    statuses = [p.wait(timeout=600) for p in procs]
    assert statuses == [0, 0], [log.read_text()[-3000:] for log in logs]
    metrics = pd.read_csv(runs / "tiny-nepa/pretrain/metrics.csv")
    assert metrics["step"].tolist() == [1, 2, 3, 4, 5, 6] and metrics["loss"].notna().all()
    state = read_state(latest_checkpoint(runs / "tiny-nepa/pretrain/checkpoints"))
    assert (state.step, state.world, state.micro_batch) == (6, 2, 8)


def test_a_lone_rank_stops_within_its_wait_with_one_line(root: Path, tmp_path: Path) -> None:  # noqa: F811
    """Rank 0 of 2 started alone (sbatch without srun): the line naming the missing rank, exit 2, within the
    wait (plus the process's start)."""
    start = time.monotonic()
    done = subprocess.run(
        pretrain(root, tmp_path / "runs", "launcher.rendezvous_timeout_s=5"),
        env=task_environment(0),
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - start
    assert done.returncode == EXIT_USAGE, done.stderr[-3000:]
    port = 20000 + int(JOB) % 40000
    assert done.stderr.rstrip().splitlines()[-1] == (
        f"nepa pretrain: error: rank 0 of 2: rank(s) 1 did not join the rendezvous at 127.0.0.1:{port} (the first "
        f"node of SLURM_JOB_NODELIST, port from SLURM_JOB_ID {JOB}) within 5 s (launcher.rendezvous_timeout_s); "
        "start all 2 processes (srun --ntasks=2: one per GPU), or run with a world of the processes you start "
        "(WORLD_SIZE, SLURM_NTASKS)"
    )
    assert "Traceback" not in done.stderr and took < 60, took


def test_sigterm_during_the_rendezvous_ends_the_process_at_once(root: Path, tmp_path: Path) -> None:  # noqa: F811
    """Issue 30: a lone rank 0 got SIGTERM, printed its line and was still alive 608 s later."""
    log = tmp_path / "rank0.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            pretrain(root, tmp_path / "runs"), env=task_environment(0), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 120
        while "waiting for the other ranks" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        assert proc.wait(timeout=30) == EXIT_REQUEUE
        assert time.monotonic() - sent < 5
    finally:
        proc.kill()
    assert f"stopped by signal {int(signal.SIGTERM)} before training" in log.read_text()


@pytest.mark.slow
def test_a_users_own_sbatch_script_trains_under_srun(slurm: SlurmCluster, root: Path, tmp_path: Path) -> None:  # noqa: F811
    """On the local SLURM, without submitit: `srun nepa pretrain` in the user's batch script starts 2 tasks that
    meet on the job's first node and train; the verb run by the batch script itself (sbatch without srun: rank 0
    of the job's 2 tasks, alone) stops with the line, exit 2, within its wait."""

    def batch_job(name: str, line: str) -> tuple[int, str]:
        log = tmp_path / f"{name}.log"
        options = ["--wait", "--ntasks=2", "--cpus-per-task=1", "--mem=4G", f"--chdir={tmp_path}", f"--output={log}"]
        done = subprocess.run(
            ["sbatch", *options, f"--wrap={line}"],
            env=environment(**slurm.env),
            capture_output=True,
            text=True,
            timeout=300,
        )
        return done.returncode, log.read_text() if log.exists() else done.stderr

    runs = tmp_path / "runs"
    status, log = batch_job("srun", "srun " + shlex.join(pretrain(root, runs)))
    assert status == 0, log[-3000:]
    assert pd.read_csv(runs / "tiny-nepa/pretrain/metrics.csv")["step"].tolist() == [1, 2, 3, 4, 5, 6]
    assert read_state(latest_checkpoint(runs / "tiny-nepa/pretrain/checkpoints")).world == 2
    status, log = batch_job("alone", shlex.join(pretrain(root, tmp_path / "alone", "launcher.rendezvous_timeout_s=5")))
    assert status == EXIT_USAGE, log[-3000:]
    assert re.search(r"rank 0 of 2: rank\(s\) 1 did not join the rendezvous at \S+ \(the first node of SLURM_JOB_", log)
