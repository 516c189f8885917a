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
the fine-tune-only run's own, a GPU stage without GPUs or whose batch does not divide over them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from nepa.config import Params, SlurmParams
from nepa.layout import DOWNSTREAM, run_name
from nepa.presets import ABLATION_BATCH, ABLATION_STEPS, PRETRAIN_COMMON, PRETRAIN_EPOCHS, SHAPE, steps_per_epoch
from nepa.report.paper import ABLATION_TABLES, BY_KEY, HEADLINE_TABLES, ROWS, PaperRow
from nepa.variants import VARIANTS, pretraining_source, stand_in

TARGETS = ("all", "ablations")
GPU_STAGES = ("pretrain", *DOWNSTREAM)
ONE_PROCESS = ("probe",)  # runs on rank 0 only: more than one GPU would idle
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
    """The pretraining schedule at full scale (ImageNet-1K train)."""
    s = p.pretrain
    per_epoch = steps_per_epoch(s.global_batch)
    total = max(1, round(s.epochs * per_epoch))
    stop = total if s.max_steps is None else min(total, s.max_steps)
    warmup = min(total, round(s.warmup_epochs * per_epoch))
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
    """The global batch as processes x micro-batch x accumulation."""
    section = getattr(p, stage, None)
    if stage == "probe":
        return f"{section.global_batch} on 1 process"
    if section is None or not hasattr(section, "micro_batch"):
        return ""
    world = p.launcher.tasks(stage)
    per_step = section.micro_batch * world
    accumulation = f" x {section.global_batch // per_step} acc." if section.global_batch % per_step == 0 else " ✗"
    return f"{section.global_batch} = {section.micro_batch} x {world} proc.{accumulation}"


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
    section = getattr(p, job.stage, None)
    if job.stage in ("pretrain", "finetune", "segment"):
        world = p.launcher.tasks(job.stage)
        if section.global_batch % (section.micro_batch * world):
            problems.append(
                f"{job.name}: {job.stage}.global_batch {section.global_batch} is not a multiple of "
                f"micro_batch {section.micro_batch} x {world} processes; change {job.stage}.micro_batch "
                f"or launcher.stages.{job.stage}"
            )
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
