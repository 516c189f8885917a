"""docs/slurm.md's 2 x 8 H100 guide holds: its params pass the plan audit and produce the job script it shows,
its resource table is the presets', and its `--requeue` keeps a stage alive on a cluster that refuses requeues
by default (the local SLURM, tests/slurm_cluster.py)."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest
from paper_doc import doc_tables
from test_slurm import ROOT, running_prepare, stand_in_sbatch

from nepa import launch
from nepa.cli import main as nepa_main
from nepa.config import load_params
from nepa.presets import FULL_SCALE_RESOURCES

GUIDE = ROOT / "docs" / "slurm.md"
PROJECT = "/scratch/me/nepa"  # where the guide's user works


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(), re.S)


def guide_params(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(blocks("yaml")[0])
    return path


def test_the_guides_params_pass_the_plan_audit(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert nepa_main(["plan", "--params", str(guide_params(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "plan audit: consistent with the paper's tables" in out
    jobs = re.search(r": (\d+) jobs", out)[1]
    assert f"lists the {jobs} jobs" in " ".join(GUIDE.read_text().split())


def test_the_guides_job_script_is_what_its_params_produce(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """submitit's own job script for the guide's pretraining, taken by a stand-in sbatch."""
    stand_in_sbatch(tmp_path / "bin", monkeypatch)
    monkeypatch.chdir(tmp_path)
    launcher = load_params(guide_params(tmp_path)).launcher
    job = launch.executor("pretrain", launcher).submit(launch.StageTask(["pretrain"], PROJECT))
    script = job.paths.submission_file.read_text().replace(str(tmp_path), PROJECT)
    shown = next(b for b in blocks("bash") if b.startswith("#!/bin/bash"))
    assert script.strip() == shown.strip()
    assert "#SBATCH --requeue" in script and "#SBATCH --exclusive" in script and "#SBATCH --nodes=2" in script


def test_the_resource_table_is_the_presets(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("scale: full\nmodel: {size: base}\ndata: {imagenet_src: /in1k}\n")
    launcher = load_params(path).launcher
    [rows] = [rows for heading, rows in doc_tables(GUIDE.read_text()).items() if heading == "What each stage asks for"]
    assert [row["stage"] for row in rows] == list(FULL_SCALE_RESOURCES)
    for row in rows:
        r = launcher.resources(row["stage"])
        assert (r.nodes, r.gpus_per_node, r.cpus_per_task, r.mem_gb, r.time_min, r.max_timeouts) == tuple(
            int(row[k]) for k in list(row)[1:]
        ), row["stage"]
        assert r.extra_sbatch == {"requeue": True}


@pytest.fixture
def refuses_requeue(slurm):
    """The local cluster set to JobRequeue=0 for one test: a job is requeueable only if it asks (--requeue)."""
    original = slurm.conf.read_text()
    slurm.reconfigure(original + "JobRequeue=0\n")
    try:
        yield slurm
    finally:
        slurm.reconfigure(original)


@pytest.mark.slow
@pytest.mark.parametrize("requeue", [True, False], ids=["requeue", "no-requeue"])
def test_the_time_limit_signal_requeues_only_a_requeue_job_where_the_cluster_refuses(
    refuses_requeue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, requeue: bool
) -> None:
    """The guide's launcher settings (requeue, setup lines, a command that wraps Python, as `apptainer exec` does)
    on a JobRequeue=0 cluster: USR2, SLURM's signal before the time limit, requeues the stage and it finishes;
    without --requeue, SLURM refuses submitit's requeue and the stage is lost."""
    slurm = refuses_requeue
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "params.yaml", tmp_path)
    guide = [
        "--set",
        "launcher.slurm.extra_sbatch=" + ("{requeue: true}" if requeue else "{}"),
        "--set",
        "launcher.slurm.setup=[export NCCL_DEBUG=WARN]",
        "--set",
        f"launcher.slurm.python=env NEPA_IN_CONTAINER=1 {sys.executable}",
    ]
    with running_prepare(tmp_path, *guide) as (outer, log, job_id):
        script = next((tmp_path / "runs/slurm/prepare" / job_id).glob("*_submission.sh")).read_text()
        assert ("#SBATCH --requeue" in script) == requeue and "export NCCL_DEBUG=WARN" in script
        slurm.cmd("scancel", "--signal", "USR2", job_id)
        if requeue:
            slurm.release(job_id)
        status = outer.wait(timeout=300)
    text = log.read_text()
    if requeue:
        assert status == 0 and "DUE TO JOB REQUEUE" in text, text
        assert len(list((tmp_path / "data/raw/imagenet/val").glob("*/*.JPEG"))) == 2000
    else:
        assert status != 0 and "DUE TO JOB REQUEUE" not in text, text
