"""Resume on another number of processes: a checkpoint written by 2 processes continues on 1, and one written
by 1 continues on 2, under ZeRO 1 and 2 (DeepSpeed's universal checkpoint, nepa/engine/checkpoint.py; ZeRO-3 is
refused with one line); and a preempted 2-task SLURM job moved to one task.

Each ends within float tolerance of the uninterrupted 2-process run, not bit-identical: the gradient of a
global batch is summed in another order (two micro-batches accumulated in one process, or one per process
all-reduced over gloo), which changes the last bits of every step's update, and those differences grow
slowly over the steps. The data position, schedule and EMA carry over exactly. The model is run without
per-forward random draws (RoPE rescale off), as a 1- and a 2-process run draw them per rank.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import test_slurm as slurm_tests
import torch
from test_engine_runs import final, folder, losses, nepa, root, two_processes  # noqa: F401 (a fixture)
from test_slurm import shards  # noqa: F401 (a fixture)

from nepa.engine.checkpoint import latest_checkpoint, read_state

SAME = ("model.rope_rescale=null",)
LOSS_ATOL, ONLINE_ATOL, EMA_ATOL = 1e-4, 1e-4, 1e-5


def close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> float:
    """The largest absolute difference of two state dicts, which must hold the same tensors."""
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max().detach()) for k in a)
    assert worst <= atol, worst
    return worst


def run(root: Path, runs: Path, processes: int, *sets: str) -> str:  # noqa: F811
    """One run on `processes` processes; its (rank 0's) output."""
    if processes == 1:
        done = nepa(root, runs, "pretrain", *sets)
        assert done.returncode == 0, done.stderr
        return done.stderr
    results = two_processes(root, runs, *sets)
    assert [status for status, _ in results] == [0, 0], results[0][1]
    return results[0][1]


@pytest.mark.slow
def test_zero3_refuses_another_number_of_processes(root: Path, tmp_path: Path) -> None:  # noqa: F811
    """Not yet under ZeRO-3 (nepa/engine/checkpoint.py says why): one line, and the checkpoint stays usable."""
    sets = (*SAME, "pretrain.zero_stage=3")
    run(root, tmp_path, 1, *sets, "pretrain.max_steps=4")
    results = two_processes(root, tmp_path, *sets)
    assert [status for status, _ in results] == [2, 2]
    assert "under ZeRO-3, which cannot resume on 2 yet (ZeRO 1 and 2 can); resume it with 1" in results[0][1]
    run(root, tmp_path, 1, *sets)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2])
def test_resume_on_another_number_of_processes(root: Path, tmp_path: Path, stage: int) -> None:  # noqa: F811
    sets = (*SAME, f"pretrain.zero_stage={stage}")
    reference, two_to_one, one_to_two = tmp_path / "reference", tmp_path / "two_to_one", tmp_path / "one_to_two"
    run(root, reference, 2, *sets, "pretrain.max_steps=4")
    shutil.copytree(reference, two_to_one)
    run(root, reference, 2, *sets)  # resumed on as many processes: bit-identical to an uninterrupted run
    run(root, one_to_two, 1, *sets, "pretrain.max_steps=4")
    for runs, processes, before in ((two_to_one, 1, 2), (one_to_two, 2, 1)):
        said = run(root, runs, processes, *sets)
        line = next(x for x in said.splitlines() if "resuming from" in x)
        assert f"on {processes} process(es), written by {before}: ZeRO-{stage} state resharded" in line, line
        state = read_state(latest_checkpoint(folder(runs) / "checkpoints"))
        assert (state.step, state.world) == (9, processes)
        (online, ema), (online_ref, ema_ref) = final(runs), final(reference)
        assert torch.allclose(
            torch.tensor(losses(runs).values), torch.tensor(losses(reference).values), atol=LOSS_ATOL, rtol=0
        )
        worst = close(online, online_ref, ONLINE_ATOL), close(ema, ema_ref, EMA_ATOL)
        print(f"ZeRO-{stage} {before} -> {processes}: largest difference online {worst[0]:.2e}, EMA {worst[1]:.2e}")


@pytest.mark.slow
def test_preempted_slurm_job_continues_with_fewer_tasks(
    slurm,
    shards: Path,  # noqa: F811 (the fixture imported from test_slurm)
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 2-task `nepa pretrain` job gets USR2 (SLURM's signal before the time limit) and checkpoints; submitit
    requeues it, and instead of waiting for the same allocation the run is moved: the requeued job is
    cancelled and the same command is sent with one task. It resumes from the 2-task checkpoint and ends
    within float tolerance of an uninterrupted 2-task job."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    reference, moved = tmp_path / "reference", tmp_path / "moved"
    sets = ("--set", "model.rope_rescale=null")
    out = slurm_tests.nepa(*slurm_tests.pretrain_command(shards, reference), *sets, timeout=600)
    assert out.returncode == 0, out.stderr
    log = tmp_path / "outer.err"
    with log.open("w") as err:
        command = [sys.executable, "-m", "nepa.cli", *slurm_tests.pretrain_command(shards, moved), *sets]
        outer = subprocess.Popen(command, stderr=err)
    try:
        metrics = moved / "tiny-nepa/pretrain/metrics.csv"
        slurm_tests.wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) > 5, 300, "5 steps")
        job_id, _, _ = slurm_tests.submitted(log.read_text())
        slurm.cmd("scancel", "--signal", "USR2", job_id)
        slurm_tests.wait_for(lambda: "DUE TO JOB REQUEUE" in log.read_text(), 120, "the requeue")
    finally:
        outer.kill()
    slurm.cmd("scancel", job_id)
    checkpoint = read_state(latest_checkpoint(moved / "tiny-nepa/pretrain/checkpoints"))
    assert checkpoint.world == 2 and 5 <= checkpoint.step < 16
    one_task = ("--set", "launcher.processes=1")
    out = slurm_tests.nepa(*slurm_tests.pretrain_command(shards, moved), *sets, *one_task, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "on 1 process(es), written by 2: ZeRO-2 state resharded" in out.stderr, out.stderr
    (online, ema), (online_ref, ema_ref) = slurm_tests.final_weights(moved), slurm_tests.final_weights(reference)
    close(online, online_ref, ONLINE_ATOL), close(ema, ema_ref, EMA_ATOL)
