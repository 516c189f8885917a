"""The batch rule (nepa/batch.py): each stage keeps its paper global batch on any process count that divides
it, the recipe's micro-batch being an upper bound; a pinned one is used as given or refused with what to change;
a process count is checked only against the stages that run on it."""

from __future__ import annotations

from pathlib import Path

import pytest
from paper_doc import doc_tables

from nepa.batch import BatchError, split_batch, stage_batch
from nepa.cli import main as nepa_main
from nepa.config import load_params
from nepa.plan import audit, plan_of

ROOT = Path(__file__).resolve().parents[1]
FULL = "scale: full\nsizes: [base, large]\nmodel: {size: base}\ndata: {imagenet_src: /in1k, ade20k_src: /ade}\n"
PAPER_BATCHES = {"pretrain": {4096, 2048}, "finetune": {1024}, "segment": {16}}


@pytest.mark.parametrize(
    ("global_batch", "bound", "processes", "micro", "accumulation"),
    [
        (4096, 128, 8, 128, 4),  # one node of 8 GPUs: the recipe's micro-batch
        (4096, 128, 16, 128, 2),
        (4096, 128, 32, 128, 1),
        (4096, 128, 64, 64, 1),  # beyond 32 processes the micro-batch gives way
        (2048, 128, 128, 16, 1),
        (1024, 128, 1, 128, 8),
        (16, 2, 8, 2, 1),
        (100, 64, 1, 50, 2),  # the largest micro-batch within the bound that divides
    ],
)
def test_the_largest_micro_batch_within_the_bound(
    global_batch: int, bound: int, processes: int, micro: int, accumulation: int
) -> None:
    split = split_batch(global_batch, bound, processes)
    assert (split.micro_batch, split.accumulation) == (micro, accumulation)
    assert split.micro_batch * split.processes * split.accumulation == global_batch


def test_a_pinned_micro_batch_is_used_or_refused_with_the_fix() -> None:
    assert split_batch(2048, 64, 32, pinned=True).micro_batch == 64
    with pytest.raises(BatchError) as e:
        split_batch(2048, 96, 32, pinned=True, name="pretrain")
    assert str(e.value) == (
        "pretrain.micro_batch 96 (pinned in params) x 32 processes does not divide pretrain.global_batch 2048; set "
        "pretrain.micro_batch to 64, change the global batch, or remove pretrain.micro_batch to let nepa choose"
    )
    with pytest.raises(BatchError, match=r"^finetune.micro_batch 7 \(pinned in params\): Mixup pairs .* even one; set"):
        split_batch(64, 7, 1, pinned=True, multiple=2, name="finetune")  # odd: what is wrong is said first


def test_a_count_that_cannot_split_names_the_counts_that_can() -> None:
    with pytest.raises(BatchError, match=r"^pretrain.global_batch 4096 does not split over 3 processes .* on 2 or 4 "):
        split_batch(4096, 128, 3, name="pretrain")
    with pytest.raises(BatchError, match=r"micro-batches of at most 64, even \(Mixup .*\); run it on 8 or 16 proc"):
        split_batch(64, 64, 10, multiple=2)  # Mixup: even micro-batches only


def test_the_stages_rules_come_from_params(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("seed: 0\n")
    p = load_params(path)
    assert stage_batch(p, "segment", 4).micro_batch == 2 and not p.pinned_micro_batches
    with pytest.raises(BatchError, match=r"segment\.global_batch 8 does not split over 8 processes in micro-batches"):
        stage_batch(p, "segment", 8)  # 1 per process: below the head's BatchNorm minimum of 2
    mixup = load_params(path, ("finetune.mixup=0.8",))
    assert stage_batch(mixup, "finetune", 32).micro_batch == 2
    with pytest.raises(BatchError, match="even"):
        stage_batch(mixup, "finetune", 64)  # 1 image per process: Mixup needs pairs
    pinned = load_params(path, ("pretrain.micro_batch=16",))
    assert pinned.pinned_micro_batches == {"pretrain"} and stage_batch(pinned, "pretrain", 2).micro_batch == 16


PINNED_48 = (
    "nepa params: error: --set: pretrain.micro_batch 48 (pinned in params) x 1 process does not divide "
    "pretrain.global_batch 64; set pretrain.micro_batch to 32, change the global batch, or remove "
    "pretrain.micro_batch to let nepa choose"
)


@pytest.mark.parametrize(
    ("setting", "error"), [("finetune.global_batch=64", ""), ("pretrain.micro_batch=48", PINNED_48)]
)
def test_params_refuse_only_what_fails_on_any_process_count(tmp_path: Path, capsys, setting: str, error: str) -> None:
    """Issue 30: with launcher.processes=2 under submitit, finetune and segment no longer refuse their batches
    when only pretraining was to run on two tasks; a pinned micro-batch that fails on any count still stops."""
    path = tmp_path / "params.yaml"
    path.write_text("launcher: {kind: submitit, processes: 2}\n")
    assert nepa_main(["params", "--params", str(path), "--set", setting]) == (2 if error else 0)
    assert capsys.readouterr().err.strip() == error


def shape(tmp_path: Path, nodes: int, gpus: int, stages: tuple[str, ...], *extra: str):
    path = tmp_path / "params.yaml"
    path.write_text(FULL)
    sets = [f"launcher.stages.{s}.{k}={v}" for s in stages for k, v in (("nodes", nodes), ("gpus_per_node", gpus))]
    return plan_of(path, (*sets, *extra), ("all", "ablations"))


def batches_of(plan) -> dict[str, set[str]]:
    """Each training stage's batch splits over the plan's jobs, as `nepa plan` shows them."""
    out: dict[str, set[str]] = {}
    for job in plan.jobs:
        if job.stage in PAPER_BATCHES:
            p = plan.params_of(job)
            out.setdefault(job.stage, set()).add(str(stage_batch(p, job.stage, p.launcher.tasks(job.stage))))
    return out


@pytest.mark.parametrize("nodes", [1, 2, 4, 8, 16])
def test_the_full_scale_audit_passes_on_nodes_of_eight_gpus(tmp_path: Path, nodes: int) -> None:
    """Pretraining and fine-tuning on 1-16 nodes x 8 GPUs keep the paper's batches without a hand-set
    micro-batch. Segmentation's batch 16 splits over at most 8 GPUs (2 per GPU: the head's BatchNorm needs 2):
    it keeps its one node, and on more the audit says so."""
    plan = shape(tmp_path, nodes, 8, ("pretrain", "finetune"))
    assert audit(plan) == []
    for stage, splits in batches_of(plan).items():
        processes = 8 if stage == "segment" else nodes * 8
        assert {int(s.split(" = ")[0]) for s in splits} == PAPER_BATCHES[stage], splits
        assert all(f" x {processes} proc. x " in s for s in splits), splits
    if nodes > 1:
        problems = audit(shape(tmp_path, nodes, 8, ("segment",)))
        assert problems and all("segment.global_batch 16 does not split over" in p for p in problems), problems
        assert all(
            p.endswith("run it on 8 processes (launcher.stages.segment: nodes x gpus_per_node)") for p in problems
        )


@pytest.mark.parametrize("gpus", [1, 2, 3, 4])
def test_the_full_scale_audit_on_a_single_node_of_1_to_4_gpus(tmp_path: Path, gpus: int) -> None:
    """Every GPU stage on one node of `gpus` GPUs (with the requeues such a long run needs): the paper's batches
    hold on 1, 2 and 4; no equal split of 4096, 2048, 1024 or 16 exists on 3, and the audit names 2 or 4."""
    many_requeues = [f"launcher.stages.{s}.max_timeouts=400" for s in ("pretrain", "finetune", "segment", "probe")]
    plan = shape(tmp_path, 1, gpus, ("pretrain", "finetune", "segment"), *many_requeues)
    problems = audit(plan)
    if gpus == 3:
        assert problems and all("over 3 processes" in p and "run it on 2 or 4 processes" in p for p in problems)
        return
    assert problems == []
    for stage, splits in batches_of(plan).items():
        assert {int(s.split(" = ")[0]) for s in splits} == PAPER_BATCHES[stage]
        assert all(f" x {gpus} proc. x " in s for s in splits), splits


def test_nepa_plan_shows_the_derivation(tmp_path: Path, capsys) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(FULL)
    assert nepa_main(["plan", "--params", str(path), "--set", "launcher.stages.pretrain.nodes=16"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("pretrain base-nepa "))
    assert "4096 = 32 (<= 128) x 128 proc. x 1 acc." in line
    line = next(x for x in out.splitlines() if x.startswith("pretrain base-no_causal "))
    assert "2048 = 16 (<= 128) x 128 proc. x 1 acc." in line
    assert nepa_main(["plan", "--params", str(path), "--set", "pretrain.micro_batch=64"]) == 0
    assert "4096 = 64 (pinned) x 8 proc. x 8 acc." in capsys.readouterr().out


def test_a_pinned_micro_batch_that_cannot_hold_stops_the_plan_with_the_fix(tmp_path: Path, capsys) -> None:
    """64 pinned on 16 nodes x 8 GPUs: 64 x 128 processes is more than the batch of 4096; one line, exit 2."""
    path = tmp_path / "params.yaml"
    path.write_text(FULL)
    sets = ["launcher.stages.pretrain.nodes=16", "pretrain.micro_batch=64"]
    assert nepa_main(["plan", "--params", str(path), *(x for s in sets for x in ("--set", s))]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("nepa plan: error: plan audit failed: pretrain base-"), err
    fix = (
        "pretrain.micro_batch 64 (pinned in params) x 128 processes does not divide pretrain.global_batch 4096; "
        "set pretrain.micro_batch to 32, run it on 64 processes, or remove pretrain.micro_batch to let nepa choose"
    )
    assert fix in err, err


def test_the_guides_batch_table_is_the_rule(tmp_path: Path) -> None:
    """docs/slurm.md's table of splits per node count is what the plan runs."""
    rows = doc_tables((ROOT / "docs/slurm.md").read_text())["Batches on any shape"]
    columns = {"4096 (Tables 2, 3, 6)": ("pretrain", "nepa"), "2048 (Table 1)": ("pretrain", "no_causal"),
               "fine-tuning 1024 on the same": ("finetune", "nepa")}  # fmt: skip
    for row in rows:
        nodes = int(row["pretraining on"].split()[0])
        plan = shape(tmp_path, nodes, 8, ("pretrain", "finetune"))
        for column, (stage, variant) in columns.items():
            job = next(j for j in plan.jobs if (j.stage, j.size, j.variant) == (stage, "base", variant))
            p = plan.params_of(job)
            split = stage_batch(p, stage, p.launcher.tasks(stage))
            shown = f"{split.micro_batch} × {split.processes}" + (
                f" × {split.accumulation} acc." if split.accumulation > 1 else " × 1"
            )
            assert row[column] == shown, (nodes, column)
