"""What the benchmarks share: the models under test (NEPA and timm's standard ViT peer) at the package's sizes,
the engine's training step, the device and version record, the GPU peak table, and the result files (written in
the one layout `nepa estimate` reads: nepa/measurements.py).

Model names: `{nepa,timm}-{size}`, NEPA optionally `-swiglu`, the size one of nepa.config.SIZES (tiny, small,
base, large).
    nepa-base         NEPA ViT-B/14 at 224 as pretrained: causal, 2D RoPE (+ its training-time coordinate
                      rescale), QK-Norm, LayerScale; GeLU 4x MLP (the official code's, and the peer's: the two then
                      differ only in what NEPA adds); the real loss (nepa.objectives.pretrain_loss)
    nepa-base-swiglu  the same with the paper's SwiGLU MLP (the GeLU MLP's parameter count)
    timm-base         timm's VisionTransformer of the same size: patch 14, 224 px, class token, learned position
                      embedding, fused attention, bidirectional, no RoPE, no QK-Norm, no LayerScale; trained with
                      the same cosine loss on its own output tokens (the loss is a negligible part of the step)
    large: ViT-L/14; small: ViT-S/14; tiny: nepa_tiny_patch4_32 (32 px, patch 4).
A step is the engine's own (nepa.engine.trainer.Trainer: DeepSpeed ZeRO, AdamW, clipping, autocast, the EMA),
with the pretraining preset's optimizer settings (nepa.presets.PRETRAIN_COMMON).
"""

from __future__ import annotations

import argparse
import dataclasses
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
from nepa.config import SIZES, ModelParams, linear_scaled_lr
from nepa.cost import training_flops
from nepa.objectives import Objective, next_embedding_loss, pretrain_loss
from nepa.presets import PRETRAIN_COMMON
from nepa.provenance import git_commit

if TYPE_CHECKING:
    from nepa.engine.trainer import Task, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "benchmarks"

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
    full-scale pretraining does (its loss; AdamW, clipping and EMA of the preset), writing no checkpoint; `config`
    overrides TrainConfig's fields."""
    from nepa.engine.trainer import Task, TrainConfig  # only the engine benchmarks import the engine

    task = Task(
        model=subject.model,
        loss=lambda model, b: subject.loss(model, b[0]),
        batches=batches,
        batches_per_epoch=batches_per_epoch,
    )
    recipe = {key: PRETRAIN_COMMON[key] for key in ("weight_decay", "grad_clip", "ema_decay")}
    settings: dict[str, Any] = dict(
        folder=Path(folder),
        epochs=1,
        warmup_epochs=0,
        global_batch=batch,
        micro_batch=batch,
        lr=linear_scaled_lr(PRETRAIN_COMMON["base_lr"], batch),
        betas=tuple(PRETRAIN_COMMON["betas"]),
        **recipe,
        checkpoint_every=10**9,
        keep_last=1,
        log_every=10**9,
        seed=0,
        max_steps=steps,
        zero_stage=zero_stage,
    )
    return task, TrainConfig(**(settings | config))


def parse_name(name: str) -> tuple[str, str, str]:
    """'nepa-base-swiglu' -> ('nepa', 'base', 'swiglu'): the family, a size of nepa.config.SIZES, the MLP."""
    family, _, rest = name.partition("-")
    size, _, mlp = rest.partition("-")
    if (
        family not in ("nepa", "timm")
        or size not in SIZES
        or mlp not in ("", "swiglu")
        or (family, mlp) == ("timm", "swiglu")
    ):
        sizes = ",".join(SIZES)
        raise ValueError(f"unknown model {name!r}: expected nepa-{{{sizes}}}[-swiglu] or timm-{{{sizes}}}")
    return family, size, mlp or "gelu"


def identity(name: str) -> dict[str, str]:
    """The fields a result row names its model by (what `nepa estimate` selects on)."""
    family, size, mlp = parse_name(name)
    return {"model": name, "family": family, "size": size, "mlp": mlp}


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


def engine_step(
    subject: Subject, device: torch.device, precision: str, compile_scope: str | None, batch: int, folder: str
) -> Callable[[Tensor], Tensor]:
    """The engine's training step on `subject` (nepa.engine.trainer.Trainer, built with engine_parts: DeepSpeed
    ZeRO-2 with the engine's AdamW (fused on CUDA), clipping, autocast in `precision` over fp32 weights), one
    micro-batch of `batch` images per optimizer step, then the EMA update, as the engine's loop calls them.
    compile_scope: None (eager), "blocks" (each transformer block through torch.compile: regional compilation, one
    graph reused by every block) or "model" (the loss's forward in one graph; backward compiled with it). Returns
    images -> loss (on the device: the step never waits for the host); `folder` holds the engine's (empty)
    checkpoint folder."""
    from nepa.engine import distributed
    from nepa.engine.distributed import DistEnv
    from nepa.engine.trainer import Trainer

    env = DistEnv()
    distributed.init(env)  # a group of one; on CPU also the engine's allocator setting
    subject.model.to(device)
    if compile_scope == "blocks":
        for block in subject.model.blocks:
            block.compile()
    if compile_scope == "model":
        subject = dataclasses.replace(subject, loss=torch.compile(subject.loss))
    never = lambda epoch, start: iter(())  # noqa: E731 (the harness hands the step its batches itself)
    task, cfg = engine_parts(subject, never, 10**6, folder, batch, 10**9, 2, precision=precision, name=subject.name)
    trainer = Trainer(cfg, task, env, device)
    labels = torch.zeros(batch, dtype=torch.long, device=device)

    def step(images: Tensor) -> Tensor:
        loss = trainer.engine((images, labels))
        trainer.engine.backward(loss)
        trainer.engine.step()
        if trainer.ema is not None:
            trainer.ema.update()
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
