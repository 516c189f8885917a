"""Gradient checkpointing (`pretrain.grad_checkpointing`, `finetune.…`, `segment.…`): memory saved, time paid.

    python benchmarks/grad_checkpointing.py                  # nepa-B-swiglu (the paper's ViT-B), batch 16, 3 steps
    python benchmarks/grad_checkpointing.py --model nepa-tiny --batch 4 --steps 2 --out /tmp/gc --report /tmp/gc.md

Each setting, off and on, runs in a fresh process (harness.run_trial): the harness's pretraining step (forward and
the NEPA loss, backward, clip, AdamW; fp32 on CPU, bf16 autocast on GPU) on one synthetic batch, --steps times.
CPU: the process's peak RSS (the high-water mark: weights, gradients, AdamW moments and the activations the
backward keeps) and its RSS once model and batch exist, before the first step; GPU: peak allocated memory. Step
time: the median of the steps after the first. The losses of both settings must be equal: checkpointing
recomputes, it changes no number. Writes results/benchmarks/grad_checkpointing_{cpu|cuda}_{stamp}.{json,csv}
and the table of --report (default results/grad_checkpointing.md).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from harness import RESULTS, ROOT, build, emit, make_step, record, resolve_device, run_trial, synchronize, write_result

SCRIPT = Path(__file__).resolve()


def rss_gb() -> float:
    """This process's resident memory now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def trial(args: argparse.Namespace) -> None:
    """One setting, in this (fresh) process."""
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    subject = build(args.model)
    subject.model.set_grad_checkpointing(args.checkpointing)
    step = make_step(subject, device, "bf16" if device.type == "cuda" else "fp32", compile_scope=None)
    images = torch.randn(args.batch, 3, subject.img_size, subject.img_size, generator=torch.Generator().manual_seed(1))
    images = images.to(device)
    before = rss_gb()
    seconds, losses = [], []
    for _ in range(args.steps):
        start = time.perf_counter()
        losses.append(float(step(images)))  # a host sync per step: the time is the step's
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    row: dict[str, Any] = {
        "grad_checkpointing": args.checkpointing,
        "img_size": subject.img_size,
        "losses": losses,
        "step_s": statistics.median(seconds[1:] or seconds),
        "first_step_s": seconds[0],
    }
    if device.type == "cuda":
        row["peak_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        row |= {
            "rss_before_first_step_gb": before,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        }
    emit(row)


def report(result: dict[str, Any], rows: list[dict[str, Any]], path: Path) -> None:
    """The result as a short markdown page: setting, memory, time, and the machine it ran on."""
    s, dev = result["settings"], result["device"]
    gpu = dev["type"] == "cuda"
    memory = "peak allocated (GB)" if gpu else "peak RSS (GB)"
    lines = [
        "# Gradient checkpointing: memory and time",
        "",
        f"{s['model']} pretraining step (forward + NEPA loss + backward + clip + AdamW, "
        f"{'bf16 autocast' if gpu else 'fp32'}), batch {s['batch']} at {s['img_size']} px, {s['steps']} steps on one "
        f"synthetic batch; {dev['name']}, {s['threads']} threads ({dev['host']['cores']} cores), torch "
        f"{result['versions']['torch']}, {result['date']}.",
        "",
        f"| grad_checkpointing | {memory} | {'' if gpu else 'RSS before the first step (GB) | '}step (s) |",
        f"|---|---|{'' if gpu else '---|'}---|",
    ]
    for row in rows:
        peak = row["peak_allocated_gb"] if gpu else row["peak_rss_gb"]
        before = "" if gpu else f"{row['rss_before_first_step_gb']:.2f} | "
        lines.append(f"| {'on' if row['grad_checkpointing'] else 'off'} | {peak:.2f} | {before}{row['step_s']:.2f} |")
    off, on = rows
    key = "peak_allocated_gb" if gpu else "peak_rss_gb"
    saved = off[key] - on[key]
    added = "" if gpu else f"; {saved / (off[key] - off['rss_before_first_step_gb']):.0%} of what the steps added"
    lines += [
        "",
        f"Checkpointing saves {saved:.2f} GB of {off[key]:.2f} GB ({saved / off[key]:.0%}{added}) for "
        f"{on['step_s'] / off['step_s'] - 1:.0%} more time per step. The losses of both settings are equal "
        f"({off['losses'][-1]:.6f} at the last step): the blocks recompute, no number changes.",
        "",
        f"Command: `{result['command']}`",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nepa-B-swiglu", help="harness name (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="default: every core")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--report", type=Path, default=ROOT / "results" / "grad_checkpointing.md")
    parser.add_argument("--trial", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trial:
        return trial(args)
    common = ["--model", args.model, "--batch", str(args.batch), "--steps", str(args.steps), "--threads",
              str(args.threads), "--device", args.device]  # fmt: skip
    rows = [run_trial(SCRIPT, common + (["--checkpointing"] if on else [])) for on in (False, True)]
    for row in rows:
        print(row)
        if row.get("status") == "error":
            raise SystemExit(f"a trial failed: {row['error']}")
    if rows[0]["losses"] != rows[1]["losses"]:
        raise SystemExit(f"the losses differ: {rows[0]['losses']} vs {rows[1]['losses']}")
    device = resolve_device(args.device)
    settings = dict(model=args.model, batch=args.batch, steps=args.steps, threads=args.threads,
                    img_size=rows[0]["img_size"])  # fmt: skip
    result = record("grad_checkpointing", device, settings)
    print(write_result(result, rows, args.out))
    report(result, rows, args.report)
    print(args.report.read_text())


if __name__ == "__main__":
    main()
