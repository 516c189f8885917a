"""`nepa estimate`: the GPU-hours and wall time of a full reproduction, job by job, before launch.

    nepa estimate [--gpus N] [--benchmarks DIR] [--params params.yaml] [--set k=v ...]

Sums the audited plan of targets `all` and `ablations` (nepa/plan.py), always at full scale: from a full-scale
params.yaml as it is; from an embedded one, its full-scale recipe at sizes base and large. The numbers come from
the cost model (nepa/cost.py: FLOPs, speeds, the exchange between nodes); this module prints them, with each
speed's source once as a footnote and what each kind of speed means. Nothing is launched or timed.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nepa.config import load_params
from nepa.cost import GPU_RATIO, INTER_NODE_BYTES_S, Cost, Speed, duration
from nepa.plan import (
    TARGETS,
    Job,
    add_arguments,
    audit,
    check_arguments,
    costs_of,
    fail_on,
    measurements_of,
    plan_of,
    time_problems,
)

__all__ = ["add_arguments", "main"]

KINDS = {
    "MEASURED": "the NEPA training step timed on a GPU (benchmarks/step_throughput.py)",
    "ASSUMED": "no GPU measurement: the paper's cost statement, everything its runs spent charged to the step",
    "CALIBRATED": f"the FLOP/s a public V100 run of the same work achieved, x {GPU_RATIO.value:g} ({GPU_RATIO.source})",
}
MODEL = (
    "time = FLOPs (analytic: ViT and UperNet matmuls, training = 3x forward) / (speed per GPU x GPUs)",
    "+ between nodes, a ring all-reduce of the fp32 gradients per optimizer step, not overlapped, at "
    f"{INTER_NODE_BYTES_S.value / 1e9:g} GB/s per GPU ({INTER_NODE_BYTES_S.source}); within a node not counted",
    "probe: one forward over train + val (features extracted once); the linear classifier on them is not counted",
    "prepare and export run on CPUs and are not counted; docs/estimate.md has every figure's source",
)

# What an embedded params.yaml keeps in its full-scale estimate: the rest is its embedded schedule, which would win
# over the full-scale presets.
KEPT_FROM_EMBEDDED = ("recipe", "variants", "ablation_variants", "results", "objective", "launcher", "model", "seed")


@contextlib.contextmanager
def full_scale_params(args: argparse.Namespace) -> Iterator[tuple[Path | dict[str, Any], bool]]:
    """Params at scale full: --params itself (True) or, from an embedded one (False), its full-scale recipe
    with what it sets of KEPT_FROM_EMBEDDED, at sizes base and large."""
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


def speed_notes(costs: dict[Job, Cost]) -> dict[Speed, str]:
    """Each speed's footnote label: M1, M2... measured, A1... ASSUMED, C1... calibrated."""
    notes: dict[Speed, str] = {}
    for cost in costs.values():
        if cost.speed not in notes:
            same = sum(1 for s in notes if s.kind == cost.speed.kind)
            notes[cost.speed] = f"{cost.speed.kind[0]}{same + 1}"
    return notes


def render(costs: dict[Job, Cost], header: list[str]) -> str:
    """The cost table with each speed's source once as a footnote, totals per target and overall."""
    notes = speed_notes(costs)
    width = max(len(job.name) for job in costs)
    lines = [
        *header,
        "",
        f"{'job':<{width}}  {'GPU-hours':>9}  {'wall':>7}  {'GPUs':>4}  {'img/s/GPU':>9}  {'speed':<13}  work",
    ]
    for job, c in costs.items():
        label = f"{c.speed.kind.lower() if c.speed.kind != 'ASSUMED' else 'ASSUMED'} {notes[c.speed]}"
        exchange = f"; + {duration(c.exchange_hours)} gradient exchange" if c.exchange_hours else ""
        lines.append(
            f"{job.name:<{width}}  {c.gpu_hours:>9,.1f}  {duration(c.wall_hours):>7}  {c.gpus:>4}  "
            f"{c.images_per_s:>9.1f}  {label:<13}  {c.work}{exchange}"
        )
    for target in TARGETS:
        mine = [c for job, c in costs.items() if target in job.targets]
        if mine:
            lines.append(
                f"{'total, target ' + target:<{width}}  {sum(c.gpu_hours for c in mine):>9,.1f}  "
                f"{duration(sum(c.wall_hours for c in mine)):>7}  one job after another, {len(mine)} jobs"
            )
    total, wall = sum(c.gpu_hours for c in costs.values()), sum(c.wall_hours for c in costs.values())
    lines.append(f"{'total, one job after another':<{width}}  {total:>9,.1f}  {duration(wall):>7}")
    lines += ["", "Speeds (per GPU):"]
    lines += [f"  {note}: {s.flops_per_s / 1e12:.1f} TFLOP/s, {s.kind}: {s.source}" for s, note in notes.items()]
    lines += ["What each kind means:", *(f"  {kind.lower()}: {text}" for kind, text in KINDS.items())]
    lines += ["The model:", *(f"  - {line}" for line in MODEL)]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    check_arguments(args)
    with full_scale_params(args) as (path, at_full):
        plan = plan_of(path, tuple(args.overrides), tuple(args.target or TARGETS))
        p = plan.params
        measurements = measurements_of(args, p)
        costs = costs_of(plan, measurements, args.gpus)
        problems = audit(plan) + time_problems(plan, costs)
    measured = any(c.speed.kind == "MEASURED" for c in costs.values())
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
        "Pretraining speed: "
        + (
            f"measured on a GPU ({len(measurements)} measurement file(s) in the benchmarks folder)"
            if measured
            else "NO GPU MEASUREMENT: the ASSUMED speed below; run benchmarks/step_throughput.py on the target GPU "
            "for a measured estimate"
        )
        + "; downstream stages CALIBRATED on public V100 runs",
    ]
    print(render(costs, header))
    for problem in problems:
        print(f"✗ {problem}", file=sys.stderr)
    fail_on(problems)
    return 0 if math.isfinite(sum(c.gpu_hours for c in costs.values())) else 1
