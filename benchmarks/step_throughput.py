"""Pretraining step throughput and MFU: NEPA ViT vs timm's standard ViT of the same size, eager vs torch.compile.

    python benchmarks/step_throughput.py                       # GPU: base and large (GeLU, SwiGLU), batch 128 256
    python benchmarks/step_throughput.py --models nepa-base timm-base --batch 128 --compile off --steps 30
    python benchmarks/step_throughput.py --device cpu          # CPU: nepa-small vs timm-small, fp32, batch 8, eager
    python benchmarks/step_throughput.py --device cpu --starts nepa-tiny    # + compile time, cold and warm cache

A step is the engine's own (benchmarks/harness.py engine_step: forward + loss + backward + clipping + AdamW under
DeepSpeed ZeRO-2, then the EMA update) on synthetic images already on the device (harness.py says what each model
is). Side by side: for each batch size and compile mode every model is built and warmed up
(--warmup steps; compilation happens in the first, its time is `first_step_s`), then --rounds rounds run
--steps steps of each model in turn (the order rotating per round), the device synchronised around each model's
steps only. images/s = batch x steps / the median round time; a NEPA model's ratio to its timm peer is the median
of the per-round ratios (each from the same round, so under the same machine load), with their range; on CPU the
rounds are also timed in process CPU time (images_per_cpu_s), which other jobs on a shared machine do not inflate,
and the ratios use it. FLOPs are
analytic (nepa.cost.forward_flops: matmuls, attention included, causal attention at its T(T+1)/2 scores;
training = 3x forward); MFU = achieved / the GPU's dense bf16 peak (harness.PEAK_BF16_TFLOPS); on CPU, or in fp32,
MFU is n/a and GFLOP/s is reported. Also records which SDPA kernel the attention dispatches to (profiler), and on
CUDA the backends' switches and whether the causal NEPA step runs with only the flash backend allowed.

--compile-scope: `blocks` compiles each transformer block (regional compilation: one graph, reused by every block,
so compiling costs about one block's time), `model` the whole forward and loss. --starts MODEL: MODEL's first
compiled step (per --start-scopes) in two fresh processes sharing a new inductor cache folder: the cold start,
then the warm one (torch's on-disk FX graph and AOTAutograd caches; TORCHINDUCTOR_CACHE_DIR keeps them).

Writes results/benchmarks/step_throughput_{cuda|cpu}_{stamp}.json and .csv (--out to change; the layout of
nepa/measurements.py); `nepa estimate` reads the newest GPU one, by its content. Targets (benchmarks/README.md)
are checked and printed here, never in tests.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
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
    emit,
    engine_step,
    forced_backend,
    fused_attention,
    identity,
    parse_name,
    record,
    resolve_device,
    run_trial,
    synchronize,
)

from nepa import measurements

SCRIPT = Path(__file__).resolve()
GPU_MODELS = ["nepa-base", "nepa-base-swiglu", "timm-base", "nepa-large", "nepa-large-swiglu", "timm-large"]
CPU_MODELS = ["nepa-small", "timm-small"]
MIN_NEPA_VS_TIMM_GPU = 0.9  # bf16 on a GPU: NEPA's RoPE, QK-Norm and LayerScale may cost at most 10%
MIN_NEPA_VS_TIMM_CPU = 0.95  # fp32 eager on CPU: at most 5%
MIN_MFU_B = 0.40


def peer_of(name: str) -> str:
    return name.replace("nepa", "timm", 1).removesuffix("-swiglu")


def measure_side_by_side(
    subjects: list[Subject],
    device: torch.device,
    precision: str,
    batch: int,
    compile_scope: str | None,
    warmup: int,
    steps: int,
    rounds: int,
    folder: str,
) -> dict[str, dict[str, Any]]:
    """Each subject's row: warm-up (first step timed), then `rounds` interleaved rounds of `steps` steps.

    Rounds are timed by the wall clock and, on CPU, by the process's CPU time too, which other jobs on a shared
    machine do not inflate: the CPU ratios to the peer are taken on it (`vs_peer.clock`)."""
    stepping, rows = {}, {}
    for subject in subjects:
        engine_folder = tempfile.mkdtemp(dir=folder)
        stepping[subject.name] = step = engine_step(subject, device, precision, compile_scope, batch, engine_folder)
        images = torch.randn(batch, 3, subject.img_size, subject.img_size, device=device)
        start = time.perf_counter()
        step(images)  # compilation, allocator and kernel selection warm-up
        synchronize(device)
        rows[subject.name] = {"first_step_s": round(time.perf_counter() - start, 2), "round_s": [], "round_cpu_s": []}
        rows[subject.name]["images"] = images
        for _ in range(warmup - 1):
            step(images)
        synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    names = list(stepping)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            row, step = rows[name], stepping[name]
            synchronize(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(steps):
                loss = step(row["images"])
            synchronize(device)
            row["round_s"].append(time.perf_counter() - start)
            row["round_cpu_s"].append(time.process_time() - cpu_start)
            row["loss"] = round(float(loss), 5)
    clock = "round_cpu_s" if device.type == "cpu" else "round_s"
    for row in rows.values():
        del row["images"]
        median = statistics.median(row["round_s"])
        row |= {
            "status": "ok",
            "step_ms": round(1000 * median / steps, 2),
            "images_per_s": round(batch * steps / median, 2),
        }
        if device.type == "cpu":
            row["images_per_cpu_s"] = round(batch * steps / statistics.median(row["round_cpu_s"]), 2)
        else:
            del row["round_cpu_s"]
    if device.type == "cuda":  # the largest of the models measured together
        for row in rows.values():
            row["peak_mem_gb_of_group"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    for name, row in rows.items():
        if (peer := rows.get(peer_of(name))) is not None and name != peer_of(name):
            ratios = sorted(p / n for n, p in zip(row[clock], peer[clock], strict=True))
            row["vs_peer"] = {
                "peer": peer_of(name),
                "clock": {"round_cpu_s": "process CPU time", "round_s": "wall"}[clock],
                "median": round(statistics.median(ratios), 4),
                "min": round(ratios[0], 4),
                "max": round(ratios[-1], 4),
            }
    for row in rows.values():
        for key in ("round_s", "round_cpu_s"):
            if key in row:
                row[key] = [round(x, 4) for x in row[key]]
    return rows


def sdpa_record(subject: Subject, device: torch.device, precision: str, folder: str) -> dict[str, Any]:
    """Which attention kernels one small step of `subject` runs (and on CUDA, whether flash alone can run it)."""
    step = engine_step(subject, device, precision, None, 4, folder)
    images = torch.randn(4, 3, subject.img_size, subject.img_size, device=device)
    out: dict[str, Any] = {
        "causal": getattr(getattr(subject.model, "cfg", None), "causal", False),
        "fused_attention": fused_attention(subject),
        "ops": attention_ops(lambda: (step(images), synchronize(device))),
    }
    if device.type == "cuda":
        out["flags"] = cuda_sdpa_flags()
        for backend in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"):
            out[f"only_{backend.lower()}"] = forced_backend(lambda: (step(images), synchronize(device)), backend)
    return out


def free(device: torch.device) -> None:
    gc.collect()
    torch._dynamo.reset()  # each group compiles afresh, without hitting the recompile limit
    if device.type == "cuda":
        torch.cuda.empty_cache()


def compile_starts(args: argparse.Namespace, device: torch.device, precision: str) -> list[dict[str, Any]]:
    """The first compiled step of --starts in fresh processes: per scope, a cold cache, then the same cache warm."""
    rows = []
    for scope in args.start_scopes:
        with tempfile.TemporaryDirectory() as cache:
            for cache_state in ("cold", "warm"):
                flags = [
                    "--models",
                    args.starts,
                    "--batch",
                    str(args.batch[0] if args.batch else 4),
                    "--device",
                    str(device),
                    "--precision",
                    precision,
                    "--compile-scope",
                    scope,
                    *(["--threads", str(args.threads)] if args.threads else []),
                ]
                start = time.perf_counter()
                row = run_trial(SCRIPT, flags, {"TORCHINDUCTOR_CACHE_DIR": cache}, timeout=args.start_timeout)
                rows.append(
                    {
                        "model": args.starts,
                        "compile_scope": scope,
                        "cache": cache_state,
                        "process_s": round(time.perf_counter() - start, 1),
                        **row,
                    }
                )
                print(f"compile start {args.starts} {scope} {cache_state}: {rows[-1]}", flush=True)
    return rows


def start_trial(args: argparse.Namespace, device: torch.device, precision: str) -> None:
    """In a fresh process: build the model, time its first compiled step (compilation included)."""
    subject = build(args.models[0])
    batch = args.batch[0] if args.batch else 4
    images = torch.randn(batch, 3, subject.img_size, subject.img_size, device=device)
    with tempfile.TemporaryDirectory() as folder:
        step = engine_step(subject, device, precision, args.compile_scope, batch, folder)
        start = time.perf_counter()
        step(images)
        synchronize(device)
    emit({"status": "ok", "first_step_s": round(time.perf_counter() - start, 2)})


def verdicts(rows: list[dict[str, Any]], device: dict[str, Any]) -> list[str]:
    """The README's targets, checked on this run's rows."""
    out = []
    gpu_bf16 = device["type"] == "cuda" and any(r["precision"] == "bf16" for r in rows)
    for row in rows:
        if row["status"] != "ok" or "vs_peer" not in row:
            continue
        mode = f"compiled ({row['compile_scope']})" if row["compile"] else "eager"
        ratio, spread = row["vs_peer"]["median"], f"rounds {row['vs_peer']['min']:.3f}-{row['vs_peer']['max']:.3f}"
        if gpu_bf16:
            target, scope = MIN_NEPA_VS_TIMM_GPU, ""
        elif row["precision"] == "fp32" and not row["compile"] and device["type"] == "cpu":
            target, scope = MIN_NEPA_VS_TIMM_CPU, " (the CPU target: eager fp32)"
        else:
            target, scope = MIN_NEPA_VS_TIMM_GPU, " (informative only: the targets are bf16 on GPU, eager fp32 on CPU)"
        verdict = "meets" if ratio >= target else "MISSES"
        out.append(
            f"{row['model']} vs {row['vs_peer']['peer']}, batch {row['batch']}, {mode}: {ratio:.3f}x the "
            f"peer's images/s ({spread}): {verdict} the >= {target} target{scope}"
        )
    for row in rows:
        if row["status"] == "ok" and (row["family"], row["size"]) == ("nepa", "base") and row.get("mfu") is not None:
            verdict = "meets" if row["mfu"] >= MIN_MFU_B else "MISSES"
            mode = "compiled" if row["compile"] else "eager"
            out.append(
                f"{row['model']}, batch {row['batch']}, {mode}: MFU {100 * row['mfu']:.1f}%: {verdict} the "
                f">= {100 * MIN_MFU_B:.0f}% target"
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", help=f"default: GPU {' '.join(GPU_MODELS)}; CPU {' '.join(CPU_MODELS)}")
    parser.add_argument("--batch", type=int, nargs="+", help="per-device batch sizes (default: GPU 128 256, CPU 8)")
    parser.add_argument("--compile", choices=["off", "on", "both"], help="default: GPU both, CPU off")
    parser.add_argument("--compile-scope", choices=["blocks", "model"], default="blocks", help="what compiles")
    parser.add_argument("--steps", type=int, help="steps per model per round (default: GPU 10, CPU 1)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds, median taken (default: GPU 3, CPU 7)")
    parser.add_argument("--warmup", type=int, help="untimed steps first, compilation included (default: GPU 3, CPU 2)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto", help="auto: bf16 on GPU")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--no-sdpa-check", action="store_true", help="skip the attention-kernel record")
    parser.add_argument("--starts", metavar="MODEL", help="also time MODEL's first compiled step, cold and warm cache")
    parser.add_argument("--start-scopes", nargs="+", choices=["blocks", "model"], default=["blocks", "model"])
    parser.add_argument("--start-timeout", type=float, default=1800, help="seconds allowed per compile start")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--trial", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    precision = args.precision if args.precision != "auto" else "bf16" if gpu else "fp32"
    if args.trial:
        return start_trial(args, device, precision)
    names = args.models or (GPU_MODELS if gpu else CPU_MODELS)
    for name in names:
        parse_name(name)
    batches = args.batch or ([128, 256] if gpu else [8])
    steps, rounds = args.steps or (10 if gpu else 1), args.rounds or (3 if gpu else 7)
    warmup = max(1, args.warmup or (3 if gpu else 2))
    compile_arg = args.compile or ("both" if gpu else "off")
    scopes = {"off": [None], "on": [args.compile_scope], "both": [None, args.compile_scope]}[compile_arg]
    settings = dict(
        models=names,
        batches=batches,
        compile=compile_arg,
        compile_scope=args.compile_scope,
        steps=steps,
        rounds=rounds,
        warmup=warmup,
        precision=precision,
        input="synthetic images on the device",
        starts=args.starts,
    )
    result = record("step_throughput", device, settings)
    peak = result["device"]["peak_bf16_tflops"] if precision == "bf16" else None
    print(f"step throughput on {result['device']['name']} ({precision}); {result['command']}", flush=True)

    engines = tempfile.TemporaryDirectory()  # each measured engine's (empty) checkpoint folder
    if not args.no_sdpa_check:
        result["sdpa"] = {}
        for name in names:
            result["sdpa"][name] = sdpa_record(build(name), device, precision, tempfile.mkdtemp(dir=engines.name))
            print(f"{name}: attention ops {result['sdpa'][name]}", flush=True)
            free(device)

    rows = []
    sizes = list(dict.fromkeys(parse_name(n)[1] for n in names))  # models of one size are measured side by side
    for size in sizes:
        group = [n for n in names if parse_name(n)[1] == size]
        for scope in scopes:
            for batch in batches:
                torch.manual_seed(0)
                subjects = [build(name) for name in group]
                base = [
                    {
                        **identity(s.name),
                        "params_m": round(s.params_m, 2),
                        "img_size": s.img_size,
                        "batch": batch,
                        "compile": scope is not None,
                        "compile_scope": scope,
                        "precision": precision,
                        "train_gflop_per_image": round(s.train_flops_per_image() / 1e9, 3),
                        **{f"arch_{k}": v for k, v in s.arch.items()},
                    }
                    for s in subjects
                ]
                try:
                    measured = measure_side_by_side(
                        subjects, device, precision, batch, scope, warmup, steps, rounds, engines.name
                    )
                except torch.OutOfMemoryError:
                    measured = {s.name: {"status": "OOM"} for s in subjects}
                except Exception as e:  # a compile failure is a result too; the other configurations go on
                    error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
                    measured = {s.name: {"status": "error", "error": error} for s in subjects}
                for row, subject in zip(base, subjects, strict=True):
                    row |= measured[subject.name]
                    if row["status"] == "ok":
                        achieved = subject.train_flops_per_image() * row["images_per_s"]
                        row["achieved_tflops"] = round(achieved / 1e12, 4)
                        row["mfu"] = round(achieved / (peak * 1e12), 4) if peak else None
                    rows.append(row)
                    print_row(row)
                del subjects
                free(device)
    engines.cleanup()
    if args.starts:
        result["compile_starts"] = compile_starts(args, device, precision)
    result["targets"] = verdicts(rows, result["device"])
    path = measurements.write(result, rows, args.out)
    print("\n".join(result["targets"]))
    print(f"wrote {path} and {path.with_suffix('.csv').name}")


def print_row(row: dict[str, Any]) -> None:
    mode = "compile" if row["compile"] else "eager  "
    head = f"{row['model']:14s} batch {row['batch']:4d} {mode}: "
    if row["status"] != "ok":
        print(head + row["status"] + " " + row.get("error", ""), flush=True)
        return
    mfu = f"{100 * row['mfu']:.1f}%" if row.get("mfu") is not None else "n/a"
    peer = f", {row['vs_peer']['median']:.3f}x {row['vs_peer']['peer']}" if "vs_peer" in row else ""
    cpu = f" ({row['images_per_cpu_s']:.1f} per CPU-s)" if "images_per_cpu_s" in row else ""
    print(
        head + f"{row['images_per_s']:9.1f} img/s{cpu}, {row['step_ms']:8.1f} ms/step, "
        f"{1000 * row['achieved_tflops']:8.1f} GFLOP/s, MFU {mfu}, first step {row['first_step_s']} s{peer}",
        flush=True,
    )


if __name__ == "__main__":
    main()
