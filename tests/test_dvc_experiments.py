"""DVC as its users drive it, on the pipeline Snakemake built (real Snakemake, real DVC, a reduced embedded DAG):
every stage records itself in dvc.lock as it finishes, so `dvc exp run -S probe.epochs=…` re-runs the probe and
the report only, pretraining's checkpoints untouched and nothing deleted; `dvc plots show` draws the curves;
`dvc exp show` as the README has it fits 120 columns; `dvc exp run --queue -S` takes any documented key."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from test_pipeline_runs import project_copy
from test_workflow import BIN, copy_workflow, run

from nepa.config import flat

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = "runs/tiny-nepa/pretrain/checkpoints"
# The README's command for a readable `dvc exp show` (test_the_readme_shows_the_exp_show_that_fits keeps them one).
EXP_SHOW = ("dvc", "exp", "show", "--no-pager", "--only-changed", "--drop", ".*/.*|Created")
# `dvc exp run` commits: a clean CI machine has no git identity
GIT = {
    f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER") for what, value in (("NAME", "t"), ("EMAIL", "t@t"))
}


def sha256_tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def files(work: Path) -> set[str]:
    """Every file the pipeline wrote, Snakemake's folder markers aside (not work: .dvcignore skips them too)."""
    found = set()
    for top in ("data", "runs", "results"):
        found |= {str(p.relative_to(work)) for p in (work / top).rglob("*") if p.is_file()}
    return {f for f in found if not f.endswith(".snakemake_timestamp")}


@pytest.mark.slow
def test_an_experiment_on_a_snakemake_built_pipeline_reruns_only_what_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = project_copy(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(work))  # the rules run this checkout's nepa, as an install of it would
    run("git", "add", "-A", cwd=work)
    run("git", "commit", "-qm", "reduced params", cwd=work, env=GIT)
    run("snakemake", "--cores", "2", cwd=work)
    # every stage recorded itself as it finished: DVC sees the pipeline as up to date
    assert "Data and pipelines are up to date" in run("dvc", "status", cwd=work)
    # Snakemake's side: a --config value re-runs the stages that read it; the slurm profile re-runs nothing
    planned = run("snakemake", "-n", "--cores", "2", "--config", "probe={epochs: 3}", cwd=work)
    assert set(re.findall(r"^rule (\w+):", planned, re.MULTILINE)) - {"all"} == {"probe", "report"}, planned
    assert "Nothing to be done" in run("snakemake", "-n", "--profile", "workflow/profiles/slurm", cwd=work)
    checkpoints, before = sha256_tree(work / PRETRAIN), files(work)
    probe_before = json.loads((work / "runs/tiny-nepa/probe/metrics.json").read_text())["metrics"]

    out = run("dvc", "exp", "run", "-S", "probe.epochs=3", cwd=work, env=GIT)
    assert re.findall(r"Running stage '([^']+)'", out) == ["probe@tiny-nepa", "report"], out
    assert sha256_tree(work / PRETRAIN) == checkpoints
    assert before <= files(work), sorted(before - files(work))  # nothing deleted
    probe_after = json.loads((work / "runs/tiny-nepa/probe/metrics.json").read_text())["metrics"]
    assert probe_after != probe_before  # the probe did run with 3 epochs
    assert len((work / "runs/tiny-nepa/probe/metrics.csv").read_text().splitlines()) == 1 + 3  # a row per epoch

    plots = json.loads(run("dvc", "plots", "show", "--json", cwd=work))["data"]
    loss = plots["pretraining loss"][0]["content"]["data"]["values"]
    assert loss and all("loss" in row and "step" in row for row in loss)
    assert {"fine-tuning top-1 (%)", "linear probe top-1 (%)", "segmentation mIoU"} <= plots.keys()

    # numbers only, in both tools' views of the experiment
    shown = json.loads(run("dvc", "metrics", "show", "--json", cwd=work))[""]["data"]
    numbers = {path: data["data"] for path, data in shown.items()}
    assert all(isinstance(v, float | int) for stage in numbers.values() for s in stage.values() for v in s.values())
    table = run(*EXP_SHOW, cwd=work, env={"COLUMNS": "120"})
    lines = table.strip().splitlines()
    assert max(len(line) for line in lines) <= 120, table
    assert "probe.epochs" in table and "probe.top1_last" in table and "…" not in table, table
    experiment = next(line for line in lines if "[" in line)  # the experiment's row, with its own numbers
    assert "!" not in experiment and "3" in experiment, table

    # Snakemake re-running a finished stage with other params: the engine refuses its checkpoints in one line,
    # and neither they nor the run's numbers are gone (Snakemake deletes a job's plain outputs before it runs)
    pretrain, before = work / PRETRAIN.removesuffix("/checkpoints"), files(work)
    numbers = {name: (pretrain / name).read_bytes() for name in ("metrics.json", "scores.json")}
    refused = subprocess.run(
        ["snakemake", "--cores", "2", "--config", "pretrain={base_lr: 0.002}"],
        cwd=work, env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}, capture_output=True, text=True,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "written with other params" in (work / "logs/pretrain/tiny-nepa.log").read_text()
    assert before <= files(work), sorted(before - files(work))
    assert {name: (pretrain / name).read_bytes() for name in numbers} == numbers


def test_the_readme_shows_the_exp_show_that_fits() -> None:
    """The command the test above fits in 120 columns is the README's (with the pager off, as a script runs it)."""
    command = " ".join(EXP_SHOW).replace("--no-pager ", "").replace(".*/.*|Created", "'.*/.*|Created'")
    assert f"\n{command} " in (ROOT / "README.md").read_text()


def test_every_documented_key_is_an_experiment_parameter(tmp_path: Path) -> None:
    """`dvc exp run --queue -S section.key=value` on a fresh clone: any key of params.yaml, no `+` needed."""
    work = copy_workflow(tmp_path / "clone")
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, work / name)
    run("git", "init", "-q", cwd=work)
    run("git", "add", "-A", cwd=work)
    run("git", "commit", "-qm", "clone", cwd=work, env=GIT)
    out = run("dvc", "exp", "run", "--queue", "-S", "pretrain.base_lr=0.001", cwd=work, env=GIT)
    assert "Queued experiment" in out, out
    queued = run("dvc", "queue", "status", cwd=work)
    assert "Queued" in queued, queued


def test_dvc_sets_any_documented_key_and_changes_only_its_line(tmp_path: Path) -> None:
    """DVC's own -S code (Hydra's override grammar, without `+`) takes every key of params.yaml; a value set
    so changes its line and no other (comments, lists and empty values stay as written)."""
    from dvc.utils.hydra import apply_overrides

    params = tmp_path / "params.yaml"
    original = (ROOT / "params.yaml").read_text()
    keys = list(flat(yaml.safe_load(original)))
    assert {"pretrain.base_lr", "probe.epochs", "launcher.slurm.partition", "data.imagenet_src"} <= set(keys)
    for key in keys:
        params.write_text(original)
        apply_overrides(str(params), [f"{key}=7"])  # raises where the key would need `+`
        assert yaml.safe_load(params.read_text())[key.split(".")[0]] is not None
    for key, value in (("pretrain.base_lr", "0.001"), ("seed", "1"), ("launcher.kind", "submitit")):
        params.write_text(original)
        apply_overrides(str(params), [f"{key}={value}"])
        changed = [b for a, b in zip(original.splitlines(), params.read_text().splitlines(), strict=True) if a != b]
        assert len(changed) == 1 and f"{key.split('.')[-1]}: {value}" in changed[0], changed
