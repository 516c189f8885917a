"""The plan audit (`nepa plan`): the full-scale DAG's jobs are the paper's runs, on the paper's schedules
(docs/paper.md), with GPUs and batches that hold; every way issue 15 found the plan wrong fails in one line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
from paper_doc import table

from nepa import plan as plan_module
from nepa.cli import main as nepa_main
from nepa.config import load_params
from nepa.estimate import plan_of
from nepa.plan import Plan, audit, pretrain_schedule
from nepa.presets import PRETRAIN_EPOCHS, steps_per_epoch
from nepa.report import tables
from nepa.report.gather import PROVENANCE
from nepa.report.paper import BY_KEY
from nepa.variants import VARIANTS, pretrained_by

FULL = "scale: full\nsizes: {sizes}\nmodel: {{size: base}}\ndata: {{imagenet_src: /in1k, ade20k_src: /ade}}\n"
SIZES = {"[base, large]": ("base", "large"), "[base]": ("base",)}


def params_file(tmp_path: Path, sizes: str = "[base, large]", extra: str = "") -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(FULL.format(sizes=sizes) + extra)
    return path


def full_plan(tmp_path: Path, sizes: str = "[base, large]", *overrides: str, extra: str = "") -> Plan:
    return plan_of(params_file(tmp_path, sizes, extra), overrides, ("all", "ablations"))


def jobs(plan: Plan, stage: str, target: str | None = None) -> set[str]:
    return {j.run for j in plan.jobs if j.stage == stage and (target is None or target in j.targets)}


def run_plan(tmp_path: Path, capsys: pytest.CaptureFixture, *args: str, sizes: str = "[base, large]") -> tuple:
    capsys.readouterr()
    status = nepa_main(["plan", "--params", str(params_file(tmp_path, sizes)), *args])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("sizes", SIZES)
def test_the_full_scale_plan_passes_its_audit(tmp_path: Path, capsys: pytest.CaptureFixture, sizes: str) -> None:
    status, out, err = run_plan(tmp_path, capsys, sizes=sizes)
    assert status == 0 and "plan audit: consistent with the paper's tables" in out and not err
    title, header, *rows = out.splitlines()[:-1]
    assert title.endswith(f": {len(rows)} jobs")
    assert header.split() == ["job", "targets", "schedule", "batch", "GPUs", "GPU-h", "paper", "rows"]
    assert "pretrain large-nepa" in out if "large" in sizes else "large" not in out


@pytest.mark.parametrize("sizes", SIZES)
def test_the_targets_run_exactly_the_papers_runs(tmp_path: Path, sizes: str) -> None:
    plan = full_plan(tmp_path, sizes)
    doc_rows = {d["row"] for d in table("Ablations")}
    # `all`: the headline models of the configured sizes; Table 2's causal row fine-tunes the same pretraining
    assert jobs(plan, "pretrain", "all") == {f"{size}-nepa" for size in SIZES[sizes]}
    assert jobs(plan, "finetune", "all") == {f"{size}-{v}" for size in SIZES[sizes] for v in ("nepa", "ft_causal")}
    assert jobs(plan, "probe") == {"base-nepa"}  # Table 6: ViT-B only
    assert jobs(plan, "segment") == {f"{size}-nepa" for size in SIZES[sizes]}
    # `ablations`: ViT-B only, one pretraining per documented row's model, none for a fine-tune-only row
    variants = {BY_KEY[key].variant for key in doc_rows}
    pretrained = {pretrained_by(v) for v in variants}
    assert jobs(plan, "pretrain", "ablations") == {f"base-{v}" for v in pretrained}
    fine_tune_only = {name for name, v in VARIANTS.items() if v.pretrained_by}
    assert not fine_tune_only & {run.split("-", 1)[1] for run in jobs(plan, "pretrain")}
    finetuned = {BY_KEY[key].variant for key in doc_rows if BY_KEY[key].stage == "finetune"}
    assert jobs(plan, "finetune", "ablations") == {f"base-{v}" for v in finetuned}
    assert "base-no_stop_grad" not in jobs(plan, "finetune")  # its row is the collapse of its pretraining loss
    assert {j.stage for j in plan.jobs if not j.size} == {"prepare_imagenet", "prepare_ade20k", "report",
                                                          "report_ablations"}  # fmt: skip
    filled = {key for job in plan.jobs for key in job.rows}
    assert filled == doc_rows | {
        row.key for row in BY_KEY.values() if row.table in ("2", "3", "6") and row.size in SIZES[sizes]
    }


def test_each_job_runs_its_rows_schedule(tmp_path: Path) -> None:
    """The documented steps and batch of every Table 1 / appendix row, the cosine ending at the last step; the
    headline rows on the full schedule; a comparison only between runs on one schedule."""
    plan = full_plan(tmp_path)
    doc = {d["row"]: d for d in table("Ablations")}
    pretrain = {job.run: plan.params_of(job) for job in plan.jobs if job.stage == "pretrain"}
    for job in plan.jobs:
        for key in job.rows if job.stage == "pretrain" else ():
            s = pretrain_schedule(pretrain[job.run])
            assert s.stop_step == s.total_steps and pretrain[job.run].pretrain.max_steps is None, key
            assert s.warmup_steps < s.total_steps / 10, key
            if key in doc and doc[key]["steps"] != "full":
                assert (s.total_steps, s.global_batch) == (int(doc[key]["steps"]), int(doc[key]["batch"])), key
            else:
                epochs = PRETRAIN_EPOCHS["paper", BY_KEY[key].size]
                assert (s.total_steps, s.global_batch) == (epochs * steps_per_epoch(4096), 4096), key
    for key, d in doc.items():
        if d["versus"] != "-":
            ours, theirs = (pretrained_by(BY_KEY[k].variant) for k in (key, d["versus"]))
            assert pretrain_schedule(pretrain[f"base-{ours}"]) == pretrain_schedule(pretrain[f"base-{theirs}"]), key


def test_ablations_limited_by_ablation_variants_bring_their_baselines(tmp_path: Path) -> None:
    plan = plan_of(params_file(tmp_path, extra="ablation_variants: [no_causal, mask_60]\n"), (), ("ablations",))
    assert jobs(plan, "pretrain") == {"base-no_causal", "base-nepa_50k", "base-mask_60", "base-nepa_100k"}
    assert audit(plan) == []


def test_at_embedded_scale_ablations_run_their_stand_ins_with_a_probe(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("sizes: [tiny]\nablation_variants: [no_causal, ft_causal_100k]\n")
    plan = plan_of(path, (), ("ablations",))
    # one schedule for Table 1 at this scale: nepa_100k runs as nepa_50k, ft_causal_100k fine-tunes it
    assert jobs(plan, "pretrain") == {"tiny-no_causal", "tiny-nepa_50k"}
    assert jobs(plan, "finetune") == {"tiny-no_causal", "tiny-nepa_50k", "tiny-ft_causal_100k"}
    assert jobs(plan, "probe") == {"tiny-no_causal", "tiny-nepa_50k"}  # ft_causal_100k's would be nepa_50k's
    stages = {j.stage for j in plan.jobs if not j.size}
    assert stages == {"prepare_embedded", "prepare_imagenet", "report_ablations"}
    assert audit(plan) == []


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        # 15.1: a Table 1 run that stops early on the 1600-epoch schedule
        (("pretrain.epochs=1600", "pretrain.max_steps=50000"), "base-nepa_50k: stops at step 50,000"),
        (("pretrain.epochs=1600",), "but row 1a-full (Table 1a) is 50,000 steps at batch 2048"),
        # 15.4: downstream stages without GPUs, segmentation's batch over 16 GPUs, the probe on 8
        (("launcher.stages.finetune.gpus_per_node=0",), "finetune base-ft_causal: no GPUs at scale full"),
        (("launcher.stages.segment.nodes=2",), "segment.global_batch 16 is not a multiple of micro_batch 2 x 16"),
        (("launcher.stages.probe.gpus_per_node=8",), "probe base-nepa: runs on one process but gets 8 GPUs"),
        # 15.8: a multi-day run that its time limit and requeues cannot hold
        (("launcher.stages.pretrain.max_timeouts=0",), "set launcher.stages.pretrain.max_timeouts to"),
        # a cluster-wide GPU count that the stages' own would silently replace
        (("launcher.slurm.gpus_per_node=4",), "launcher.slurm.gpus_per_node 4 is ignored at scale full"),
        # Table 1b's and the appendix's comparisons need the paper's SwiGLU NEPA
        (("recipe=official",), "app-gelu compares base-gelu with base-nepa (app-swiglu), which resolve to the same"),
    ],
)
def test_the_audit_fails_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, overrides: tuple[str, ...], needle: str
) -> None:
    status, out, err = run_plan(tmp_path, capsys, *[arg for o in overrides for arg in ("--set", o)])
    assert status == 2 and err.startswith("nepa plan: error: plan audit failed: ") and err.count("\n") == 1
    assert needle in out


def test_a_row_on_the_wrong_run_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """15.2: Table 1a's full NEPA read from the 1600-epoch run, Table 2's causal row from the 100k-step one."""
    wrong = {
        "1a-full": dataclasses.replace(BY_KEY["1a-full"], variant="nepa"),
        "t2-causal-b": dataclasses.replace(BY_KEY["t2-causal-b"], variant="ft_causal_100k"),
    }
    rows = tuple(wrong.get(row.key, row) for row in plan_module.ROWS)
    monkeypatch.setattr(plan_module, "ROWS", rows)
    monkeypatch.setattr(plan_module, "BY_KEY", {row.key: row for row in rows})
    problems = audit(full_plan(tmp_path))
    assert any("pretrain base-nepa: 499,200 steps at batch 4096, but row 1a-full" in p for p in problems)
    assert any("pretrain base-nepa_100k: 100,000 steps at batch 2048, but row t2-causal-b" in p for p in problems)


def test_a_fine_tune_only_variant_changing_its_pretraining_fails(tmp_path: Path, monkeypatch) -> None:
    changed = {"finetune": {"attention": "causal"}, "model": {"rope": False}}
    monkeypatch.setitem(VARIANTS, "ft_causal", dataclasses.replace(VARIANTS["ft_causal"], overrides=changed))
    problems = audit(full_plan(tmp_path))
    assert any(
        "finetune base-ft_causal: fine-tunes the pretraining of base-nepa, whose params differ in model" in p
        for p in problems
    )


def test_recipe_paper_never_rescales_rope_and_official_does(tmp_path: Path) -> None:
    """15.6: the coordinate rescale is the official code's, not the paper's."""
    for recipe, rescale in (("paper", None), ("official", 2.0)):
        path = params_file(tmp_path, extra=f"recipe: {recipe}\n")
        assert load_params(path).model.rope_rescale == rescale
        assert load_params(path, size="large").model.rope_rescale == rescale


@pytest.mark.parametrize("scale", ["embedded", "full"])
def test_the_report_reads_each_row_from_the_run_the_plan_runs_for_it(tmp_path: Path, scale: str) -> None:
    if scale == "full":
        plan = full_plan(tmp_path)
    else:
        (tmp_path / "params.yaml").write_text("sizes: [tiny]\n")
        plan = plan_of(tmp_path / "params.yaml", (), ("all", "ablations"))
    provenance = dict.fromkeys(PROVENANCE) | {"scale": scale}
    records = [dict(run=j.run, size=j.size, variant=j.variant, seed=j.seed, init="" if j.stage == "pretrain" else
                    "pretrained", source=f"{j.run}/{j.stage}", stage=j.stage, metric="m", value=1.0, **provenance)
               for j in plan.jobs if j.size]  # fmt: skip
    ev = tables.Evidence(pd.DataFrame(records), {}, chance=10.0)
    filled = {(key, job.run) for job in plan.jobs for key in job.rows if job.stage == BY_KEY[key].stage}
    assert len(filled) > 10
    for key, run in filled:
        row = BY_KEY[key]
        size = tables.size_for(row, ev)
        assert f"{size}-{tables.variant_at(row.variant, size, row)}" == run, key


def test_a_fine_tune_only_variant_in_variants_only_fine_tunes(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("sizes: [tiny]\nvariants: [nepa, ft_causal]\n")
    plan = plan_of(tmp_path / "params.yaml", (), ("all",))
    assert {j.name for j in plan.jobs if j.variant == "ft_causal"} == {"finetune tiny-ft_causal"}
    assert jobs(plan, "export") == {"tiny-nepa"}
