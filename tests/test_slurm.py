"""Stages on SLURM through submitit (nepa/launch.py): on a real one-node cluster (tests/slurm_cluster.py,
the `slurm` fixture) where it counts, with a stand-in sbatch where only the generated job script matters."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from test_pipeline_runs import METRICS, project_copy
from test_workflow import BIN

from nepa import launch
from nepa.config import load_params
from nepa.engine.checkpoint import EMA_FILE, latest_checkpoint, online_weights
from nepa.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
# What the one-node test cluster (2 CPUs) can hold, with the launcher on.
SUBMITIT = ["--set", "launcher.kind=submitit", "--set", "launcher.slurm.cpus_per_task=1",
            "--set", "launcher.slurm.mem_gb=1"]  # fmt: skip
SMALL_DATA = ["--set", "data.embedded_images=[2000,500]", "--set", "data.embedded_scenes=[40,20]"]
TINY_DATA = ["--set", "data.embedded_images=[20,10]", "--set", "data.embedded_scenes=[4,2]"]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run folder holding the repository's params.yaml, as the current directory."""
    shutil.copy(ROOT / "params.yaml", tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def nepa(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`nepa ARGS` as Snakemake or DVC runs it: its own process."""
    command = [sys.executable, "-m", "nepa.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def submitted(stderr: str) -> tuple[str, Path, Path]:
    """The job id and log paths that the verb prints as it submits."""
    m = re.search(r"submitted SLURM job (\d+) .*; logs: (\S+) (\S+)", stderr)
    assert m, stderr
    return m[1], Path(m[2]), Path(m[3])


def wait_for(ready, timeout_s: float, what: str, job_id: str | None = None) -> None:
    """Poll until ready(); past the timeout, fail naming what was awaited and, given a job, what SLURM says of it."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout_s} s" + (f"; {slurm_view(job_id)}" if job_id else ""))
        time.sleep(0.5)


def slurm_view(job_id: str) -> str:
    """The job's state and reason, and every node's state, as squeue and sinfo give them."""
    views = {
        f"job {job_id}": ["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T (%r)"],
        "nodes": ["sinfo", "-h", "-N", "-o", "%N %T (%E)"],
    }
    return "; ".join(
        f"{name}: " + subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.strip()
        for name, cmd in views.items()
    )


# ---- without a cluster ------------------------------------------------------------------------


def stand_in_sbatch(bin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An sbatch that takes any job (as job 4242) and an srun never meant to run, first on PATH: submitit then
    writes its job script as for a real cluster."""
    bin_dir.mkdir()
    for name, body in (("sbatch", "echo Submitted batch job 4242"), ("srun", "exit 1")):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def test_the_launcher_is_a_params_key_not_the_environment(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """launcher.kind comes from params (params.yaml, --set, Snakemake's --config or the slurm profile's config
    file), never from the environment: a job's verb runs here with --set launcher.kind=local, whatever its
    shell exported."""
    monkeypatch.setenv("NEPA_LAUNCHER", "submitit")  # the variable earlier versions read
    assert load_params().launcher.kind == "local"
    assert load_params(overrides=("launcher.kind=submitit",)).launcher.kind == "submitit"
    with pytest.raises(UserError, match=r"--set launcher.kind: Input should be 'local' or 'submitit' \(got 'slurm'\)"):
        load_params(overrides=("launcher.kind=slurm",))


def test_bad_params_fail_before_any_job_is_submitted(workdir: Path) -> None:
    out = nepa("params", *SUBMITIT, "--set", "pretrain.epochs=x")
    assert out.returncode == 2
    assert out.stderr.strip() == ("nepa params: error: --set pretrain.epochs: Input should be a valid number (got 'x')")
    assert not (workdir / "runs").exists()


def test_stage_resources_reach_the_job_script_two_nodes_of_eight_gpus(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The multi-node path is the single-node one with other numbers: submitit's own job script for
    2 nodes x 8 GPUs, written by its executor (a stand-in sbatch accepts it)."""
    stand_in_sbatch(workdir / "bin", monkeypatch)
    (workdir / "params.yaml").write_text(
        "launcher:\n  kind: submitit\n"
        "  slurm: {partition: h100, account: nepa, cpus_per_task: 16, mem_gb: 900, time_min: 240,\n"
        "          srun_args: [--container-image=nepa.sqsh]}\n"
        "  stages:\n    pretrain: {nodes: 2, gpus_per_node: 8, time_min: 2880}\n"
        "pretrain: {global_batch: 1024}\n"  # a whole number of micro-batches on each of the 16 tasks
    )
    launcher = load_params().launcher
    job = launch.executor("pretrain", launcher).submit(launch.StageTask(["pretrain"], str(workdir)))
    script = job.paths.submission_file.read_text()
    for line in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--cpus-per-task=16", "--mem=900GB"):
        assert f"#SBATCH {line}\n" in script
    for line in ("--partition=h100", "--account=nepa", "--time=2880", "--signal=USR2@120", "--job-name=nepa-pretrain"):
        assert f"#SBATCH {line}\n" in script
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert "--container-image=nepa.sqsh" in srun
    assert job.paths.folder == workdir / "runs/slurm/pretrain/4242"
    # a stage without an entry gets launcher.slurm: one CPU task, no GPU
    other = launch.sbatch_parameters("finetune", launcher)
    assert (other["nodes"], other["ntasks_per_node"], other["gpus_per_node"], other["time"]) == (1, 1, None, 240)


@pytest.mark.parametrize(
    ("reason", "hint"),
    [
        (
            "PartitionTimeLimit",
            "it asks for more time than partition gpu allows; set launcher.stages.pretrain.time_min",
        ),
        ("InvalidAccount", "it asks for an account that does not exist; set launcher.stages.pretrain.account"),
        ("QOSMaxWallDurationPerJobLimit", "set launcher.stages.pretrain.time_min (now 60)"),
        ("AssocMaxNodePerJobLimit", "set launcher.stages.pretrain.nodes (now 2)"),
        ("QOSMaxGRESPerJob", "set launcher.stages.pretrain.gpus_per_node (now 0)"),
        ("BadConstraints", "it asks for node features that no node has; set launcher.stages.pretrain.constraint"),
        # waiting clears these: resources in use, other jobs first, the user's or group's running totals
        ("Resources", None),
        ("Priority", None),
        ("QOSMaxJobsPerUserLimit", None),
        ("AssocGrpGRES", None),
        ("ReqNodeNotAvail", None),
    ],
)
def test_pending_reasons_that_waiting_cannot_clear(reason: str, hint: str | None) -> None:
    launcher = load_params(overrides=("launcher.stages.pretrain.nodes=2",)).launcher
    found = launch.hopeless(launch.QueueEntry("PENDING", reason, "gpu"), "pretrain", launcher)
    assert found == hint if hint is None else hint in found, found


def test_a_partition_node_limit_is_hopeless_only_beyond_the_partitions_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    """SLURM also says PartitionNodeLimit while enough of the partition's nodes are down: that can clear."""
    launcher = load_params(overrides=("launcher.slurm.nodes=2",)).launcher
    entry = launch.QueueEntry("PENDING", "PartitionNodeLimit", "gpu")
    monkeypatch.setattr(launch, "partition_nodes", lambda partition: 4)
    assert launch.hopeless(entry, "export", launcher) is None
    monkeypatch.setattr(launch, "partition_nodes", lambda partition: 1)
    assert launch.hopeless(entry, "export", launcher) == (
        "it asks for 2 nodes, where partition gpu has 1; set launcher.slurm.nodes (now 2)"
    )


# ---- on the local cluster ---------------------------------------------------------------------


@pytest.mark.slow
def test_stage_runs_as_a_slurm_job_and_streams_its_output(slurm, workdir: Path) -> None:
    start = time.monotonic()
    out = nepa("prepare", "embedded", *SUBMITIT, *TINY_DATA)
    assert out.returncode == 0, out.stderr
    job_id, stdout_log, stderr_log = submitted(out.stderr)
    # the verb's stdout, from inside the job, is this process's: the job ran it with the launcher forced local
    # (one submission, one run)
    assert len(re.findall("submitted SLURM job", out.stderr)) == 1
    assert len(re.findall(r"^nepa prepare embedded: done in", out.stdout, re.MULTILINE)) == 1, out.stdout
    assert stdout_log == workdir / f"runs/slurm/prepare/{job_id}/{job_id}_0_log.out" and stderr_log.exists()
    # (no "RUNNING" line to expect: a job this short can end between two polls; a long one shows it, below)
    print(f"nepa prepare embedded (tiny) through SLURM: {time.monotonic() - start:.1f} s")


@pytest.mark.slow
def test_stage_outputs_exist_after_the_job(slurm, workdir: Path) -> None:
    out = nepa("prepare", "embedded", *SUBMITIT, *SMALL_DATA)
    assert out.returncode == 0, out.stderr
    assert len(list((workdir / "data/raw/imagenet/train").glob("*/*.JPEG"))) == 2000
    assert len(list((workdir / "data/raw/ADEChallengeData2016/annotations/validation").glob("*.png"))) == 20


@pytest.mark.slow
def test_failing_stage_exits_non_zero_and_names_its_log(slurm, workdir: Path) -> None:
    out = nepa("prepare", "imagenet", "--src", str(workdir / "missing"), *SUBMITIT)
    assert out.returncode == 2  # the verb's own status (a UserError), from inside the job
    job_id, _, stderr_log = submitted(out.stderr)
    last = out.stderr.rstrip().splitlines()[-1]
    assert last == f"nepa prepare: SLURM job {job_id} failed (exit status 2); log: {stderr_log}"
    assert "missing" in stderr_log.read_text()  # the verb's error line is in the log, and was streamed here
    assert "missing" in out.stderr


@pytest.mark.slow
def test_job_that_dies_outside_the_verb_is_a_failure(slurm, workdir: Path) -> None:
    """A job that never leaves a result (here: a container command that does not exist) fails the verb."""
    out = nepa("prepare", "embedded", *SUBMITIT, *TINY_DATA, "--set", "launcher.slurm.python=/no/such/python")
    assert out.returncode == 1
    job_id, _, stderr_log = submitted(out.stderr)
    last = out.stderr.rstrip().splitlines()[-1]
    assert last == f"nepa prepare: SLURM job {job_id} ended (FAILED) without finishing; log: {stderr_log}"


@pytest.mark.slow
def test_stopping_the_waiting_verb_cancels_its_job(slurm, workdir: Path) -> None:
    """Snakemake stops a job with SIGTERM: the stage must not run on, unwatched, beside a rerun."""
    log = workdir / "outer.err"
    with log.open("w") as err:
        outer = subprocess.Popen([sys.executable, "-m", "nepa.cli", "prepare", "embedded", *SUBMITIT], stderr=err)
    try:
        wait_for(lambda: "RUNNING" in log.read_text(), 120, "a running job")
        outer.terminate()
        assert outer.wait(timeout=60) == 130
    finally:
        outer.kill()
    job_id, _, stderr_log = submitted(log.read_text())
    assert log.read_text().rstrip().splitlines()[-1] == (
        f"nepa prepare: interrupted; cancelled SLURM job {job_id}; log: {stderr_log}"
    )
    wait_for(lambda: slurm.job_state(job_id) == "CANCELLED", 60, "cancelled job")


@pytest.mark.slow
def test_a_job_that_cannot_start_is_cancelled_naming_the_setting(slurm, workdir: Path) -> None:
    """Two nodes asked of the one-node cluster: SLURM keeps the job pending (PartitionNodeLimit) forever; the
    verb says so, cancels it and stops with the setting to change."""
    out = nepa("prepare", "embedded", *SUBMITIT, *TINY_DATA, "--set", "launcher.slurm.nodes=2", timeout=120)
    assert out.returncode == 2, out.stderr
    job_id, _, _ = submitted(out.stderr)
    assert f"nepa prepare: SLURM job {job_id} PENDING (PartitionNodeLimit)\n" in out.stderr
    assert out.stderr.rstrip().splitlines()[-1] == (
        f"nepa prepare: error: SLURM job {job_id} cannot start (PartitionNodeLimit): it asks for 2 nodes, where "
        "partition debug has 1; set launcher.slurm.nodes (now 2); cancelled it"
    )
    wait_for(lambda: slurm.job_state(job_id) == "CANCELLED", 60, "cancelled job")


@pytest.mark.slow
def test_a_waiting_job_says_why(slurm, workdir: Path) -> None:
    """A job that may start later (here: not before its begin time) is followed, with SLURM's reason shown."""
    log = workdir / "outer.err"
    later = ["--set", "launcher.slurm.extra_sbatch={begin: now+3600}"]
    with log.open("w") as err:
        outer = subprocess.Popen(
            [sys.executable, "-m", "nepa.cli", "prepare", "embedded", *SUBMITIT, *later], stderr=err
        )
    try:
        wait_for(lambda: "PENDING (BeginTime)" in log.read_text(), 60, "the reason")
        assert outer.poll() is None  # still waiting for it
        outer.terminate()
        assert outer.wait(timeout=60) == 130
    finally:
        outer.kill()
    job_id, _, _ = submitted(log.read_text())
    wait_for(lambda: slurm.job_state(job_id) == "CANCELLED", 60, "cancelled job")


@contextlib.contextmanager
def running_prepare(folder: Path, *args: str) -> Iterator[tuple[subprocess.Popen, Path, str]]:
    """`nepa prepare embedded` of 12,000 images (long enough to interrupt) as a SLURM job, from `folder`, once the
    job is writing: (the waiting verb, its stderr file, the job id). On the way out the verb is stopped and the
    job cancelled, so that a failed test leaves no job to hold the cluster's CPUs in the next one."""
    log = folder / "outer.err"
    command = ["prepare", "embedded", *SUBMITIT, *SMALL_DATA, "--set", "data.embedded_images=[10000,2000]", *args]
    with log.open("w") as err:
        outer = subprocess.Popen([sys.executable, "-m", "nepa.cli", *command], stderr=err)
    job_id = None
    try:
        wait_for(lambda: "logs:" in log.read_text(), 60, "submission")
        job_id, _, stderr_log = submitted(log.read_text())
        wait_for(lambda: stderr_log.exists() and "embedded imagenet" in stderr_log.read_text(), 120, "progress", job_id)
        yield outer, log, job_id
    finally:
        outer.kill()
        if job_id:  # a job that has ended is no longer known to scancel: its complaint does not matter
            subprocess.run(["scancel", job_id], capture_output=True, timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("interrupt", "by"),
    [(("scancel", "--signal", "USR2"), "this job is preempted"), (("scontrol", "requeue"), "Bypassing signal SIGTERM")],
    ids=["usr2", "requeue"],
)
def test_preempted_stage_is_requeued_and_completes(slurm, workdir: Path, interrupt: tuple[str, ...], by: str) -> None:
    """A running stage gets USR2 (what SLURM sends before the time limit, and at a preemption with
    send_user_signal: submitit requeues the job) or is requeued by SLURM (SIGTERM, as at a preemption with
    PreemptMode=REQUEUE); the waiting verb follows the requeued run and exits 0 when it is done. `nepa
    prepare` keeps no partial work, so the requeued run starts it again."""
    with running_prepare(workdir) as (outer, log, job_id):
        slurm.cmd(*interrupt, job_id)
        slurm.release(job_id)
        assert outer.wait(timeout=300) == 0, log.read_text()
    text = log.read_text()
    # submitit's handler and SLURM, in the job log that the verb streamed
    assert by in text and f"JOB {job_id} ON {slurm.node} CANCELLED" in text and "DUE TO JOB REQUEUE" in text, text
    assert len(list((workdir / "data/raw/imagenet/val").glob("*/*.JPEG"))) == 2000


# ---- pretraining (nepa/engine) under SLURM ----------------------------------------------------

# A tiny run as in tests/test_engine_runs.py: 256 images, 8-image micro-batches, 16 steps of 16 images.
PRETRAIN_DATA = ["data.embedded_images=[256,64]", "data.embedded_scenes=[4,2]", "data.images_per_shard=128"]
PRETRAIN_RUN = [
    "pretrain.global_batch=16",
    "pretrain.micro_batch=8",
    "pretrain.epochs=1",
    "pretrain.warmup_epochs=0.1",
    "pretrain.log_every=1",
    "pretrain.checkpoint_every=4",
    "pretrain.num_workers=0",
    # two SLURM tasks on the node's two CPUs: ranks and rendezvous come from submitit's job environment
    "launcher.kind=submitit",
    "launcher.processes=2",
    "launcher.slurm.cpus_per_task=1",
    "launcher.slurm.mem_gb=4",
]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with params.yaml and prepared embedded ImageNet shards (made here, without SLURM)."""
    root = tmp_path_factory.mktemp("pretrain")
    shutil.copy(ROOT / "params.yaml", root)
    sets = [x for s in [*PRETRAIN_DATA, f"data.root={root / 'data'}"] for x in ("--set", s)]
    for dataset in ("embedded", "imagenet"):
        out = nepa("prepare", dataset, "--params", str(root / "params.yaml"), *sets)
        assert out.returncode == 0, out.stderr
    return root


def pretrain_command(root: Path, runs: Path) -> list[str]:
    sets = [*PRETRAIN_DATA, f"data.root={root / 'data'}", f"runs={runs}", *PRETRAIN_RUN]
    return ["pretrain", "--params", str(root / "params.yaml"), *(x for s in sets for x in ("--set", s))]


def final_weights(runs: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(online, EMA) weights of the run's latest checkpoint."""
    latest = latest_checkpoint(runs / "tiny-nepa/pretrain/checkpoints")
    return online_weights(latest), load_file(latest / EMA_FILE)


@pytest.mark.slow
def test_preempted_pretraining_resumes_to_the_weights_of_an_uninterrupted_run(
    slurm, shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two-task `nepa pretrain` jobs: one runs through; the other gets USR2 mid-run (SLURM's signal before
    the time limit): the engine checkpoints at a step boundary on both ranks, submitit requeues the job, and
    the requeued job resumes from that checkpoint and ends with bit-identical online and EMA weights."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two ranks on two cores
    reference, preempted = tmp_path / "reference", tmp_path / "preempted"
    out = nepa(*pretrain_command(shards, reference), timeout=600)
    assert out.returncode == 0, out.stderr
    submitted(out.stderr)

    log = tmp_path / "outer.err"
    with log.open("w") as err:
        outer = subprocess.Popen([sys.executable, "-m", "nepa.cli", *pretrain_command(shards, preempted)], stderr=err)
    try:
        metrics = preempted / "tiny-nepa/pretrain/metrics.csv"
        wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) > 5, 300, "5 steps")
        job_id, _, _ = submitted(log.read_text())
        slurm.cmd("scancel", "--signal", "USR2", job_id)
        slurm.release(job_id)
        assert outer.wait(timeout=600) == 0, log.read_text()
    finally:
        outer.kill()
    text = log.read_text()
    assert "this job is preempted" in text and "DUE TO JOB REQUEUE" in text and "resuming from" in text, text
    stopped = re.search(rf"signal {int(signal.SIGUSR2)} at step (\d+): checkpointed", text)  # the engine, rank 0
    assert stopped and 5 <= int(stopped[1]) < 16, text
    (online, ema), (online_ref, ema_ref) = final_weights(preempted), final_weights(reference)
    assert online.keys() == online_ref.keys() and all(torch.equal(online[k], online_ref[k]) for k in online)
    assert ema.keys() == ema_ref.keys() and all(torch.equal(ema[k], ema_ref[k]) for k in ema)
    curve = ["step", "epoch", "loss", "lr", "grad_norm"]  # the loss curve, without its timings
    assert pd.read_csv(metrics)[curve].equals(pd.read_csv(reference / "tiny-nepa/pretrain/metrics.csv")[curve])


# ---- the workflow under SLURM: `snakemake --profile slurm` ------------------------------------

# The reduced DAG of tests/test_pipeline_runs.py, its jobs sized for the one-node cluster.
# The slurm profile turns the launcher on. Pretraining gets both CPUs of the node.
ON_SLURM = "{kind: local, slurm: {cpus_per_task: 1, mem_gb: 2}, stages: {pretrain: {cpus_per_task: 2}}}"
STAGE_VERBS = {"prepare", "pretrain", "export", "finetune", "probe", "segment", "report"}


def snakemake_with_slurm_profile(work: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`snakemake --profile slurm` as the README has it: envs/install.sh links workflow/profiles/slurm into
    the user's Snakemake config as `slurm`; here the user's config folder is a temporary one."""
    profiles = tmp_path / "config/snakemake"
    if not profiles.exists():
        profiles.mkdir(parents=True)
        (profiles / "slurm").symlink_to(work / "workflow/profiles/slurm")
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config"), "PATH": f"{BIN}:{os.environ['PATH']}"}
    command = ["snakemake", "--profile", "slurm", *args]
    return subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=1200)


@pytest.mark.slow
def test_snakemake_profile_slurm_runs_every_stage_as_a_slurm_job(slurm, tmp_path: Path) -> None:
    work = project_copy(tmp_path, launcher=ON_SLURM)
    start = time.monotonic()
    out = snakemake_with_slurm_profile(work, tmp_path)
    assert out.returncode == 0, out.stderr[-5000:]
    # each rule's output is in its log under logs/
    logs = "".join(log.read_text() for log in sorted((work / "logs").rglob("*.log")))
    jobs = re.findall(r"nepa (\w+): submitted SLURM job (\d+)", logs)
    assert len(jobs) == 9 and {verb for verb, _ in jobs} == STAGE_VERBS, jobs  # 3 prepare + 6 single stages
    for verb, job_id in jobs:  # submitit's job folders, under the run folder
        assert (work / f"runs/slurm/{verb}/{job_id}/{job_id}_0_result.pkl").exists(), (verb, job_id)
    for path in METRICS:
        assert json.loads((work / path).read_text())["metrics"], path
    assert (work / "results/report.html").stat().st_size > 10_000
    # Snakemake exported OMP_NUM_THREADS=1 (the rule only waits): the job computes with its 2 CPUs all the same
    pretrain = json.loads((work / "runs/tiny-nepa/pretrain/metrics.json").read_text())
    assert pretrain["provenance"]["torch_threads"] == 2
    print(f"reduced DAG through SLURM: {time.monotonic() - start:.0f} s")
    again = snakemake_with_slurm_profile(work, tmp_path, "--dry-run")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, again.stderr[-3000:]


@pytest.mark.slow
def test_snakemake_profile_slurm_reports_a_failed_job_with_its_log(slurm, tmp_path: Path) -> None:
    """Params that only the job can find wrong (more images than Fashion-MNIST has): the job fails, the rule
    fails, and Snakemake's output names the job's log, which holds the verb's one-line error."""
    work = project_copy(tmp_path, launcher=ON_SLURM)
    params = work / "params.yaml"
    params.write_text(params.read_text().replace("embedded_images: [512, 256]", "embedded_images: [70000, 256]"))
    out = snakemake_with_slurm_profile(work, tmp_path)
    assert out.returncode != 0
    assert "Error in rule prepare_embedded" in out.stderr, out.stderr[-5000:]
    failed = re.search(r"nepa prepare: SLURM job (\d+) failed \(exit status 2\); log: (\S+)", out.stderr)
    assert failed, out.stderr[-5000:]
    log = Path(failed[2])
    assert log.is_relative_to(work / f"runs/slurm/prepare/{failed[1]}")
    assert "data.embedded_images: 70000 is not within 1..60000 (Fashion-MNIST train)" in log.read_text()
    assert not (work / "runs/slurm/pretrain").exists()  # nothing downstream was submitted


@pytest.mark.slow
def test_dvc_repro_dispatches_a_stage_the_same_way(slurm, tmp_path: Path) -> None:
    """launcher.kind submitit in params.yaml, then `dvc repro STAGE`: DVC runs the same `nepa` command, which
    submits itself (launcher is no stage's params section: the switch re-runs nothing by itself)."""
    work = project_copy(tmp_path, launcher=ON_SLURM.replace("kind: local", "kind: submitit"))
    subprocess.run(["git", "add", "-A"], cwd=work, check=True)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{BIN}:{os.environ['PATH']}"}
    out = subprocess.run(
        ["dvc", "repro", "prepare_embedded"], cwd=work, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    job = re.search(r"nepa prepare: submitted SLURM job (\d+)", out.stdout + out.stderr)
    assert job and (work / f"runs/slurm/prepare/{job[1]}/{job[1]}_0_result.pkl").exists()
    assert len(list((work / "data/raw/imagenet/train").glob("*/*.JPEG"))) == 512
    assert (work / "dvc.lock").exists()
