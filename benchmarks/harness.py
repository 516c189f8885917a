"""What the benchmarks share: the models under test (NEPA and timm's standard ViT peer), the training step, the
device and version record, analytic FLOPs and peak tables, and the result files.

Model names: `{nepa,timm}-{tiny,B,L}`, NEPA optionally `-swiglu`.
    nepa-B         NEPA ViT-B/14 at 224 as pretrained: causal, 2D RoPE (+ its training-time coordinate rescale),
                   QK-Norm, LayerScale; GeLU 4x MLP (the official code's, and the peer's: the two then differ
                   only in what NEPA adds); the real loss (nepa.objectives.pretrain_loss)
    nepa-B-swiglu  the same with the paper's SwiGLU MLP (hidden 2048: the GeLU MLP's parameter count)
    timm-B         timm's VisionTransformer of the same size: patch 14, 224 px, class token, learned position
                   embedding, fused attention, bidirectional, no RoPE, no QK-Norm, no LayerScale; trained with the
                   same cosine loss on its own output tokens (the loss is a negligible part of the step)
    L: ViT-L/14 (1024 wide, 24 deep, 16 heads); tiny: nepa_tiny_patch4_32 (32 px, patch 4, 192 wide, 6 deep).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import deepspeed
import numpy as np
import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from nepa import models
from nepa.config import ModelParams, linear_scaled_lr
from nepa.engine.host_memory import keep_freed_memory
from nepa.engine.optim import param_groups
from nepa.estimate import training_flops
from nepa.objectives import Objective, next_embedding_loss, pretrain_loss
from nepa.provenance import git_commit

if TYPE_CHECKING:
    from nepa.engine.trainer import Task, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "benchmarks"
SIZES = {"tiny": "tiny", "S": "small", "B": "base", "L": "large"}

# Dense bf16 tensor-core peaks in TFLOP/s (vendor datasheets, no sparsity), by device-name fragment, most
# specific first. A GPU not listed gets no MFU (achieved TFLOP/s is still reported).
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.4),
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("H800", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
)


def peak_bf16_tflops(device_name: str) -> float | None:
    return next((peak for fragment, peak in PEAK_BF16_TFLOPS if fragment in device_name), None)


# ---- the record every result carries ---------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"--device {name}: no CUDA device here (torch {torch.__version__})")
    return torch.device(name)


def engine_defaults(
    parser: argparse.ArgumentParser, args: argparse.Namespace, gpu_model: str, gpu_batch: int
) -> tuple[torch.device, dict[str, str]]:
    """The engine benchmarks' shared defaults, filled into `args` (model, batch, threads; CPU: nepa-tiny at 32 on
    one torch thread), and the device with the environment of its trial processes (CPU: DeepSpeed's CPU
    accelerator, no GPU, one OpenMP thread)."""
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    args.model = args.model or (gpu_model if gpu else "nepa-tiny")
    if parse_name(args.model)[0] != "nepa":
        parser.error("--model: the engine trains NEPA models (nepa-...)")
    args.batch = args.batch or (gpu_batch if gpu else 32)
    args.threads = args.threads or (None if gpu else 1)
    return device, ({} if gpu else {"DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_record(device: torch.device) -> dict[str, Any]:
    """The device a result was measured on; `type` cuda or cpu is what `nepa estimate` selects by."""
    host = {
        "cpu": cpu_name(),
        "cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        props = torch.cuda.get_device_properties(device)
        return {
            "type": "cuda",
            "name": name,
            "count": torch.cuda.device_count(),
            "used": 1,
            "memory_gb": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
            "peak_bf16_tflops": peak_bf16_tflops(name),
            "host": host,
        }
    return {"type": "cpu", "name": host["cpu"], "count": 1, "used": 1, "peak_bf16_tflops": None, "host": host}


def versions() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "deepspeed": deepspeed.__version__,
        "numpy": np.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "nepa_git": git_commit(),
        "os": platform.platform(),
    }


def record(benchmark: str, device: torch.device, settings: dict[str, Any]) -> dict[str, Any]:
    """The head of a result: what ran, where, with what, when, and the exact command."""
    return {
        "benchmark": benchmark,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["python", *sys.argv]),
        "device": device_record(device),
        "versions": versions(),
        "settings": settings,
    }


def write_result(result: dict[str, Any], rows: list[dict[str, Any]], out: Path) -> Path:
    """{out}/{benchmark}_{device type}_{UTC stamp}.json (everything) and .csv (the rows); returns the JSON path."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = result["date"].replace(":", "").replace("-", "").replace("+0000", "Z")
    path = out / f"{result['benchmark']}_{result['device']['type']}_{stamp}.json"
    path.write_text(json.dumps({**result, "results": rows}, indent=1) + "\n")
    fields = list(dict.fromkeys(k for row in rows for k in row if not isinstance(row[k], dict | list)))
    with path.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


# ---- the models under test -------------------------------------------------------------------------------


@dataclass
class Subject:
    name: str
    model: nn.Module
    loss: Callable[[nn.Module, Tensor], Tensor]  # (model, images) -> scalar loss
    img_size: int
    arch: dict[str, Any]  # forward_flops() arguments

    @property
    def params_m(self) -> float:
        return sum(p.numel() for p in self.model.parameters()) / 1e6

    def train_flops_per_image(self) -> float:
        return training_flops(**self.arch)


def nepa_images_loss(model: nn.Module, images: Tensor) -> Tensor:
    return pretrain_loss(model, images, Objective())


def timm_images_loss(model: nn.Module, images: Tensor) -> Tensor:
    h = model.forward_features(images)
    return next_embedding_loss(h, h.detach())


def engine_parts(
    subject: Subject,
    batches: Callable[[int, int], Any],
    batches_per_epoch: int,
    folder: str,
    batch: int,
    steps: int,
    zero_stage: int,
    **config: Any,
) -> tuple[Task, TrainConfig]:
    """What `Trainer` takes to train `subject` on `batches` (images, labels) for `steps` steps of `batch` images, as
    pretraining does (its loss, AdamW betas (0.9, 0.95), weight decay 0.05, clip 1.0, EMA 0.9999), writing no
    checkpoint; `config` overrides TrainConfig's fields."""
    from nepa.engine.trainer import Task, TrainConfig  # only the engine benchmarks import the engine

    task = Task(
        model=subject.model,
        loss=lambda model, b: subject.loss(model, b[0]),
        batches=batches,
        batches_per_epoch=batches_per_epoch,
    )
    settings: dict[str, Any] = dict(
        folder=Path(folder),
        epochs=1,
        warmup_epochs=0,
        global_batch=batch,
        micro_batch=batch,
        lr=linear_scaled_lr(3e-4, batch),  # pretraining's base lr
        betas=(0.9, 0.95),
        weight_decay=0.05,
        grad_clip=1.0,
        ema_decay=0.9999,
        checkpoint_every=10**9,
        keep_last=1,
        log_every=10**9,
        seed=0,
        max_steps=steps,
        zero_stage=zero_stage,
    )
    return task, TrainConfig(**(settings | config))


def parse_name(name: str) -> tuple[str, str, str]:
    """'nepa-B-swiglu' -> ('nepa', 'base', 'swiglu')."""
    family, _, rest = name.partition("-")
    size, _, mlp = rest.partition("-")
    if (
        family not in ("nepa", "timm")
        or size not in SIZES
        or mlp not in ("", "swiglu")
        or (family, mlp) == ("timm", "swiglu")
    ):
        raise ValueError(f"unknown model {name!r}: expected nepa-{{tiny,S,B,L}}[-swiglu] or timm-{{tiny,S,B,L}}")
    return family, SIZES[size], mlp or "gelu"


ARCH_FIELDS = ("img_size", "patch_size", "embed_dim", "depth", "mlp_hidden_dim", "mlp_gated", "causal")


def build(name: str) -> Subject:
    family, size, mlp = parse_name(name)
    knobs = ModelParams(size=size, mlp=mlp)
    fields = {"img_size": 224, "patch_size": 14, **models.MODEL_SIZES[knobs.timm_name]}
    if family == "nepa":
        model = models.create(knobs.timm_name, **knobs.architecture())
        fields |= {key: getattr(model.cfg, key) for key in ("mlp_hidden_dim", "mlp_gated", "causal")}
        loss = nepa_images_loss
    else:
        model = VisionTransformer(
            img_size=fields["img_size"],
            patch_size=fields["patch_size"],
            embed_dim=fields["embed_dim"],
            depth=fields["depth"],
            num_heads=fields["num_heads"],
            mlp_ratio=fields["mlp_hidden_dim"] / fields["embed_dim"],
            class_token=True,
            global_pool="",
            num_classes=0,
            dynamic_img_size=False,
        )
        fields |= {"mlp_gated": False, "causal": False}
        loss = timm_images_loss
    arch = {key: fields[key] for key in ARCH_FIELDS}
    return Subject(name, model, loss, fields["img_size"], arch)


def fused_attention(subject: Subject) -> bool:
    """Whether every attention layer calls F.scaled_dot_product_attention (timm: its fused_attn switch)."""
    if subject.name.startswith("nepa"):
        return True
    return all(getattr(m, "fused_attn", True) for m in subject.model.modules() if hasattr(m, "fused_attn"))


# ---- the training step -----------------------------------------------------------------------------------


def autocast(device: torch.device, precision: str) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def make_optimizer(model: nn.Module, device: torch.device, adamw: str = "auto") -> torch.optim.Optimizer:
    """The pretraining optimizer: AdamW, betas (0.9, 0.95), weight decay on matrices. adamw: auto (fused on CUDA,
    as the engine; torch's default elsewhere), fused, or foreach (torch's default on CUDA before the engine fused)."""
    fused = {"auto": device.type == "cuda", "fused": True, "foreach": False}[adamw]
    extra = {"fused": True} if fused else {"foreach": True} if adamw == "foreach" else {}
    return torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4, betas=(0.9, 0.95), **extra)


def make_step(
    subject: Subject, device: torch.device, precision: str, compile_scope: str | None, adamw: str = "auto"
) -> Callable[[Tensor], Tensor]:
    """One optimizer step on a batch: forward (bf16 autocast over fp32 weights, as the engine), backward, gradient
    clipping at 1.0, AdamW. compile_scope: None (eager), "blocks" (each transformer block through torch.compile:
    regional compilation, one graph reused by every block) or "model" (the forward and loss in one graph; the
    backward is compiled with them). The optimizer stays eager. Returns the loss (on the device: the step never
    waits for the host)."""
    if device.type == "cpu":
        keep_freed_memory()  # as every training process of the engine on CPU (nepa.engine.distributed.init)
    model = subject.model.to(device).train()
    optimizer = make_optimizer(model, device, adamw)
    params = [p for p in model.parameters() if p.requires_grad]
    if compile_scope == "blocks":
        for block in model.blocks:
            block.compile()

    def forward(images: Tensor) -> Tensor:
        with autocast(device, precision):
            return subject.loss(model, images)

    forward_fn = torch.compile(forward) if compile_scope == "model" else forward

    def step(images: Tensor) -> Tensor:
        loss = forward_fn(images)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- which attention kernel runs -------------------------------------------------------------------------


def attention_ops(run: Callable[[], Any]) -> list[str]:
    """The aten attention ops `run` dispatches to (forward and backward), from the profiler: which SDPA backend the
    default dispatch chose (flash, efficient, cudnn, the CPU flash kernel, or the math fallback)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    names = {e.name for e in prof.events() if e.name.startswith("aten::") and "attention" in e.name}
    return sorted(names)


def cuda_sdpa_flags() -> dict[str, Any]:
    b = torch.backends.cuda
    return {
        "flash_available": b.is_flash_attention_available(),
        "flash_enabled": b.flash_sdp_enabled(),
        "mem_efficient_enabled": b.mem_efficient_sdp_enabled(),
        "cudnn_enabled": b.cudnn_sdp_enabled(),
        "math_enabled": b.math_sdp_enabled(),
    }


def forced_backend(run: Callable[[], Any], backend: str) -> str:
    """'ok' if `run` (forward and backward) works with only `backend` allowed, else the error's first line."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    try:
        with sdpa_kernel(getattr(SDPBackend, backend)):
            run()
    except RuntimeError as e:
        return f"fails: {str(e).strip().splitlines()[0][:300]}"
    return "ok"


# ---- benchmarks whose measurements run in fresh processes (DeepSpeed engines, OOM probes) ----------------

RESULT_TAG = "BENCHMARK-RESULT "


def emit(row: dict[str, Any]) -> None:
    """A trial process's answer: one tagged JSON line on stdout."""
    print(RESULT_TAG + json.dumps(row), flush=True)


def run_trial(
    script: Path, args: list[str], env: dict[str, str] | None = None, timeout: float = 1800
) -> dict[str, Any]:
    """Run `script --trial ARGS` in a fresh Python process; its emitted row, or status 'error' with the tail of its
    output (a crash, e.g. an out-of-memory kill of the whole process, is a result too)."""
    import subprocess

    launch = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    try:
        done = subprocess.run(
            [sys.executable, str(script), "--trial", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**launch, **(env or {})},
        )
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": f"timed out after {timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
    return {"status": "error", "error": f"exit {done.returncode}: " + " | ".join(tail)[-600:]}
