"""The CLI's dispatch (a stage runs here or is submitted to SLURM; other verbs always run here) and the
params checks every verb gets before it does anything: one line naming the key and the fix, exit 2."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import nepa
from nepa.cli import main as nepa_main
from nepa.config import add_params_arguments

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The repository's params.yaml with `launcher.kind: submitit` in a temporary current directory, and a
    stand-in `sbatch` that records each submission and refuses it (no SLURM runs here: tests/test_slurm.py
    submits to a real one)."""
    text = (ROOT / "params.yaml").read_text()
    assert "  kind: local" in text
    (tmp_path / "params.yaml").write_text(text.replace("  kind: local", "  kind: submitit"))
    monkeypatch.chdir(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (
        ("sbatch", 'echo "$@" >> submissions; echo "sbatch: error: refused by the test" >&2; exit 1'),
        ("srun", "exit 1"),
    ):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return tmp_path


def test_params_and_estimate_never_submit_a_job(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert nepa_main(["params"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["launcher"]["kind"] == "submitit"
    assert nepa_main(["estimate"]) == 0
    assert "nepa estimate: a full reproduction" in capsys.readouterr().out
    assert not (workdir / "submissions").exists()


def test_a_stage_under_submitit_is_submitted(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same stand-in sees a stage verb's submission (so the test above would see one too)."""
    assert nepa_main(["export"]) == 2
    assert "sbatch refused the export job: " in capsys.readouterr().err
    assert len((workdir / "submissions").read_text().splitlines()) == 1


@pytest.mark.parametrize(
    ("verb", "assignment", "needle"),
    [
        ("pretrain", "pretrain.global_batch=0", "pretrain.global_batch: Input should be greater than 0 (got 0)"),
        ("pretrain", "pretrain.global_batch=-8", "pretrain.global_batch: Input should be greater than 0 (got -8)"),
        (
            "pretrain",
            "pretrain.micro_batch=48",
            "pretrain.micro_batch 48 (pinned in params) x 1 process does not divide pretrain.global_batch 64",
        ),
        ("pretrain", "pretrain.micro_batch=0", "pretrain.micro_batch: Input should be greater than 0"),
        ("pretrain", "pretrain.epochs=0", "pretrain.epochs: Input should be greater than 0"),
        ("pretrain", "pretrain.base_lr=-1e-3", "pretrain.base_lr: Input should be greater than or equal to 0"),
        ("pretrain", "pretrain.ema_decay=1.5", "pretrain.ema_decay: Input should be less than 1"),
        ("pretrain", "pretrain.crop_scale=[0,1]", "pretrain.crop_scale.0: Input should be greater than 0"),
        ("pretrain", "pretrain.max_steps=0", "pretrain.max_steps: Input should be greater than 0"),
        ("pretrain", "pretrain.checkpoint_every=0", "pretrain.checkpoint_every: Input should be greater than 0"),
        ("pretrain", "objective.mask_ratio=1", "objective.mask_ratio: Input should be less than 1"),
        ("finetune", "finetune.drop_path=-0.1", "finetune.drop_path: Input should be greater than or equal to 0"),
        ("finetune", "finetune.layer_decay=0", "finetune.layer_decay: Input should be greater than 0"),
        ("finetune", "finetune.betas=[0.9,1.5]", "finetune.betas.1: Input should be less than 1"),
        ("probe", "probe.epochs=0", "probe.epochs: Input should be greater than 0"),
        ("probe", "probe.poolings=[]", "probe.poolings: Tuple should have at least 1 item"),
        ("segment", "segment.iterations=0", "segment.iterations: Input should be greater than 0"),
        ("segment", "segment.micro_batch=1", "segment.micro_batch: Input should be greater than or equal to 2"),
        ("prepare", "data.images_per_shard=0", "data.images_per_shard: Input should be greater than 0"),
        ("prepare", "launcher.slurm.nodes=0", "launcher.slurm.nodes: Input should be greater than 0"),
        ("prepare", "launcher.stages.params.nodes=2", "launcher.stages: ['params'] are not stage verbs"),
    ],
)
def test_bad_sizes_counts_and_ratios_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], verb: str, assignment: str, needle: str
) -> None:
    args = ["embedded"] if verb == "prepare" else []
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    assert nepa_main([verb, *args, "--params", str(params), "--set", assignment]) == 2
    err = capsys.readouterr().err.strip()
    # labelled where the value came from: --set, not the params file
    assert err.startswith(f"nepa {verb}: error: --set") and needle in err and str(params) not in err, err
    assert "\n" not in err and "Traceback" not in err


def test_global_batch_fits_the_slurm_tasks_of_its_stage(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Under submitit the process count of a stage is known before it starts: the recipe's micro-batch gives way
    (64 = 4 x 16 tasks), while a pinned one that does not split over them stops the stage here, not in a job after
    its wait in the queue; the other stages' batches are not held against the pretraining's tasks."""
    params = workdir / "params.yaml"
    params.write_text("launcher:\n  kind: submitit\n  stages:\n    pretrain: {nodes: 2, gpus_per_node: 8}\n")
    assert nepa_main(["params", "--params", str(params), "--set", "launcher.processes=2"]) == 0
    capsys.readouterr()
    assert nepa_main(["pretrain", "--params", str(params), "--set", "pretrain.micro_batch=8"]) == 2
    assert capsys.readouterr().err.strip() == (
        "nepa pretrain: error: pretrain.micro_batch 8 (pinned in params) x 16 processes does not divide "
        "pretrain.global_batch 64; set pretrain.micro_batch to 4, run it on 8 processes, or remove "
        "pretrain.micro_batch to let nepa choose"
    )
    assert not (workdir / "submissions").exists()


def test_an_unknown_variant_is_one_line_naming_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    """`--variant` is checked by params (not argparse's choices, whose usage lines and list would come first)."""
    assert nepa_main(["params", "--params", str(ROOT / "params.yaml"), "--variant", "no_such"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("nepa params: error: --variant: variant 'no_such' is not one of ['ft_causal', ")


@pytest.mark.parametrize("verb", ["prepare", "pretrain", "export", "finetune", "probe", "segment", "report"])
def test_each_stage_verb_says_what_it_reads_and_writes(verb: str) -> None:
    """`nepa VERB --help`: the files of its stage (nepa/pipeline.py) and its choices, and nothing of DeepSpeed's
    (its accelerator line came with the verb's imports); `nepa --version`."""
    out = subprocess.run([sys.executable, "-m", "nepa.cli", verb, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    if verb == "prepare":  # its own epilog: the three datasets and the forms it reads
        assert "{data.root}/shards/imagenet" in out.stdout and "{data.root}/raw" in out.stdout
        return
    files = out.stdout.split("files (names from params")[1]
    assert "  writes  " in files and "  reads   " in files
    if verb != "report":
        assert "{runs}/{size}-{variant}/" in files and "{tiny,small,base,large}" in out.stdout
        assert "no_stop_grad" in out.stdout  # the variants, by name
    version = subprocess.run([sys.executable, "-m", "nepa.cli", "--version"], capture_output=True, text=True)
    assert version.stdout.strip() == f"nepa {nepa.__version__}"


def test_one_list_of_model_sizes() -> None:
    """nepa.config.SIZES is the list: the CLI's --size, the models timm registers and the workflow's size
    wildcard follow it."""
    import timm

    import nepa.models  # noqa: F401  (registers the models)
    from nepa.cli import build_parser
    from nepa.config import SIZES

    _, subparsers = build_parser()
    parser = subparsers["pretrain"]
    add_params_arguments(parser)
    size = next(a for a in parser._actions if a.dest == "size")
    assert list(size.choices) == list(SIZES)
    assert sorted(timm.list_models("nepa_*")) == sorted(s.timm_name for s in SIZES.values())
    assert 'size="|".join(SIZES)' in (ROOT / "workflow/rules/common.smk").read_text()
