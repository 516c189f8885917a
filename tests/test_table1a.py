"""Table 1a on a laptop (results/table1a_embedded.md): at embedded scale Table 1's runs, variant and baseline
alike, pretrain on one shorter schedule (presets.EMBEDDED_ABLATION) while the embedded default keeps its own;
`snakemake ablations` runs them one thread each, two side by side, and ends with their report; each ablation row
judges the linear probe against its baseline's beyond seed noise, beside the fine-tune."""

from __future__ import annotations

import re
from pathlib import Path

from test_report_seeds import record
from test_workflow import copy_workflow, run

from nepa.config import load_params
from nepa.presets import EMBEDDED, EMBEDDED_ABLATION, EMBEDDED_ABLATION_THREADS
from nepa.report import gather, tables
from nepa.report.paper import BY_KEY
from nepa.variants import VARIANTS, stand_in

TABLE_1A = "sizes: [tiny]\nablation_variants: [no_shift, no_causal, no_stop_grad]\nablation_seeds: [0, 1]\n"


def test_table_1_runs_get_the_embedded_ablation_schedule_and_the_default_keeps_its_own(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("sizes: [tiny]\n")
    short = EMBEDDED_ABLATION["pretrain"]
    for variant in ("nepa_50k", "no_shift", "no_causal", "no_stop_grad", "nepa_100k", "mask_60"):
        p = load_params(path, (f"variant={variant}",))
        assert (p.pretrain.epochs, p.pretrain.warmup_epochs) == (short["epochs"], short["warmup_epochs"]), variant
    for variant in ("nepa", "gelu", "ft_causal"):  # the default's, the appendix's and Table 2's: the full schedule
        p = load_params(path, (f"variant={variant}",))
        assert p.pretrain.epochs == EMBEDDED["pretrain"]["epochs"] > short["epochs"], variant
    # one schedule for every sub-table here: 1b-1e's baseline is 1a's, the default's NEPA is not on it
    assert stand_in("nepa_100k") == "nepa_50k" and stand_in("nepa_50k") == "nepa_50k"
    assert stand_in("ft_causal_100k") == "ft_causal_100k" and stand_in("ft_causal") == "ft_causal"


def test_ablations_target_runs_table_1a_one_thread_a_run_and_writes_its_report(tmp_path: Path) -> None:
    work = copy_workflow(tmp_path / "project")
    (work / "params.yaml").write_text(TABLE_1A)
    run("git", "init", "-q", cwd=work)
    dry = run("snakemake", "-n", "-p", "--forceall", "--cores", "2", "ablations", cwd=work)
    threads = {}
    for block in dry.split("\nrule ")[1:]:
        rule = block.split(":", 1)[0]
        wildcards = re.search(r"variant=(\w+), seed=(\d+)", block)
        found = re.search(r"^    threads: (\d+)$", block, re.MULTILINE)
        threads[f"{rule}@{wildcards[1]}-s{wildcards[2]}" if wildcards else rule] = int(found[1]) if found else 1
    runs = {f"{v}-s{s}" for v in ("nepa_50k", "no_shift", "no_causal", "no_stop_grad") for s in (0, 1)}
    assert {job for job in threads if job.startswith("pretrain@")} == {f"pretrain@{r}" for r in runs}
    assert {threads[f"{stage}@{r}"] for stage in ("pretrain", "finetune", "probe") for r in runs} == {
        EMBEDDED_ABLATION_THREADS
    }
    assert threads["prepare_imagenet"] == 2  # a stage outside Table 1 keeps every core
    assert "nepa report --set results=results/ablations > logs/report_ablations.log" in dry
    assert all(VARIANTS[run.split("-s")[0]].schedule for run in runs)


def test_ablation_rows_judge_the_probe_against_their_baseline(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    probes = {"nepa_50k": (61.6, 62.4), "no_shift": (24.0, 25.0), "no_causal": (60.0, 63.0), "no_stop_grad": (40, 41)}
    for variant, values in probes.items():
        for seed, top1 in enumerate(values):
            metrics = {"val_top1_last": top1, "val_top1_mean": top1}
            record(runs / f"tiny-{variant}-s{seed}" / "probe", "probe", metrics, variant, seed, "x.safetensors")
    ev = tables.Evidence(gather.metrics_table(runs), {}, chance=10.0)
    no_shift, no_causal, no_stop_grad = (tables.ablation_row(BY_KEY[k], ev)[0]["Direction"]
                                         for k in ("1a-no-shift", "1a-no-causal", "1a-no-stop-grad"))  # fmt: skip
    assert "probe 24.50 < 62.00 (full NEPA) ✓" in no_shift  # worse beyond the spread: what "fails" expects
    assert "probe 61.50 < 62.00 (full NEPA) ≈ within spread" in no_causal
    assert "probe" not in no_stop_grad  # a collapse is judged on its pretraining
    # fine-tune-only rows share their baseline's pretraining: no probe of their own to compare
    assert tables.probe_direction(BY_KEY["1e-causal"], "tiny", ev) == ""
