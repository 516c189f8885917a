"""Real Snakemake and real DVC run a reduced embedded DAG end to end (every stage, real data, real DeepSpeed),
produce metrics and the report, and a second run does nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from test_workflow import copy_workflow, run

ROOT = Path(__file__).resolve().parents[1]
REDUCED = """
recipe: paper
scale: embedded
variant: nepa
sizes: [tiny]
variants: [nepa]
seed: 0
runs: runs
results: results
dvc_remote: {remote}
data:
  root: data
  embedded_images: [512, 256]
  embedded_scenes: [48, 16]
  images_per_shard: 256
model: {{size: tiny}}
objective: {{}}
pretrain: {{epochs: 1, global_batch: 64, micro_batch: 64, checkpoint_every: 4, num_workers: 0}}
finetune: {{epochs: 1, global_batch: 64, micro_batch: 64, num_workers: 0}}
probe: {{epochs: 2, num_workers: 0}}
segment: {{iterations: 6, global_batch: 8, micro_batch: 8, warmup_iterations: 2, num_workers: 0}}
launcher: {launcher}
"""
METRICS = [
    "runs/tiny-nepa/finetune/metrics.json",
    "runs/tiny-nepa/probe/metrics.json",
    "runs/tiny-nepa/segment/metrics.json",
    "runs/tiny-nepa/pretrain/metrics.json",
]


def project_copy(tmp_path: Path, launcher: str = "{kind: local}") -> Path:
    """The pipeline files in a fresh git repository, with reduced params (launcher: its params section)."""
    work = copy_workflow(tmp_path / "project")
    (work / "params.yaml").write_text(REDUCED.format(remote=tmp_path / "remote", launcher=launcher))
    run("git", "init", "-q", cwd=work)
    run(sys.executable, "-m", "nepa.pipeline", str(work), cwd=work)
    return work


def change_code(work: Path) -> None:
    """A change to the nepa package: it re-runs no stage, in either tool (nepa/pipeline.py says why)."""
    with (work / "nepa/report/document.py").open("a") as f:
        f.write("# a change that re-runs nothing\n")


@pytest.mark.slow
def test_snakemake_runs_the_embedded_dag_and_reruns_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = project_copy(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(work))  # the rules run this checkout's nepa, as an install of it would
    run("snakemake", "--cores", "2", cwd=work)
    for path in METRICS:
        assert json.loads((work / path).read_text())["metrics"], path
    assert (work / "results/report.html").stat().st_size > 10_000
    assert "nepa pretrain" in (work / "logs/pretrain/tiny-nepa.log").read_text()  # its progress, in its log
    again = run("snakemake", "--cores", "2", "-n", cwd=work)
    assert "Nothing to be done" in again
    change_code(work)
    assert "Nothing to be done" in run("snakemake", "--cores", "2", "-n", cwd=work)


@pytest.mark.slow
def test_dvc_repro_runs_the_embedded_dag_pushes_and_reruns_nothing(tmp_path: Path) -> None:
    work = project_copy(tmp_path)
    run("git", "add", "-A", cwd=work)
    run("dvc", "repro", cwd=work)
    shown = json.loads(run("dvc", "metrics", "show", "--json", cwd=work))
    text = json.dumps(shown)
    assert "top1" in text and "miou" in text.lower()
    again = run("dvc", "repro", "--dry", cwd=work)
    assert "Running stage" not in again, again
    change_code(work)
    again = run("dvc", "repro", "--dry", cwd=work)
    assert "Running stage" not in again, again
    run("dvc", "push", cwd=work)  # data and checkpoints reach the remote named in params
    assert any((tmp_path / "remote").rglob("*"))
