"""Snakemake and DVC are two views of one pipeline (nepa/pipeline.py): same stages, edges, commands and inputs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nepa.config import load_params
from nepa.pipeline import render

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(*cmd: str, cwd: Path = ROOT, env: dict[str, str] | None = None, **kwargs) -> str:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1", **(env or {})}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kwargs)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def test_rendered_files_are_current() -> None:
    for path, text in render(ROOT, load_params(ROOT / "params.yaml")).items():
        assert path.read_text() == text, f"{path} is stale: run `python -m nepa.pipeline`"


Jobs = tuple[dict[str, str], set[tuple[str, str]], dict[str, set[str]], dict[str, set[str]]]


def snakemake_jobs(cwd: Path = ROOT, *targets: str) -> Jobs:
    """(job -> shell command, edges, job -> input paths, job -> output paths) of Snakemake's `targets` (default:
    the default one),
    jobs named like DVC's (rule@size-variant, rule@size-variant-sSEED where runs are per seed). A command's
    redirection of its output into its log under logs/ is checked and taken off: that is where Snakemake keeps a
    stage's output, while DVC shows it on the terminal.

    --forceall: the whole DAG, whatever outputs already exist (DVC's dag lists every stage too)."""
    names, commands, inputs, outputs = {}, {}, {}, {}
    for block in run("snakemake", "-n", "-p", "--forceall", "--cores", "1", *targets, cwd=cwd).split("\nrule ")[1:]:
        rule = block.split(":", 1)[0]
        jobid = int(re.search(r"jobid: (\d+)", block)[1])
        wildcards = re.search(r"wildcards: size=(\w+), variant=(\w+)(?:, seed=(\d+))?", block)
        seed = f"-s{wildcards[3]}" if wildcards and wildcards[3] else ""
        names[jobid] = job = f"{rule}@{wildcards[1]}-{wildcards[2]}{seed}" if wildcards else rule
        shell = re.search(r"Shell command: (.+)", block)
        if shell and shell[1].strip() != "None":  # `all` is Snakemake's target rule, not a stage: it has no command
            log = re.search(r"^    log: (\S+)$", block, re.MULTILINE)
            assert log and log[1].startswith("logs/") and log[1].endswith(".log"), (job, block)
            command, redirect, rest = shell[1].strip().partition(f" > {log[1]} 2>&1")
            assert redirect and not rest, (job, shell[1])
            commands[job] = command
            listed = re.search(r"^    input: (.+)$", block, re.MULTILINE)
            inputs[job] = set(listed[1].split(", ")) if listed else set()
            outputs[job] = set(re.search(r"^    output: (.+)$", block, re.MULTILINE)[1].split(", "))
    dag = json.loads(run("snakemake", "--d3dag", "--forceall", "--cores", "1", *targets, cwd=cwd))
    edges = {(names[e["u"]], names[e["v"]]) for e in dag["edges"]}
    return commands, {(a, b) for a, b in edges if a in commands and b in commands}, inputs, outputs


DVC_LISTING = """
from dvc.dependency import ParamsDependency
from dvc.repo import Repo
for s in Repo(".").index.stages:
    deps = [d.def_path for d in s.deps if not isinstance(d, ParamsDependency)]
    outs = [o.def_path + (" (update)" if o.persist else "") for o in s.outs]  # Snakemake's flag for persist
    print(s.addressing, "|", s.cmd, "|", ",".join(deps), "|", ",".join(outs))
"""


def dvc_jobs(cwd: Path = ROOT) -> Jobs:
    """(stage -> command, edges, stage -> dependency paths (params aside), stage -> outputs) of dvc.yaml."""
    dot = run("dvc", "dag", "--dot", cwd=cwd)
    edges = set(re.findall(r'"([^"]+)" -> "([^"]+)"', dot))
    rows = [line.split(" | ") for line in run(sys.executable, "-c", DVC_LISTING, cwd=cwd).strip().splitlines()]
    commands = {name: cmd for name, cmd, _, _ in rows}
    deps = {name: set(filter(None, paths.split(","))) for name, _, paths, _ in rows}
    outs = {name: set(paths.split(",")) for name, _, _, paths in rows}
    return commands, edges, deps, outs


def test_snakemake_and_dvc_build_the_same_dag() -> None:
    """The same commands, edges, inputs and outputs: a change of an input or a command re-runs the same stages in
    both (the nepa code is an input of neither: nepa/pipeline.py says why)."""
    snake_commands, snake_edges, snake_inputs, snake_outputs = snakemake_jobs()
    dvc_commands, dvc_edges, dvc_deps, dvc_outs = dvc_jobs()
    assert snake_commands == dvc_commands
    assert snake_edges == dvc_edges
    assert snake_inputs == dvc_deps
    assert snake_outputs == dvc_outs
    assert ("pretrain@tiny-nepa", "export@tiny-nepa") in dvc_edges
    assert dvc_deps["finetune@tiny-nepa"] == {"runs/tiny-nepa/export", "data/shards/imagenet"}


def set_params(path: Path, *assignments: str) -> None:
    """Change params.yaml as `dvc exp run -S` does (DVC's own code: keys must exist, the rest of the file stays)."""
    from dvc.utils.hydra import apply_overrides

    apply_overrides(str(path), list(assignments))


def copy_workflow(folder: Path) -> Path:
    """The files the workflow runs from (Snakefile, its profile, rules, nepa, DVC's config) copied into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "profiles", "workflow", "nepa", ".dvc", ".dvcignore", "pyproject.toml"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, folder / name)
    return folder


def test_dag_grows_with_sizes_and_variants(tmp_path: Path) -> None:
    """Both tools expand the per-model stages over params' sizes x variants the same way."""
    copy_workflow(tmp_path)
    shutil.copy(ROOT / "params.yaml", tmp_path)
    set_params(tmp_path / "params.yaml", "variants=[nepa,no_stop_grad]")
    run("git", "init", "-q", cwd=tmp_path)
    run(sys.executable, "-m", "nepa.pipeline", str(tmp_path), cwd=tmp_path)
    dvc = dvc_jobs(tmp_path)
    assert snakemake_jobs(tmp_path) == dvc
    assert "pretrain@tiny-no_stop_grad" in dvc[0]


def test_snakemake_stops_when_rules_would_run_other_code(tmp_path: Path) -> None:
    """A checkout whose nepa/ differs from the installed one the rules run: one line naming both and the fix,
    exit 2, before any job. An unchanged copy (as in the test above) runs."""
    copy_workflow(tmp_path)
    shutil.copy(ROOT / "params.yaml", tmp_path)
    with (tmp_path / "nepa" / "verbs.py").open("a") as f:
        f.write("# edited in this checkout only\n")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    out = subprocess.run(["snakemake", "-n", "--cores", "1"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 2, out.stderr[-2000:]
    [line] = [line for line in out.stderr.splitlines() if line.startswith("nepa:")]
    assert str(tmp_path / "nepa") in line and str(ROOT / "nepa") in line and "envs/install.sh" in line
    assert "Traceback" not in out.stderr and "Job stats" not in out.stdout


@pytest.mark.parametrize("target", ["embedded", "ablations"])
def test_named_targets_resolve(target: str) -> None:
    dry = run("snakemake", "-n", "--cores", "1", target)
    assert "Job stats" in dry or "Nothing to be done" in dry
    if target == "ablations":
        assert "variant=no_stop_grad" in dry and "variant=mask_60" in dry


def test_snakemake_lint_passes() -> None:
    run("snakemake", "--lint")


def test_config_values_reach_the_stages_that_read_them() -> None:
    """`--config` (nested values in Snakemake's syntax) reaches each verb that reads it, as `--set`: those
    stages re-run; the DAG follows sizes and variants; the slurm profile's launcher reaches every stage."""
    commands = snakemake_jobs(ROOT, "--config", "seed=5", "probe={epochs: 3}")[0]
    assert commands["pretrain@tiny-nepa"] == "nepa pretrain --size tiny --variant nepa --set seed=5"
    assert commands["probe@tiny-nepa"] == "nepa probe --size tiny --variant nepa --set seed=5 --set probe.epochs=3"
    assert commands["export@tiny-nepa"] == "nepa export --size tiny --variant nepa"  # it reads neither
    small = snakemake_jobs(ROOT, "--config", 'sizes=["small"]')[0]
    assert "finetune@small-nepa" in small and not [job for job in small if "@tiny-" in job]
    assert small["report"] == "nepa report --set 'sizes=[\"small\"]'"
    on_slurm = snakemake_jobs(ROOT, "--profile", "workflow/profiles/slurm", "--config", "seed=5")[0]
    assert on_slurm["export@tiny-nepa"] == "nepa export --size tiny --variant nepa --set launcher.kind=submitit"
    assert on_slurm["pretrain@tiny-nepa"].endswith(" --set seed=5 --set launcher.kind=submitit")


@pytest.mark.parametrize(
    ("config", "line"),
    [
        ("bogus=1", "nepa: --config: unknown key 'bogus'; see the documented keys in params.yaml"),
        ("pretrain={epoch: 3}", "nepa: --config: unknown key 'pretrain.epoch'; see the documented keys in params.yaml"),
        ("pretrain={epochs: x}", "nepa: --config pretrain.epochs: Input should be a valid number (got 'x')"),
        ("variant=no_causal", "nepa: --config variant: not a workflow setting: the workflow runs `variants`"),
        ("dvc_remote=/x", "nepa: --config dvc_remote: not a workflow setting: `dvc push` reads its remote"),
    ],
)
def test_config_no_stage_could_honour_is_one_line(config: str, line: str) -> None:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    out = subprocess.run(["snakemake", "-n", "--cores", "1", "--config", config], cwd=ROOT, env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    [said] = [text for text in out.stderr.splitlines() if text.startswith("nepa:")]
    assert said.startswith(line) and "Traceback" not in out.stderr and "Job stats" not in out.stdout, out.stderr


def test_a_params_file_that_is_not_yaml_is_one_line_with_its_line(tmp_path: Path) -> None:
    copy_workflow(tmp_path)
    text = (ROOT / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(text.replace("  epochs: preset", "  epochs: [preset", 1))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    out = subprocess.run(["snakemake", "-n", "--cores", "1"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 2, out.stderr[-2000:]
    line = next(n for n, row in enumerate(text.splitlines(), 1) if row == "  epochs: preset")
    [said] = [text for text in out.stderr.splitlines() if text.startswith("nepa:")]
    assert said.startswith(f"nepa: params.yaml:{line + 1}: not valid YAML"), said
