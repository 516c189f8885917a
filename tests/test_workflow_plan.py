"""The DAG runs the experiment plan (nepa/plan.py): `snakemake -n` and `snakemake -n ablations` list exactly the
plan's jobs, which at full scale are the paper's runs (tests/test_plan.py), read the real datasets and write no
embedded data; DVC's dvc.yaml is the same DAG; runs per seed have their own folders and pass their seed."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_workflow import copy_workflow, dvc_jobs, run, snakemake_jobs

from nepa.config import load_params
from nepa.plan import plan_jobs

FULL = (
    "scale: full\nsizes: {sizes}\nmodel: {{size: base}}\n"
    "data: {{imagenet_src: {src}/imagenet, ade20k_src: {src}/ade}}\n"
)


def project(tmp_path: Path, params: str) -> Path:
    """A copy of the workflow with its own params.yaml, dvc.yaml rendered for it, and dataset folders."""
    work = copy_workflow(tmp_path / "project")
    (work / "params.yaml").write_text(params)
    for dataset in ("imagenet", "ade"):  # Snakemake checks that a source exists, even in a dry run
        (tmp_path / "datasets" / dataset).mkdir(parents=True)
    run("git", "init", "-q", cwd=work)
    run("python", "-m", "nepa.pipeline", str(work), cwd=work)
    return work


def planned(work: Path, target: str) -> set[str]:
    """The plan's jobs of `target`, named as the DAG tests name them (rule@run)."""
    return {f"{j.stage}@{j.run}" if j.run else j.stage for j in plan_jobs(load_params(work / "params.yaml"), (target,))}


@pytest.mark.parametrize("sizes", ["[base, large]", pytest.param("[base]", marks=pytest.mark.slow)])
def test_full_scale_targets_run_exactly_the_plan(tmp_path: Path, sizes: str) -> None:
    work = project(tmp_path, FULL.format(sizes=sizes, src=tmp_path / "datasets"))
    default, edges, inputs, outputs = snakemake_jobs(work)
    assert set(default) == planned(work, "all")
    assert "prepare_embedded" not in default and not any("data/raw" in p for i in inputs.values() for p in i)
    assert inputs["prepare_imagenet"] == {str(tmp_path / "datasets/imagenet")}
    assert inputs["prepare_ade20k"] == {str(tmp_path / "datasets/ade")}
    # Table 2's causal row fine-tunes the full-schedule model's export: no pretraining of its own
    assert "runs/base-nepa/export" in inputs["finetune@base-ft_causal"]
    assert "pretrain@base-ft_causal" not in default
    ablations = snakemake_jobs(work, "ablations")[0]
    assert set(ablations) == planned(work, "ablations")
    assert not [job for job in ablations if "@large-" in job]
    assert {"pretrain@base-nepa_50k", "pretrain@base-nepa_100k", "finetune@base-ft_causal_100k"} <= set(ablations)
    # DVC's dvc.yaml, rendered for these params, is the same DAG as the default target
    assert (default, edges, inputs, outputs) == dvc_jobs(work)


def test_runs_per_seed_have_their_own_folders_in_both_tools(tmp_path: Path) -> None:
    work = project(
        tmp_path, "sizes: [tiny]\nseeds: [0, 1]\nablation_seeds: [0, 1, 2]\nablation_variants: [no_causal]\n"
    )
    commands, edges, inputs, outputs = snakemake_jobs(work)
    assert commands["pretrain@tiny-nepa-s1"] == "nepa pretrain --size tiny --variant nepa --set seed=1"
    assert {job for job in commands if job.startswith("finetune@")} == {
        "finetune@tiny-nepa-s0",
        "finetune@tiny-nepa-s1",
    }
    assert inputs["finetune@tiny-nepa-s1"] == {"runs/tiny-nepa-s1/export", "data/shards/imagenet"}
    assert (commands, edges, inputs, outputs) == dvc_jobs(work)
    ablations = snakemake_jobs(work, "ablations")[0]
    assert set(ablations) == planned(work, "ablations")
    assert {f"probe@tiny-{v}-s{seed}" for v in ("nepa_50k", "no_causal") for seed in range(3)} <= set(ablations)
    params = load_params(work / "params.yaml", ("seed=2", "variant=no_causal"))
    assert params.run_name == "tiny-no_causal-s2"  # where the verb writes: the folder the DAG expects
