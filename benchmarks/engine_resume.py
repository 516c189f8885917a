"""The real engine, preempted and resumed: `nepa pretrain` uninterrupted vs signalled at a step and run again.

    python benchmarks/engine_resume.py --data ROOT                      # GPU: ViT-B, 50 steps, ZeRO 2, bf16, EMA
    python benchmarks/engine_resume.py --data ROOT --device cpu --size tiny --steps 6 --checkpoint-every 3 \
        --signal-at 4 --micro-batch 8                                   # CPU: the harness check

ROOT holds shards prepared by benchmarks/gpu_data.py (ROOT/shards/imagenet). Three runs of the verb, each a fresh
`python -m nepa.cli pretrain` as a launcher starts it, with the full-scale engine settings (ZeRO --zero-stage,
precision auto = bf16 on a GPU, EMA 0.9999, AdamW, cosine schedule) and --size, for --steps optimizer steps:
    reference  uninterrupted
    stopped    the same, with checkpoints every --checkpoint-every steps; once its metrics reach --signal-at steps,
               SIGTERM to its process group (as SLURM preempts): it checkpoints the step in flight and exits 75
    resumed    the same command again: it resumes from that checkpoint and finishes
Reports each run's images/s (its metrics rows, the first dropped as warm-up), the step the signal stopped at, and
max |resumed - reference| over the final online and EMA weights and over the per-step losses. On CPU in fp32 the
engine is bit-exact (tests/test_engine_runs.py); on a GPU in bf16, kernels may reduce in a different order, so the
differences are measured, not assumed. Writes results/benchmarks/engine_resume_{cuda|cpu}_{stamp}.json and .csv.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from harness import RESULTS, record, resolve_device
from safetensors.torch import load_file

from nepa import measurements
from nepa.engine.signals import EXIT_REQUEUE


def pretrain(args: argparse.Namespace, runs: Path, log: Path, checkpoint_every: int) -> subprocess.Popen:
    sets = [
        f"data.root={args.data}",
        f"runs={runs}",
        f"model.size={args.size}",
        f"model.mlp={args.mlp}",
        f"pretrain.zero_stage={args.zero_stage}",
        "pretrain.ema_decay=0.9999",
        f"pretrain.max_steps={args.steps}",
        f"pretrain.micro_batch={args.micro_batch}",
        f"pretrain.global_batch={args.micro_batch}",
        "pretrain.epochs=100",
        "pretrain.warmup_epochs=1",
        f"pretrain.checkpoint_every={checkpoint_every}",
        "pretrain.log_every=1",
        f"pretrain.num_workers={args.workers}",
        "data.verify_shards=false",
    ]
    command = [sys.executable, "-m", "nepa.cli", "pretrain", "--params", str(args.data / "params.yaml")]
    command += [x for s in sets for x in ("--set", s)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    if args.device == "cpu":
        env |= {"DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    runs.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def folder(runs: Path, size: str) -> Path:
    return runs / f"{size}-nepa" / "pretrain"


def metrics(runs: Path, size: str) -> pd.DataFrame:
    path = folder(runs, size) / "metrics.csv"
    return pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["step"])


def final_weights(runs: Path, size: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    from nepa.engine.checkpoint import EMA_FILE, latest_checkpoint, online_weights

    latest = latest_checkpoint(folder(runs, size) / "checkpoints")
    return online_weights(latest), load_file(latest / EMA_FILE)


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def speed(rows: pd.DataFrame) -> float | None:
    timed = rows.iloc[1:]
    return round(float(timed["images_per_s"].median()), 1) if len(timed) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a folder prepared by benchmarks/gpu_data.py")
    parser.add_argument("--size", default="base", choices=["tiny", "small", "base", "large"])
    parser.add_argument("--mlp", default="swiglu", choices=["swiglu", "gelu"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--checkpoint-every", type=int, default=25)
    parser.add_argument("--signal-at", type=int, default=35, help="SIGTERM once the metrics reach this step")
    parser.add_argument("--micro-batch", type=int, default=128)
    parser.add_argument("--zero-stage", type=int, default=2, choices=[0, 1, 2, 3])
    parser.add_argument("--workers", type=int, default=max(1, min(15, len(os.sched_getaffinity(0)) - 1)))
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed per run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    device = resolve_device(args.device)
    args.device = device.type
    settings = {k: v if isinstance(v, int | float | str) else str(v) for k, v in vars(args).items() if k != "out"}
    result = record("engine_resume", device, settings)
    print(f"engine resume on {result['device']['name']}; {result['command']}", flush=True)
    work = args.data / "engine_runs"
    rows: list[dict[str, Any]] = []

    def run(name: str, checkpoint_every: int, stop_at: int | None = None) -> dict[str, Any]:
        runs, log = work / ("reference" if name == "reference" else "stopped"), work / f"{name}.log"
        start = time.perf_counter()
        proc = pretrain(args, runs, log, checkpoint_every)
        signalled = None
        while proc.poll() is None:
            if stop_at is not None and signalled is None and metrics(runs, args.size)["step"].max() >= stop_at:
                os.killpg(proc.pid, signal.SIGTERM)
                signalled = int(metrics(runs, args.size)["step"].max())
            if time.perf_counter() - start > args.timeout:
                os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.2)
        table = metrics(runs, args.size)
        row = {
            "run": name,
            "exit": proc.returncode,
            "wall_s": round(time.perf_counter() - start, 1),
            "last_step": int(table["step"].max()) if len(table) else 0,
            "images_per_s": speed(table),
            "signal_seen_at_step": signalled,
        }
        if proc.returncode not in (0, EXIT_REQUEUE):
            row["log_tail"] = log.read_text()[-1500:]
        rows.append(row)
        print(", ".join(f"{k} {v}" for k, v in row.items() if k != "log_tail"), flush=True)
        return row

    reference = run("reference", args.checkpoint_every)
    stopped = run("stopped", args.checkpoint_every, stop_at=args.signal_at)
    resumed = run("resumed", args.checkpoint_every) if stopped["exit"] == EXIT_REQUEUE else None
    if reference["exit"] == 0 and resumed is not None and resumed["exit"] == 0:
        online, ema = final_weights(work / "stopped", args.size)
        online_ref, ema_ref = final_weights(work / "reference", args.size)
        losses, losses_ref = (metrics(work / r, args.size).set_index("step")["loss"] for r in ("stopped", "reference"))
        from nepa.engine.checkpoint import latest_checkpoint, read_state

        stopped_step = read_state(latest_checkpoint(folder(work / "stopped", args.size) / "checkpoints")).step
        result["comparison"] = {
            "resumed_from_step": stopped["last_step"],
            "final_step": stopped_step,
            "max_abs_diff_online": max_diff(online, online_ref),
            "max_abs_diff_ema": max_diff(ema, ema_ref),
            "max_abs_diff_loss": float((losses - losses_ref).abs().max()),
            "bit_identical": max_diff(online, online_ref) == 0 and max_diff(ema, ema_ref) == 0,
            "steps_logged_once": bool(losses.index.is_unique and len(losses) == len(losses_ref)),
        }
        print(f"resumed vs reference: {result['comparison']}", flush=True)
    path = measurements.write(result, rows, args.out)
    print(f"wrote {path} and {path.with_suffix('.csv').name}")


if __name__ == "__main__":
    main()
