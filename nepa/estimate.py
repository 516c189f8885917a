"""`nepa plan` and `nepa estimate`: every job of the full-scale DAG with its GPU-hours, audited, before launch.

    nepa plan [--target all|ablations] [--gpus N] [--benchmarks DIR] [--params params.yaml] [--set k=v ...]
    nepa estimate [--gpus N] [--benchmarks DIR] [--params params.yaml] [--set k=v ...]

`nepa plan` lists every job the DAG's targets run (nepa/plan.py: the paper's rows decide them) with its
schedule, batch, GPUs and GPU-hours and the paper rows it fills, audits the plan and exits 2 with one line on
the first inconsistency. `nepa estimate` sums the same audited plan, always at full scale: a full reproduction
(targets `all` and `ablations`); from an embedded params.yaml, its full-scale recipe at sizes base and large.
The work of a job comes from its resolved params: images = the pretraining schedule's steps x global batch,
epochs x 1,281,167 for fine-tuning, iterations x batch for segmentation.

Speed: images/s per GPU of the NEPA model's training step (forward + backward + AdamW, bf16, eager: the
engine's path), as measured on a GPU by benchmarks/step_throughput.py: the newest such result under
--benchmarks (default {results}/benchmarks). Where there is none, the speed is an ASSUMPTION derived from the
paper's cost statement (ASSUMED_COST below), and every line that uses it says so. How the other stages are
scaled from that one figure is listed in SCALING, printed with the table. Nothing here is launched or timed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nepa.config import SIZES, Params, add_params_arguments, load_params
from nepa.errors import UserError
from nepa.plan import (
    GPU_STAGES,
    ONE_PROCESS,
    TARGETS,
    Job,
    Plan,
    audit,
    batch_text,
    build,
    gpus,
    pretrain_schedule,
    schedule_text,
)
from nepa.presets import IMAGENET_TRAIN

IMAGENET_VAL = 50_000
LETTERS = {"base": "B", "large": "L"}  # ViT-B, ViT-L

# ---- the assumptions, in one place --------------------------------------------------------------------------
# Used only where no GPU measurement exists: docs/paper.md "Cost: 8xH100, ~3 days (B), ~5 days (L)", for the paper's
# pretraining schedules (B 1600 epochs, L 800 epochs). Per-GPU speed = epochs x 1,281,167 / (8 x days x 86400 s),
# i.e. everything the paper's runs spent (data loading, checkpoints, evaluation) charged to the training step.
ASSUMED_COST: dict[str, dict[str, float]] = {
    "base": {"epochs": 1600, "days": 3.0, "gpus": 8},
    "large": {"epochs": 800, "days": 5.0, "gpus": 8},
}
# How stages other than pretraining are scaled from the training-step speed (measured or assumed):
TIME_MARGIN = 1.25  # a job's SLURM time must cover its estimated wall time and a quarter (restarts, evaluation)
FORWARD_ONLY = 3.0  # a forward pass is 1/3 of a training step's FLOPs (backward = 2x forward)
SCALING = (
    "multi-GPU speed = per-GPU speed x GPUs (linear scaling; no communication cost counted)",
    "finetune: the pretraining step's speed of the same model (same FLOPs up to bidirectional attention and the "
    "frozen patch embedding); + one forward over the 50,000 val images per epoch at 3x that speed",
    "probe: one forward over train + val at 3x the training speed, on one GPU (the verb runs one process); "
    "the linear classifier's SGD over in-memory features is not counted",
    "prepare and export run on CPUs and are not counted",
    "segment: the 224-px training speed x (backbone FLOPs per 224 image / per crop image, crop padded to the "
    "patch); the UperNet head and the evaluation are not counted: a lower bound",
    "ablations: the speed of the benchmarked NEPA model with the variant's MLP (architecture switches such as "
    "RoPE, QK-Norm and LayerScale are not benchmarked separately)",
)


# ---- FLOPs ---------------------------------------------------------------------------------------------------


def forward_flops(
    *,
    img_size: int,
    patch_size: int,
    embed_dim: int,
    depth: int,
    mlp_hidden_dim: int,
    mlp_gated: bool,
    causal: bool,
    in_chans: int = 3,
    prefix_tokens: int = 1,
) -> float:
    """Matmul FLOPs (2 per multiply-add) of one image's forward through a ViT trunk: the patch embedding, per block
    the qkv and output projections, attention scores and weighted values, the MLP. Norms, softmax, RoPE and the
    loss are not counted (a few %). Causal attention counts the T(T+1)/2 scores a causal kernel computes."""
    n = (img_size // patch_size) ** 2
    t, d = n + prefix_tokens, embed_dim
    embed = 2 * n * in_chans * patch_size**2 * d
    linear = 2 * t * d * (3 * d + d + (3 if mlp_gated else 2) * mlp_hidden_dim)
    pairs = t * (t + 1) / 2 if causal else t * t
    attention = 2 * 2 * pairs * d  # q.k over every head (head_dim x heads = d), then weights x v
    return float(embed + depth * (linear + attention))


def training_flops(**arch: Any) -> float:
    """Forward + backward (2x forward) of one image: the convention of MFU reports."""
    return 3 * forward_flops(**arch)


def nepa_arch(params: Params, img_size: int | None = None) -> dict[str, Any]:
    """forward_flops() arguments of the configured NEPA model (size and MLP from params)."""
    fields = {**SIZES[params.model.size].architecture, **params.model.architecture()}
    return dict(
        img_size=img_size or fields.get("img_size", 224),
        patch_size=fields.get("patch_size", 14),
        embed_dim=fields["embed_dim"],
        depth=fields["depth"],
        mlp_hidden_dim=fields["mlp_hidden_dim"],
        mlp_gated=fields["mlp_gated"],
        causal=params.objective.causal,
    )


# ---- speed: measured or assumed ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Speed:
    images_per_s: float  # per GPU, training step
    measured: bool
    source: str


def benchmark_key(size: str, mlp: str) -> str:
    """The model name benchmarks/step_throughput.py gives this NEPA size and MLP."""
    return f"nepa-{LETTERS[size]}" + ("-swiglu" if mlp == "swiglu" else "")


def gpu_results(folder: Path) -> list[dict[str, Any]]:
    """step_throughput results measured on a GPU, newest first."""
    found = []
    for path in folder.glob("step_throughput*.json"):
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if result.get("device", {}).get("type") == "cuda":
            found.append({**result, "_path": str(path)})
    return sorted(found, key=lambda r: r.get("date", ""), reverse=True)


def measured_speed(results: list[dict[str, Any]], size: str, mlp: str, batch: int) -> Speed | None:
    """The newest GPU measurement of the model (eager, bf16): at `batch` if measured, else the nearest batch;
    the same size with the other MLP if this one was not benchmarked."""
    other = "gelu" if mlp == "swiglu" else "swiglu"
    for result in results:
        for key in (benchmark_key(size, mlp), benchmark_key(size, other)):
            rows = [
                r
                for r in result.get("results", [])
                if r.get("model") == key
                and r.get("status") == "ok"
                and not r.get("compile")
                and r.get("precision") == "bf16"
            ]
            if not rows:
                continue
            row = min(rows, key=lambda r: (abs(r["batch"] - batch), -r["batch"]))
            device = result["device"]
            note = "" if key == benchmark_key(size, mlp) else f", {other} MLP standing in for {mlp}"
            source = (
                f"MEASURED: {key}, batch {row['batch']}, eager bf16, on {device.get('name')} "
                f"({result.get('date', '?')[:10]}, {Path(result['_path']).name}{note})"
            )
            return Speed(float(row["images_per_s"]), True, source)
    return None


def assumed_speed(size: str) -> Speed:
    cost = ASSUMED_COST[size]
    speed = cost["epochs"] * IMAGENET_TRAIN / (cost["gpus"] * cost["days"] * 86400)
    return Speed(
        speed,
        False,
        f"ASSUMED, no GPU measurement of ViT-{LETTERS[size]}: {cost['epochs']:.0f} epochs x "
        f"{IMAGENET_TRAIN:,} images / ({cost['gpus']:.0f} GPUs x {cost['days']:.0f} days x "
        "86400 s), the paper's cost statement (8xH100)",
    )


# ---- the cost of a job ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cost:
    job: Job
    work: str
    speed: Speed
    gpus: int
    gpu_hours: float

    @property
    def wall_hours(self) -> float:
        return self.gpu_hours / self.gpus


def _hours(images: float, speed: float) -> float:
    return images / speed / 3600


def job_cost(job: Job, p: Params, speed: Speed, n_gpus: int) -> Cost:
    """GPU-hours of one GPU job at full scale."""
    v = speed.images_per_s
    if job.stage == "pretrain":
        s = pretrain_schedule(p)
        images = s.stop_step * s.global_batch
        return Cost(
            job,
            f"{s.stop_step:,} steps x batch {s.global_batch} = {images:.3g} images",
            speed,
            n_gpus,
            _hours(images, v),
        )
    if job.stage == "finetune":
        f = p.finetune
        hours = _hours(f.epochs * IMAGENET_TRAIN, v) + _hours(f.epochs * IMAGENET_VAL, v * FORWARD_ONLY)
        return Cost(job, f"{f.epochs:g} epochs x {IMAGENET_TRAIN:,} + val each epoch", speed, n_gpus, hours)
    if job.stage == "probe":
        images = IMAGENET_TRAIN + IMAGENET_VAL
        return Cost(
            job, f"features of {images:,} images (forward only)", speed, n_gpus, _hours(images, v * FORWARD_ONLY)
        )
    s = p.segment
    patch = nepa_arch(p)["patch_size"]
    side = -(-s.crop // patch) * patch
    ratio = training_flops(**nepa_arch(p, 224)) / training_flops(**{**nepa_arch(p, side), "causal": False})
    work = f"{s.iterations:,} it x batch {s.global_batch} at {side} px (x{1 / ratio:.1f} FLOPs of 224)"
    return Cost(job, work, speed, n_gpus, _hours(s.iterations * s.global_batch, v * ratio))


# ---- resolving the full-scale params -------------------------------------------------------------------------


KEPT_FROM_EMBEDDED = ("recipe", "variants", "ablation_variants", "results", "objective", "launcher", "model", "seed")


@contextlib.contextmanager
def full_scale_params(args: argparse.Namespace) -> Iterator[tuple[Path | dict[str, Any], bool]]:
    """Params at scale full: --params itself (True) or, from an embedded one (False), its full-scale recipe
    with what it sets of KEPT_FROM_EMBEDDED, at sizes base and large (its other sections hold the embedded
    schedule, which would win over the full-scale presets)."""
    own = load_params(args.params, tuple(args.overrides))
    if own.scale == "full":
        yield Path(args.params), True
        return
    # what the file (and --set) say, not the defaults nor a variant's change: those the full-scale plan decides
    own = load_params(args.params, (*args.overrides, "variant=nepa"))
    kept = own.model_dump(mode="json", exclude_unset=True, include=set(KEPT_FROM_EMBEDDED))
    full = {
        **kept,
        "scale": "full",
        "sizes": ["base", "large"],
        "model": {**kept.get("model", {}), "size": "base"},
        "data": {"imagenet_src": "unused-by-estimate", "ade20k_src": "unused-by-estimate"},
    }
    yield full, False


def plan_of(path: Path | dict[str, Any], overrides: tuple[str, ...], targets: tuple[str, ...]) -> Plan:
    cache: dict[tuple[str, str, int], Params] = {}

    def resolve(size: str, variant: str, seed: int) -> Params:
        if (size, variant, seed) not in cache:
            cache[size, variant, seed] = load_params(path, (*overrides, f"variant={variant}", f"seed={seed}"), size)
        return cache[size, variant, seed]

    return build(load_params(path, overrides), resolve, targets)


def costs_of(plan: Plan, results: list[dict[str, Any]], gpus_override: int | None) -> list[Cost]:
    costs = []
    for job in plan.jobs:
        if job.stage not in GPU_STAGES:
            continue
        p = plan.params_of(job)
        speed = measured_speed(results, job.size, p.model.mlp, p.pretrain.micro_batch) or assumed_speed(job.size)
        n = 1 if job.stage in ONE_PROCESS else gpus_override or gpus(p, job.stage)
        costs.append(job_cost(job, p, speed, max(n, 1)))
    return costs


def time_problems(plan: Plan, costs: list[Cost]) -> list[str]:
    """Jobs whose estimated wall time does not fit their SLURM time limit and its requeues (docs/slurm.md)."""
    problems = []
    for cost in costs:
        r = plan.params_of(cost.job).launcher.resources(cost.job.stage)
        allowed = r.time_min / 60 * (r.max_timeouts + 1)
        needed = cost.wall_hours * TIME_MARGIN
        if allowed < needed:
            timeouts = math.ceil(needed * 60 / r.time_min) - 1
            problems.append(
                f"{cost.job.name}: needs ~{_duration(needed)} with margin on {cost.gpus} GPUs, but "
                f"time_min {r.time_min} x (max_timeouts {r.max_timeouts} + 1) allows {_duration(allowed)}; "
                f"set launcher.stages.{cost.job.stage}.max_timeouts to {timeouts} or more"
            )
    return problems


def _duration(hours: float) -> str:
    return f"{hours / 24:.1f} d" if hours >= 48 else f"{hours:.1f} h"


# ---- output --------------------------------------------------------------------------------------------------


def speed_notes(costs: list[Cost]) -> dict[Speed, str]:
    """Each speed's footnote label: M1, M2... measured, A1, A2... ASSUMED."""
    notes: dict[Speed, str] = {}
    for c in costs:
        if c.speed not in notes:
            kind = "M" if c.speed.measured else "A"
            notes[c.speed] = f"{kind}{sum(1 for s in notes if s.measured == c.speed.measured) + 1}"
    return notes


def render(costs: list[Cost], header: list[str]) -> str:
    """The cost table with each speed's source once as a footnote, totals per target and overall."""
    notes = speed_notes(costs)
    width = max(len(c.job.name) for c in costs)
    lines = [
        *header,
        "",
        f"{'job':<{width}}  {'GPU-hours':>9}  {'wall':>7}  {'GPUs':>4}  {'img/s/GPU':>9}  {'speed':<12}  work",
    ]
    for c in costs:
        label = ("measured " if c.speed.measured else "ASSUMED ") + notes[c.speed]
        lines.append(
            f"{c.job.name:<{width}}  {c.gpu_hours:>9,.1f}  {_duration(c.wall_hours):>7}  {c.gpus:>4}  "
            f"{c.speed.images_per_s:>9.1f}  {label:<12}  {c.work}"
        )
    for target in TARGETS:
        mine = [c for c in costs if target in c.job.targets]
        if mine:
            lines.append(
                f"{'total, target ' + target:<{width}}  {sum(c.gpu_hours for c in mine):>9,.1f}  "
                f"{_duration(sum(c.wall_hours for c in mine)):>7}  one job after another, {len(mine)} jobs"
            )
    total, wall = sum(c.gpu_hours for c in costs), sum(c.wall_hours for c in costs)
    lines.append(f"{'total, one job after another':<{width}}  {total:>9,.1f}  {_duration(wall):>7}")
    lines += ["", "Speeds (training step, images/s per GPU):"]
    lines += [f"  {note}: {speed.images_per_s:.1f}, {speed.source}" for speed, note in notes.items()]
    lines += ["How the other stages are scaled from the training-step speed:", *(f"  - {s}" for s in SCALING)]
    return "\n".join(lines)


def plan_table(plan: Plan, costs: list[Cost]) -> str:
    """Every job: its targets, schedule, batch, GPUs, GPU-hours and the paper rows it fills."""
    by_job = {c.job: c for c in costs}
    rows = [("job", "targets", "schedule", "batch", "GPUs", "GPU-h", "paper rows")]
    for job in plan.jobs:
        p = plan.params_of(job) if job.size else None
        cost = by_job.get(job)
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`nepa plan`'s and `nepa estimate`'s arguments."""
    parser.add_argument("--target", choices=TARGETS, action="append", help="a DAG target (default: all of them)")
    parser.add_argument("--gpus", type=int, help="GPUs of every multi-GPU job (default: its launcher resources)")
    parser.add_argument("--benchmarks", type=Path, help="step_throughput results (default: {results}/benchmarks)")
    add_params_arguments(parser)  # its own: it resolves each job's params (plan_of)


def _fail(problems: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more above)" if len(problems) > 1 else ""
        raise UserError(f"plan audit failed: {problems[0]}{more}")


def _benchmarks(args: argparse.Namespace, p: Params) -> list[dict[str, Any]]:
    return gpu_results(args.benchmarks or Path(p.results) / "benchmarks")


def _check(args: argparse.Namespace) -> None:
    if args.gpus is not None and args.gpus < 1:
        raise UserError("--gpus must be at least 1")
    if args.size or args.variant:
        raise UserError("--size and --variant: a plan covers every size and variant of its targets; use --set")


def plan_main(args: argparse.Namespace) -> int:
    _check(args)
    plan = plan_of(Path(args.params), tuple(args.overrides), tuple(args.target or TARGETS))
    p = plan.params
    full = p.scale == "full"
    costs = costs_of(plan, _benchmarks(args, p), args.gpus) if full else []
    print(
        f"nepa plan: {args.params} (scale {p.scale}, recipe {p.recipe}, sizes {', '.join(p.sizes)}); "
        f"targets {', '.join(args.target or TARGETS)}: {len(plan.jobs)} jobs"
    )
    print(plan_table(plan, costs))
    problems = audit(plan) + time_problems(plan, costs)
    for problem in problems:
        print(f"✗ {problem}")
    _fail(problems)
    print("plan audit: consistent" + (" with the paper's tables" if full else ""))
    return 0


def main(args: argparse.Namespace) -> int:
    _check(args)
    with full_scale_params(args) as (path, at_full):
        plan = plan_of(path, tuple(args.overrides), tuple(args.target or TARGETS))
        p = plan.params
        results = _benchmarks(args, p)
        costs = costs_of(plan, results, args.gpus)
        problems = audit(plan) + time_problems(plan, costs)
    assumed = any(not c.speed.measured for c in costs)
    header = [
        f"nepa estimate: a full reproduction, recipe {p.recipe}, sizes {', '.join(p.sizes)}; nothing is run.",
        f"Params: {args.params}"
        + (
            " (scale full)"
            if at_full
            else f" is at scale embedded: this is its full-scale recipe '{p.recipe}' (the presets, "
            "with its model knobs, variants and launcher; not its embedded schedule)"
        ),
        "GPUs: "
        + (
            f"--gpus {args.gpus} for every multi-GPU job"
            if args.gpus
            else "each job's launcher resources (launcher.stages over launcher.slurm)"
        ),
        "Speed: "
        + (
            f"measured on a GPU ({len(results)} result file(s) under the benchmarks folder)"
            if not assumed
            else "NO GPU MEASUREMENT for some or all models: those lines use the ASSUMED speed below; run "
            "benchmarks/step_throughput.py on the target GPU for a measured estimate"
        ),
    ]
    print(render(costs, header))
    for problem in problems:
        print(f"✗ {problem}", file=sys.stderr)
    _fail(problems)
    return 0 if math.isfinite(sum(c.gpu_hours for c in costs)) else 1
