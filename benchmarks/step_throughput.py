"""Pretraining step throughput and MFU: NEPA ViT vs timm's standard ViT of the same size, eager vs torch.compile.

    python benchmarks/step_throughput.py                       # GPU: B and L (GeLU and SwiGLU), batch 128 256
    python benchmarks/step_throughput.py --models nepa-B timm-B --batch 128 --compile off --steps 30
    python benchmarks/step_throughput.py --device cpu          # CPU: nepa-tiny vs timm-tiny, fp32, batch 32

A step = forward + loss + backward + clip + AdamW on synthetic images already on the device (benchmarks/harness.py
says what each model is). images/s = batch x steps / time, after --warmup steps (compilation happens there), the
device synchronised around the timed steps only. FLOPs are analytic (nepa.estimate.forward_flops: matmuls,
attention included, causal attention at its T(T+1)/2 scores; training = 3x forward); MFU = achieved / the GPU's
dense bf16 peak (benchmarks/harness.py PEAK_BF16_TFLOPS); on CPU, or in fp32, MFU is n/a and GFLOP/s is reported.
Also records which SDPA kernel the attention dispatches to (profiler), and on CUDA the backends' switches and
whether the causal NEPA step runs with only the flash backend allowed.

Writes results/benchmarks/step_throughput_{cuda|cpu}_{stamp}.json and .csv (--out to change); `nepa estimate`
reads the newest GPU one. Targets (benchmarks/README.md): NEPA >= timm at the same settings (at worst -10%),
>= 40% MFU for ViT-B bf16 on H100; they are checked and printed here, never in tests.
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path
from typing import Any

import torch
from harness import (
    RESULTS,
    Subject,
    attention_ops,
    build,
    cuda_sdpa_flags,
    forced_backend,
    fused_attention,
    make_step,
    parse_name,
    record,
    resolve_device,
    synchronize,
    write_result,
)

GPU_MODELS = ["nepa-B", "nepa-B-swiglu", "timm-B", "nepa-L", "nepa-L-swiglu", "timm-L"]
CPU_MODELS = ["nepa-tiny", "timm-tiny"]
MIN_NEPA_VS_TIMM = 0.9  # NEPA's RoPE, QK-Norm and LayerScale may cost at most 10% of the peer's speed
MIN_MFU_B = 0.40


def measure(subject: Subject, device: torch.device, precision: str, batch: int, compile_: bool, warmup: int,
            steps: int, adamw: str) -> dict[str, Any]:  # fmt: skip
    step = make_step(subject, device, precision, compile_, adamw)
    images = torch.randn(batch, 3, subject.img_size, subject.img_size, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    step(images)  # the first step: compilation, allocator and kernel selection warm-up
    synchronize(device)
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        step(images)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = step(images)
    synchronize(device)
    seconds = time.perf_counter() - start
    row: dict[str, Any] = {
        "status": "ok", "first_step_s": round(first, 2), "step_ms": round(1000 * seconds / steps, 2),
        "images_per_s": round(batch * steps / seconds, 2), "loss": round(float(loss), 5),
    }  # fmt: skip
    if device.type == "cuda":
        row["peak_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return row


def sdpa_record(subject: Subject, device: torch.device, precision: str) -> dict[str, Any]:
    """Which attention kernels one small step of `subject` runs (and on CUDA, whether flash alone can run it)."""
    step = make_step(subject, device, precision, compile_=False)
    images = torch.randn(4, 3, subject.img_size, subject.img_size, device=device)
    out: dict[str, Any] = {"causal": getattr(getattr(subject.model, "cfg", None), "causal", False),
                           "fused_attention": fused_attention(subject),
                           "ops": attention_ops(lambda: (step(images), synchronize(device)))}  # fmt: skip
    if device.type == "cuda":
        out["flags"] = cuda_sdpa_flags()
        for backend in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"):
            out[f"only_{backend.lower()}"] = forced_backend(lambda: (step(images), synchronize(device)), backend)
    return out


def free(device: torch.device) -> None:
    gc.collect()
    torch._dynamo.reset()  # each model compiles afresh, without hitting the recompile limit
    if device.type == "cuda":
        torch.cuda.empty_cache()


def verdicts(rows: list[dict[str, Any]], device: dict[str, Any]) -> list[str]:
    """The README's targets, checked on this run's rows."""
    out = []
    ok = {(r["model"], r["batch"], r["compile"]): r for r in rows if r["status"] == "ok"}
    gpu_bf16 = device["type"] == "cuda" and any(r["precision"] == "bf16" for r in rows)
    scope = "" if gpu_bf16 else " (informative only: the targets are for bf16 on a GPU)"
    for (name, batch, compiled), row in sorted(ok.items()):
        family, _, _ = parse_name(name)
        peer = ok.get((name.replace("nepa", "timm").removesuffix("-swiglu"), batch, compiled))
        if family != "nepa" or peer is None:
            continue
        ratio = row["images_per_s"] / peer["images_per_s"]
        verdict = ("meets the target (at least the peer's speed)" if ratio >= 1 else
                   "within the 10% allowance for RoPE and QK-Norm" if ratio >= MIN_NEPA_VS_TIMM else
                   "MISSES the target (more than 10% slower than the peer)")  # fmt: skip
        out.append(f"{name} vs {peer['model']}, batch {batch}, {'compile' if compiled else 'eager'}: "
                   f"{ratio:.3f}x the peer's images/s: {verdict}{scope}")  # fmt: skip
    for (name, batch, compiled), row in sorted(ok.items()):
        if name.startswith("nepa-B") and row.get("mfu") is not None:
            verdict = "meets" if row["mfu"] >= MIN_MFU_B else "MISSES"
            out.append(f"{name}, batch {batch}, {'compile' if compiled else 'eager'}: MFU {100 * row['mfu']:.1f}%: "
                       f"{verdict} the >= {100 * MIN_MFU_B:.0f}% target")  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", help=f"default: GPU {' '.join(GPU_MODELS)}; CPU {' '.join(CPU_MODELS)}")
    parser.add_argument("--batch", type=int, nargs="+", help="per-device batch sizes (default: GPU 128 256, CPU 32)")
    parser.add_argument("--compile", choices=["off", "on", "both"], default="both", help="eager, torch.compile, both")
    parser.add_argument("--steps", type=int, help="timed steps (default: GPU 20, CPU 5)")
    parser.add_argument("--warmup", type=int, help="untimed steps first, compilation included (default: GPU 5, CPU 2)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto", help="auto: bf16 on GPU")
    parser.add_argument(
        "--adamw",
        choices=["auto", "fused", "foreach"],
        default="auto",
        help="AdamW implementation (auto: fused on CUDA, as the engine; foreach: the unfused one)",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--no-sdpa-check", action="store_true", help="skip the attention-kernel record")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    names = args.models or (GPU_MODELS if gpu else CPU_MODELS)
    for name in names:
        parse_name(name)
    batches = args.batch or ([128, 256] if gpu else [32])
    steps, warmup = args.steps or (20 if gpu else 5), max(1, args.warmup or (5 if gpu else 2))
    precision = args.precision if args.precision != "auto" else "bf16" if gpu else "fp32"
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    settings = dict(models=names, batches=batches, compile=args.compile, steps=steps, warmup=warmup,
                    precision=precision, adamw=args.adamw, input="synthetic images on the device")  # fmt: skip
    result = record("step_throughput", device, settings)
    peak = result["device"]["peak_bf16_tflops"] if precision == "bf16" else None
    print(f"step throughput on {result['device']['name']} ({precision}); {result['command']}", flush=True)

    if not args.no_sdpa_check:
        result["sdpa"] = {}
        for name in names:
            subject = build(name)
            result["sdpa"][name] = sdpa_record(subject, device, precision)
            print(f"{name}: attention ops {result['sdpa'][name]}", flush=True)
            del subject
            free(device)

    rows = []
    for name in names:
        for compiled in compiles:
            for batch in batches:
                torch.manual_seed(0)
                subject = build(name)
                flops = subject.train_flops_per_image()
                row: dict[str, Any] = {
                    "model": name, "params_m": round(subject.params_m, 2), "img_size": subject.img_size,
                    "batch": batch, "compile": compiled, "precision": precision,
                    "train_gflop_per_image": round(flops / 1e9, 3), **{f"arch_{k}": v for k, v in subject.arch.items()},
                }  # fmt: skip
                try:
                    row |= measure(subject, device, precision, batch, compiled, warmup, steps, args.adamw)
                except torch.OutOfMemoryError:
                    row |= {"status": "OOM"}
                except Exception as e:  # a compile failure is a result too; the other configurations go on
                    row |= {"status": "error", "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"}
                if row["status"] == "ok":
                    achieved = flops * row["images_per_s"]
                    row["achieved_tflops"] = round(achieved / 1e12, 4)
                    row["mfu"] = round(achieved / (peak * 1e12), 4) if peak else None
                rows.append(row)
                mfu = f"{100 * row['mfu']:.1f}%" if row.get("mfu") is not None else "n/a"
                print(f"{name:14s} batch {batch:4d} {'compile' if compiled else 'eager  '}: " + (
                    f"{row['images_per_s']:9.1f} img/s, {row['step_ms']:8.1f} ms/step, "
                    f"{1000 * row['achieved_tflops']:8.1f} GFLOP/s, MFU {mfu}, first step {row['first_step_s']} s"
                    if row["status"] == "ok" else row["status"] + " " + row.get("error", "")), flush=True)  # fmt: skip
                del subject
                free(device)
    result["targets"] = verdicts(rows, result["device"])
    path = write_result(result, rows, args.out)
    print("\n".join(result["targets"]))
    print(f"wrote {path} and {path.with_suffix('.csv').name}")


if __name__ == "__main__":
    main()
