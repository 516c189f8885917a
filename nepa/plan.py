"""The experiment plan: every job a DAG target runs, derived from the paper's rows, and its audit before launch.

At `scale: full` a target runs exactly what the paper's rows need (nepa/report/paper.py names the variant and
stage of each row): `all` the headline rows (Tables 2, 3, 6) of the configured sizes, `ablations` the rows of
Table 1 and the appendix at ViT-B (the paper ran no ViT-L ablation), limited to `ablation_variants` and the
rows they are compared with. A fine-tune-only variant fine-tunes its baseline's export (nepa/variants.py).
At `scale: embedded`, Table 1's sub-tables share one short schedule (presets.EMBEDDED_ABLATION): each variant
runs as its stand-in (variants.stand_in: 1b-1e's baseline as 1a's, the baseline on that schedule), every
configured size stands in for ViT-B, and every ablation run gets a fine-tune and a probe.

`audit` returns what is inconsistent with the paper or with itself: a schedule other than the row's, a cosine
that does not end where the run stops, a comparison across schedules, a reused pretraining that differs from
the fine-tune-only run's own, a GPU stage without GPUs or whose batch does not split over them, a job longer
than its time limit and requeues allow (with the cost model, nepa/cost.py).

    nepa plan [--target all|ablations] [--gpus N] [--benchmarks DIR] [--params params.yaml] [--set k=v ...]

lists every job the DAG's targets run with its schedule, batch split, GPUs, GPU-hours and the paper rows it
fills, audits the plan and exits 2 with one line on the first inconsistency.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nepa.batch import TRAINED, BatchError, stage_batch
from nepa.config import Params, SlurmParams, add_params_arguments, load_params
from nepa.cost import Cost, gpu_measurements, pretrain_steps, stage_cost, stage_speed, time_problem
from nepa.errors import UserError
from nepa.layout import DOWNSTREAM, run_name
from nepa.presets import ABLATION_BATCH, ABLATION_STEPS, PRETRAIN_COMMON, PRETRAIN_EPOCHS, SHAPE, steps_per_epoch
from nepa.report.paper import ABLATION_TABLES, BY_KEY, HEADLINE_TABLES, ROWS, PaperRow
from nepa.variants import VARIANTS, pretraining_source, stand_in

TARGETS = ("all", "ablations")
GPU_STAGES = ("pretrain", *DOWNSTREAM)
ONE_PROCESS = ("probe",)  # runs on rank 0 only: more than one GPU would idle
TIME_MARGIN = 1.25  # a job's SLURM time must cover its estimated wall time and a quarter (restarts, evaluation)
# Sections a pretraining depends on: a fine-tune-only run may reuse another's pretraining only where they agree.
PRETRAINING = ("recipe", "scale", "seed", "data", "model", "objective", "pretrain")

Resolve = Callable[[str, str, int], Params]  # (size, variant, seed) -> that run's params


@dataclass(frozen=True)
class Job:
    stage: str  # prepare_imagenet, prepare_ade20k, prepare_embedded, pretrain, export, finetune, probe, segment, report
    size: str = ""  # "" for the dataset stages and the report
    variant: str = ""
    seed: int = 0
    run: str = ""  # the run folder's name: size-variant, and -s{seed} where runs are per seed (Params.run_name)
    rows: tuple[str, ...] = ()  # paper rows whose number this job's output is (or leads to)
    targets: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.stage} {self.run}".strip()


@dataclass
class Plan:
    params: Params  # the params file's own (its scale, sizes, variants, seeds)
    resolve: Resolve
    jobs: list[Job] = field(default_factory=list)

    def params_of(self, job: Job) -> Params:
        return self.resolve(job.size, job.variant, job.seed)

    def of_variant(self, job: Job, variant: str) -> Params:
        """The params of `variant`'s run at the job's size and seed."""
        return self.resolve(job.size, variant, job.seed)


# ---- which runs a target needs ----------------------------------------------------------------------------


def _rows(tables: tuple[str, ...]) -> Iterator[PaperRow]:
    return (row for row in ROWS if row.table in tables)


def target_runs(params: Params, target: str) -> dict[tuple[str, str], dict[str, set[str]]]:
    """(size, variant) -> {stage: the paper rows it fills} of one target."""
    runs: dict[tuple[str, str], dict[str, set[str]]] = {}

    def need(size: str, variant: str, stage: str, row: str | None = None) -> None:
        rows = runs.setdefault((size, variant), {}).setdefault(stage, set())
        rows.update([row] if row else [])

    full = params.scale == "full"
    if target == "all":
        for size in params.sizes:
            if full:
                for row in _rows(HEADLINE_TABLES):
                    if row.size == size:
                        need(size, row.variant, row.stage, row.key)
            for variant in params.variants:
                if full and (size, variant) in runs:  # at full scale the paper's rows say what a run needs
                    continue
                # a fine-tune-only variant's probe and segmentation would be those of the model it fine-tunes
                for stage in DOWNSTREAM if pretraining_source(variant, full) == variant else ("finetune",):
                    need(size, variant, stage)
        return runs
    chosen = {stand_in(v) if not full else v for v in params.ablation_variants}
    picked = [row for row in _rows(ABLATION_TABLES) if (row.variant if full else stand_in(row.variant)) in chosen]
    # with them, the rows they are compared with, and each picked sub-table's NEPA baseline row (1b's "all four")
    tables = {row.table for row in picked}
    picked += [BY_KEY[row.versus] for row in picked if row.versus]
    picked += [row for row in _rows(tuple(tables)) if VARIANTS[row.variant].overrides == {}]
    for row in picked:
        if full:
            need("base", row.variant, row.stage, row.key)
            continue
        variant = stand_in(row.variant)
        for size in params.sizes:  # each reduced-scale size stands in for ViT-B; a probe beside every fine-tune
            need(size, variant, "finetune", row.key if row.stage == "finetune" else None)
            if pretraining_source(variant, full) == variant:  # a fine-tune-only variant's probe would be its source's
                need(size, variant, "probe")
            if row.stage == "pretrain":
                need(size, variant, "pretrain", row.key)
    return runs


def target_seeds(params: Params, target: str) -> tuple[int, ...]:
    """The seeds every run of `target` runs with."""
    return (params.seeds if target == "all" else params.ablation_seeds) or (params.seed,)


def build(params: Params, resolve: Resolve, targets: tuple[str, ...] = TARGETS) -> Plan:
    """The plan of `targets`: its jobs, and `resolve` for each job's params (the audit's)."""
    return Plan(params, resolve, plan_jobs(params, targets))


def plan_jobs(params: Params, targets: tuple[str, ...] = TARGETS) -> list[Job]:
    """Every job of `targets`, dataset stages first, each once (with every row and target it serves)."""
    full = params.scale == "full"
    found: dict[tuple[str, str, str, int], dict[str, set[str]]] = {}

    def add(stage: str, size: str, variant: str, seed: int, target: str, rows: set[str] = frozenset()) -> None:
        entry = found.setdefault((stage, size, variant, seed), {"rows": set(), "targets": set()})
        entry["rows"] |= rows
        entry["targets"].add(target)

    for target in targets:
        runs = target_runs(params, target)
        datasets = {"imagenet"} | ({"ade20k"} if any("segment" in s for s in runs.values()) else set())
        if not full:
            add("prepare_embedded", "", "", 0, target)
        for dataset in sorted(datasets):
            add(f"prepare_{dataset}", "", "", 0, target)
        for (size, variant), stages in runs.items():
            source = pretraining_source(variant, full)
            below = set().union(*stages.values())  # the pretraining leads to every row its run fills
            for seed in target_seeds(params, target):
                add("pretrain", size, source, seed, target, below)
                if set(stages) - {"pretrain"}:
                    add("export", size, source, seed, target, below)
                for stage, rows in stages.items():
                    if stage != "pretrain":
                        add(stage, size, variant, seed, target, rows)
        add("report" if target == "all" else "report_ablations", "", "", 0, target)
    order = ["prepare_embedded", "prepare_imagenet", "prepare_ade20k", "pretrain", "export", *DOWNSTREAM, "report",
             "report_ablations"]  # fmt: skip

    def run(size: str, variant: str, seed: int) -> str:
        return run_name(size, variant, seed if params.seeded else None) if size else ""

    return [
        Job(
            stage,
            size,
            variant,
            seed,
            run(size, variant, seed),
            tuple(sorted(e["rows"])),
            tuple(t for t in TARGETS if t in e["targets"]),
        )
        for (stage, size, variant, seed), e in sorted(found.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1:]))
    ]


# ---- schedules and batches ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    total_steps: int  # where the lr schedule ends
    stop_step: int  # where the run stops
    warmup_steps: int
    global_batch: int
    text: str


def pretrain_schedule(p: Params) -> Schedule:
    """The pretraining schedule at full scale: the engine's own, over ImageNet-1K train's steps per epoch."""
    s, steps = p.pretrain, pretrain_steps(p)
    total, stop, warmup = steps.total_steps, steps.stop_step, steps.warmup_steps
    text = f"{s.epochs:g} ep = {total:,} steps, warm-up {warmup:,}" + (f", STOPS at {stop:,}" if stop < total else "")
    return Schedule(total, stop, warmup, s.global_batch, text)


def paper_schedule(row: PaperRow, recipe: str) -> tuple[int, int]:
    """(steps, batch) of the pretraining behind a paper row."""
    if row.table in ABLATION_STEPS:
        return ABLATION_STEPS[row.table], ABLATION_BATCH
    batch = PRETRAIN_COMMON["global_batch"]
    return round(PRETRAIN_EPOCHS[recipe, row.size] * steps_per_epoch(batch)), batch


def gpus(p: Params, stage: str) -> int:
    """GPUs the stage's job gets (launcher.stages over launcher.slurm), whatever launcher.kind says now: the
    SLURM profile turns the launcher on for a whole DAG."""
    r = p.launcher.resources(stage)
    return r.nodes * r.gpus_per_node


def batch_text(p: Params, stage: str) -> str:
    """The global batch as micro-batch x processes x accumulation on the stage's processes (nepa/batch.py)."""
    if stage == "probe":
        return f"{p.probe.global_batch} on 1 process"
    if stage not in TRAINED:
        return ""
    try:
        return str(stage_batch(p, stage, p.launcher.tasks(stage)))
    except BatchError:
        return f"{getattr(p, stage).global_batch} on {p.launcher.tasks(stage)} proc. ✗"


def schedule_text(p: Params, stage: str) -> str:
    if stage == "pretrain":
        return pretrain_schedule(p).text if p.scale == "full" else f"{p.pretrain.epochs:g} ep"
    if stage == "finetune":
        return f"{p.finetune.epochs:g} ep, warm-up {p.finetune.warmup_epochs:g}"
    if stage == "probe":
        return f"{p.probe.epochs:g} ep"
    if stage == "segment":
        return f"{p.segment.iterations:,} it at {p.segment.crop} px"
    return ""


# ---- the audit ------------------------------------------------------------------------------------------------


def _pretraining(p: Params) -> dict[str, Any]:
    return p.model_dump(mode="json", include=set(PRETRAINING))


def audit(plan: Plan) -> list[str]:
    """Every inconsistency of the plan, one line each: what is wrong, where, and the fix."""
    full = plan.params.scale == "full"
    problems = _ignored_shape(plan.params) if full else []
    for job in plan.jobs:
        if not job.size:
            continue
        p = plan.params_of(job)
        problems += _job_problems(job, p, full)
        if job.stage in DOWNSTREAM and pretraining_source(job.variant, full) != job.variant:
            source = plan.of_variant(job, pretraining_source(job.variant, full))
            if _pretraining(source) != _pretraining(p):
                differ = sorted(k for k in PRETRAINING if _pretraining(source)[k] != _pretraining(p)[k])
                problems.append(
                    f"{job.name}: fine-tunes the pretraining of {source.run_name}, whose params differ in "
                    f"{', '.join(differ)}; a fine-tune-only variant may change only finetune"
                )
    if full:
        problems += _row_problems(plan)
    return problems + _void_comparisons(plan)


def _ignored_shape(p: Params) -> list[str]:
    """At full scale each stage's nodes and GPUs are its own (presets.SHAPE): launcher.slurm's would be ignored."""
    default = SlurmParams()
    return [
        f"launcher.slurm.{key} {getattr(p.launcher.slurm, key)} is ignored at scale full, where each stage has its "
        f"own; set launcher.stages.VERB.{key} (pretrain, finetune, segment; `nepa params` shows each)"
        for key in SHAPE
        if getattr(p.launcher.slurm, key) != getattr(default, key)
    ]


def _job_problems(job: Job, p: Params, full: bool) -> list[str]:
    problems = []
    if full and job.stage in GPU_STAGES:
        n = gpus(p, job.stage)
        if n < 1:
            problems.append(f"{job.name}: no GPUs at scale full; set launcher.stages.{job.stage}.gpus_per_node")
        elif job.stage in ONE_PROCESS and n > 1:
            problems.append(
                f"{job.name}: runs on one process but gets {n} GPUs; set launcher.stages.{job.stage}: "
                "{nodes: 1, gpus_per_node: 1}"
            )
    if job.stage in TRAINED:  # on the processes of its own stage only
        try:
            stage_batch(p, job.stage, p.launcher.tasks(job.stage))
        except BatchError as e:
            problems.append(f"{job.name}: {e} (launcher.stages.{job.stage}: nodes x gpus_per_node)")
    if full and job.stage == "pretrain":
        s = pretrain_schedule(p)
        if s.stop_step < s.total_steps:
            problems.append(
                f"{job.name}: stops at step {s.stop_step:,} (pretrain.max_steps) of a {s.total_steps:,}-"
                "step schedule, so its lr never decays; remove max_steps"
            )
    if full and job.stage == "segment" and p.data.ade20k_src is None:
        problems.append(f"{job.name}: data.ade20k_src is not set; point it at your ADEChallengeData2016 folder")
    return problems


def _row_problems(plan: Plan) -> list[str]:
    """Each row's run on the paper's schedule; each comparison between runs on one schedule that differ."""
    problems = []
    recipe = plan.params.recipe
    for job in plan.jobs:
        for key in job.rows if job.stage == "pretrain" else ():
            row = BY_KEY[key]
            if row.size != job.size:
                problems.append(f"{job.name}: fills {key}, a ViT-{row.size[0].upper()} row")
            steps, batch = paper_schedule(row, recipe)
            s = pretrain_schedule(plan.params_of(job))
            if (s.total_steps, s.global_batch) != (steps, batch):
                problems.append(
                    f"{job.name}: {s.total_steps:,} steps at batch {s.global_batch}, but row {key} "
                    f"(Table {row.table}) is {steps:,} steps at batch {batch}"
                )
    return problems


def _void_comparisons(plan: Plan) -> list[str]:
    """Rows compared with a row whose run resolves to the same params (under recipe official, NEPA's MLP is the
    GeLU that Table 1b's and the appendix's rows compare it with)."""
    full = plan.params.scale == "full"
    problems, seen = [], set()
    for job in plan.jobs:
        for key in job.rows:
            row = BY_KEY[key]
            versus = BY_KEY.get(row.versus or "")
            if versus is None or (job.size, key) in seen:
                continue
            seen.add((job.size, key))
            ours, theirs = (v if full else stand_in(v) for v in (row.variant, versus.variant))
            if ours == theirs:
                continue  # one run's two metrics (Table 6)
            a, b = (plan.of_variant(job, v).model_dump(exclude={"variant"}) for v in (ours, theirs))
            if a == b:
                problems.append(
                    f"{key} compares {job.size}-{ours} with {job.size}-{theirs} ({versus.key}), which resolve to the "
                    f"same params under recipe {plan.params.recipe}: the comparison is void; run it with recipe: paper"
                )
    return problems


# ---- the plan's costs (nepa/cost.py) -----------------------------------------------------------------------------


def plan_of(path: Path | dict[str, Any], overrides: tuple[str, ...], targets: tuple[str, ...]) -> Plan:
    """The plan of `targets` for the params at `path` (a file, or its data), each job's params resolved once."""
    cache: dict[tuple[str, str, int], Params] = {}

    def resolve(size: str, variant: str, seed: int) -> Params:
        if (size, variant, seed) not in cache:
            cache[size, variant, seed] = load_params(path, (*overrides, f"variant={variant}", f"seed={seed}"), size)
        return cache[size, variant, seed]

    return build(load_params(path, overrides), resolve, targets)


def costs_of(plan: Plan, measurements: list[dict[str, Any]], gpus_override: int | None) -> dict[Job, Cost]:
    """Each GPU job's cost: on its stage's GPUs (or `gpus_override` for every multi-GPU one)."""
    costs = {}
    for job in plan.jobs:
        if job.stage not in GPU_STAGES:
            continue
        p = plan.params_of(job)
        r = p.launcher.resources(job.stage)
        n = 1 if job.stage in ONE_PROCESS else gpus_override or gpus(p, job.stage)
        nodes = -(-n // r.gpus_per_node) if r.gpus_per_node else 1  # --gpus: as many of the stage's nodes
        costs[job] = stage_cost(job.stage, p, stage_speed(job.stage, p, measurements), max(n, 1), nodes)
    return costs


def time_problems(plan: Plan, costs: dict[Job, Cost]) -> list[str]:
    """Jobs whose estimated wall time does not fit their SLURM time limit and its requeues (docs/slurm.md)."""
    found = (time_problem(job.name, job.stage, plan.params_of(job), cost, TIME_MARGIN) for job, cost in costs.items())
    return [problem for problem in found if problem]


# ---- `nepa plan` ---------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`nepa plan`'s and `nepa estimate`'s arguments."""
    parser.add_argument("--target", choices=TARGETS, action="append", help="a DAG target (default: all of them)")
    parser.add_argument("--gpus", type=int, help="GPUs of every multi-GPU job (default: its launcher resources)")
    parser.add_argument("--benchmarks", type=Path, help="measurements folder (default: {results}/benchmarks)")
    add_params_arguments(parser)  # its own: it resolves each job's params (plan_of)


def check_arguments(args: argparse.Namespace) -> None:
    if args.gpus is not None and args.gpus < 1:
        raise UserError("--gpus must be at least 1")
    if args.size or args.variant:
        raise UserError("--size and --variant: a plan covers every size and variant of its targets; use --set")


def measurements_of(args: argparse.Namespace, p: Params) -> list[dict[str, Any]]:
    return gpu_measurements(args.benchmarks or Path(p.results) / "benchmarks")


def fail_on(problems: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more above)" if len(problems) > 1 else ""
        raise UserError(f"plan audit failed: {problems[0]}{more}")


def plan_table(plan: Plan, costs: dict[Job, Cost]) -> str:
    """Every job: its targets, schedule, batch split, GPUs, GPU-hours and the paper rows it fills."""
    rows = [("job", "targets", "schedule", "batch", "GPUs", "GPU-h", "paper rows")]
    for job in plan.jobs:
        p = plan.params_of(job) if job.size else None
        cost = costs.get(job)
        rows.append(
            (
                job.name,
                ",".join(job.targets),
                schedule_text(p, job.stage) if p else "",
                batch_text(p, job.stage) if p else "",
                str(cost.gpus) if cost else "-",
                f"{cost.gpu_hours:,.0f}" if cost else "-",
                " ".join(job.rows),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def main(args: argparse.Namespace) -> int:
    check_arguments(args)
    plan = plan_of(Path(args.params), tuple(args.overrides), tuple(args.target or TARGETS))
    p = plan.params
    full = p.scale == "full"
    costs = costs_of(plan, measurements_of(args, p), args.gpus) if full else {}
    print(
        f"nepa plan: {args.params} (scale {p.scale}, recipe {p.recipe}, sizes {', '.join(p.sizes)}); "
        f"targets {', '.join(args.target or TARGETS)}: {len(plan.jobs)} jobs"
    )
    print(plan_table(plan, costs))
    problems = audit(plan) + time_problems(plan, costs)
    for problem in problems:
        print(f"✗ {problem}")
    fail_on(problems)
    print("plan audit: consistent" + (" with the paper's tables" if full else ""))
    return 0
