"""Peak memory per DeepSpeed ZeRO stage of NEPA pretraining on the real engine, and the largest batch that fits.

    python benchmarks/zero_memory.py                          # GPU: nepa-large, ZeRO 0-3, batch 64 + search
    python benchmarks/zero_memory.py --model nepa-base --stages 2 3 --batch 128 --no-search
    python benchmarks/zero_memory.py --device cpu             # CPU: nepa-tiny, peak RSS per stage (harness check)

Each measurement is a fresh process (one rank, world 1) that builds the engine exactly as `nepa pretrain` does
(nepa.engine.trainer.Trainer: DeepSpeed ZeRO at that stage, AdamW, bf16 autocast over fp32 weights on GPU, EMA)
and runs --steps optimizer steps of the engine's own calls (engine forward, backward, step, EMA update) on
synthetic images. Checkpoints and the data loader are left out. GPU: peak allocated and reserved memory
(torch.cuda.max_memory_*), and the model states after DeepSpeed's setup. CPU: the process's peak RSS, which
includes the interpreter, torch and DeepSpeed (the baseline before the model was built is recorded beside it);
it proves the harness, it is not GPU memory. Largest batch: doubling from --batch until a step runs out of
memory, then bisection to --granularity (GPU only; each probe is a fresh process).

On one GPU every stage partitions over a world of 1: the figures show what each stage keeps itself (ZeRO 1-2
hold an fp32 master copy of the weights beside the model's, for example), not the savings that partitioning
brings at 8 GPUs (optimizer states / 8 at stage 1, gradients too at 2, weights too at 3).
Writes results/benchmarks/zero_memory_{cuda|cpu}_{stamp}.json and .csv.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from harness import RESULTS, build, emit, engine_defaults, engine_parts, record, run_trial

from nepa import measurements

SCRIPT = Path(__file__).resolve()


def largest_fitting(fits: Callable[[int], bool], start: int, limit: int, granularity: int = 1) -> int:
    """The largest batch (a multiple of `granularity`, at most `limit`) for which fits() holds, fits() being
    monotone: doubling from `start`, then bisection between the last fit and the first miss; 0 if none fits."""
    unit = max(1, granularity)
    lo, hi = 0, limit // unit + 1  # in units: lo fits (0: nothing known to), hi does not
    b = max(1, min(start, limit) // unit)
    while True:
        if not fits(b * unit):
            hi = b
            break
        lo = b
        if b * unit * 2 > limit:
            break
        b *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid * unit):
            lo = mid
        else:
            hi = mid
    return lo * unit


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def trial(args: argparse.Namespace) -> None:
    """One measurement, in this (fresh) process."""
    if args.threads:
        torch.set_num_threads(args.threads)
    baseline = rss_gb()
    from nepa.engine import distributed
    from nepa.engine.distributed import DistEnv
    from nepa.engine.trainer import Trainer

    env = DistEnv()
    device = distributed.init(env)
    torch.manual_seed(0)
    subject = build(args.model)
    images = torch.randn(args.batch, 3, subject.img_size, subject.img_size, device=device)
    batch = (images, torch.zeros(args.batch, dtype=torch.long, device=device))
    row: dict[str, Any] = {"status": "ok"}
    with tempfile.TemporaryDirectory() as folder:
        task, cfg = engine_parts(
            subject, lambda epoch, start: [batch] * 4, 10**6, folder, args.batch, args.steps, args.stage
        )
        try:
            trainer = Trainer(cfg, task, env, device)
            engine = trainer.engine
            if device.type == "cuda":
                torch.cuda.synchronize()
                row["model_states_gb"] = round(torch.cuda.memory_allocated() / 2**30, 3)
                torch.cuda.reset_peak_memory_stats()
            for _ in range(args.steps):  # the engine's step: Trainer.fit() without data, metrics and checkpoints
                loss = engine(batch)
                engine.backward(loss)
                engine.step()
                trainer.ema.update()
            row["loss"] = round(float(loss.detach()), 5)
            if device.type == "cuda":
                torch.cuda.synchronize()
                row["peak_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
                row["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)
        except torch.OutOfMemoryError:
            row = {"status": "OOM"}
        except RuntimeError as e:  # allocations inside DeepSpeed or NCCL may say it in their own words
            if "out of memory" not in str(e).lower():
                raise
            row = {"status": "OOM"}
    row |= {"cpu_peak_rss_gb": round(rss_gb(), 3), "cpu_rss_before_model_gb": round(baseline, 3)}
    emit(row)
    distributed.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="nepa-SIZE[-swiglu] (default: GPU nepa-large, CPU nepa-tiny)")
    parser.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3], choices=[0, 1, 2, 3])
    parser.add_argument("--batch", type=int, help="micro-batch measured at every stage (default: GPU 64, CPU 32)")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per measurement")
    parser.add_argument(
        "--search",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="search the largest batch per stage (default: on GPU only)",
    )
    parser.add_argument("--max-batch", type=int, default=2048)
    parser.add_argument("--granularity", type=int, default=8, help="search batch sizes in multiples of this")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, help="torch CPU threads in each measurement (default: CPU 1)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--trial", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stage", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device, env = engine_defaults(parser, args, gpu_model="nepa-large", gpu_batch=64)
    gpu = device.type == "cuda"
    if args.trial:
        return trial(args)
    search = gpu if args.search is None else args.search

    def measure(stage: int, batch: int) -> dict[str, Any]:
        flags = ["--model", args.model, "--stage", str(stage), "--batch", str(batch), "--steps", str(args.steps),
                 "--device", str(device), *(["--threads", str(args.threads)] if args.threads else [])]  # fmt: skip
        return run_trial(SCRIPT, flags, env)

    settings = dict(
        model=args.model,
        stages=args.stages,
        batch=args.batch,
        steps=args.steps,
        search=search,
        max_batch=args.max_batch,
        granularity=args.granularity,
        threads=args.threads,
        what="GPU: torch.cuda peak allocated/reserved; CPU: peak RSS of the process, not GPU memory",
    )
    result = record("zero_memory", device, settings)
    print(f"ZeRO memory, {args.model}, on {result['device']['name']}; {result['command']}", flush=True)
    rows = []
    for stage in args.stages:
        row: dict[str, Any] = {
            "model": args.model,
            "zero_stage": stage,
            "batch": args.batch,
            "measure": "cuda_peak" if gpu else "cpu_peak_rss",
        }
        row |= measure(stage, args.batch)
        if search:
            probes: list[dict[str, Any]] = []

            def fits(b: int, stage: int = stage, probes: list = probes) -> bool:
                out = measure(stage, b)
                probes.append({"batch": b, "status": out["status"], "peak_reserved_gb": out.get("peak_reserved_gb")})
                print(f"  ZeRO {stage} batch {b}: {out['status']} {out.get('peak_reserved_gb', '')}", flush=True)
                if out["status"] not in ("ok", "OOM"):
                    raise RuntimeError(f"ZeRO {stage} batch {b}: {out.get('error')}")
                return out["status"] == "ok"

            row["largest_batch"] = largest_fitting(fits, args.batch, args.max_batch, args.granularity)
            row["search_probes"] = probes
        else:
            row["largest_batch"] = None
        rows.append(row)
        shown = {k: v for k, v in row.items() if k != "search_probes"}
        print(", ".join(f"{k} {v}" for k, v in shown.items()), flush=True)
    path = measurements.write(result, rows, args.out)
    print(f"wrote {path} and {path.with_suffix('.csv').name}")


if __name__ == "__main__":
    main()
