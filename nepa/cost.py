"""The cost model of a full reproduction: each GPU job's work in FLOPs, the speed of that work, its GPU-hours.

No command line: `nepa plan` (nepa/plan.py) and `nepa estimate` (nepa/estimate.py) print what it computes, and
docs/estimate.md states the model with every figure's source.

    wall time = FLOPs / (speed per GPU x GPUs)  +  the gradient exchange between nodes
    GPU-hours = wall time x GPUs

- FLOPs: the matmuls of the NEPA ViT (forward_flops) and of the UperNet head (upernet_flops), 2 per
  multiply-add, training = 3 x forward; checked against torch's FLOP counter on the real modules.
- Pretraining speed: the NEPA training step measured on a GPU (benchmarks/step_throughput.py, read in the
  layout of nepa/measurements.py), else ASSUMED from the paper's cost statement (ASSUMED_COST).
- Downstream speeds: CALIBRATED on public runs of the same work on V100s (REFERENCES): the FLOP/s each run
  achieved per V100, times the stated H100/V100 ratio (GPU_RATIO).
- Communication: a ring all-reduce of the fp32 gradients (ZeRO-2's reduce-scatter plus all-gather moves as
  much) once per optimizer step over the nodes' network, not overlapped with compute (nepa's DeepSpeed config
  leaves ZeRO's overlap_comm off); within a node (NVLink) it is not counted.
Nothing here is launched or timed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nepa.config import SIZES, ModelParams, Params
from nepa.measurements import read
from nepa.presets import IMAGENET_TRAIN, steps_per_epoch

if TYPE_CHECKING:
    from nepa.engine.schedule import StepCounts

IMAGENET_VAL = 50_000
ADE20K_VAL = 2_000
HOUR = 3600.0


@dataclass(frozen=True)
class Figure:
    """A number the model takes from outside, and where from."""

    value: float
    source: str


# ---- the figures, in one place (docs/estimate.md cites them) -------------------------------------------------

# Pretraining without a GPU measurement: docs/paper.md "Cost: 8xH100, ~3 days (B), ~5 days (L)", for the paper's
# schedules (B 1600 epochs, L 800). Per-GPU speed = epochs x 1,281,167 / (8 x days x 86400 s): everything the
# paper's runs spent (data loading, checkpoints, evaluation) charged to the training step.
ASSUMED_COST: dict[str, dict[str, float]] = {
    "base": {"epochs": 1600, "days": 3.0, "gpus": 8},
    "large": {"epochs": 800, "days": 5.0, "gpus": 8},
}
GPU_RATIO = Figure(
    4.0,
    "ASSUMED H100 SXM / V100 training speed: H100 ~2x A100 on vision models (Lambda, 'NVIDIA H100 Tensor Core "
    "GPU - Deep Learning Performance Analysis') x A100 ~2x V100 with FP16 tensor cores (Lambda, 'NVIDIA A100 GPU "
    "Benchmarks for Deep Learning': 1.95-2.5x); the dense tensor peaks bound it at 7.9x (989.4 vs 125 TFLOP/s)",
)
INTER_NODE_BYTES_S = Figure(
    50e9,
    "ASSUMED 400 Gb/s InfiniBand NDR per GPU (one ConnectX-7 per H100, NVIDIA's DGX/HGX H100 design) at line "
    "rate: a lower bound on the exchange's time",
)
GRADIENT_BYTES = 4  # fp32 gradients: the engine trains fp32 weights under bf16 autocast
ADE20K_EVAL_WINDOWS = Figure(
    2.0, "ASSUMED sliding windows per ADE20K val image (short side 512, ~683 long: 2 crops of 512 at stride 341)"
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


def upernet_flops(*, embed_dim: int, channels: int, num_classes: int, grid: int, training: bool = True) -> float:
    """Matmul FLOPs of one image through nepa's UperNet on a `grid` x `grid` token map (nepa/eval/upernet.py):
    the deconvolution pyramid (4x, 2x, 1x, 1/2x), the head's laterals, pyramid pooling, 3x3 smoothing and
    fusion convolutions and classifier, and in training the auxiliary FCN head. BatchNorm, activations, pooling
    and resizes are not counted."""
    d, c, k, g = embed_dim, channels, num_classes, grid
    levels = (4 * g) ** 2 + (2 * g) ** 2 + g**2  # the three finest pyramid levels' pixels
    coarse = (g // 2) ** 2
    pyramid = 2 * d * d * 4 * (g**2 + (2 * g) ** 2) + 2 * d * d * 4 * g**2  # transposed 2x2 convs: 4 outputs each
    laterals = 2 * d * c * levels
    pooling = sum(2 * d * c * b * b for b in (1, 2, 3, 6)) + 2 * 9 * (d + 4 * c) * c * coarse
    smooth = 2 * 9 * c * c * levels
    fuse = 2 * 9 * 4 * c * c * (4 * g) ** 2
    classifier = 2 * c * k * (4 * g) ** 2
    aux = 2 * 9 * d * (c // 2) * g**2 + 2 * (c // 2) * k * g**2 if training else 0
    return float(pyramid + laterals + pooling + smooth + fuse + classifier + aux)


def vit_arch(size: str, mlp: str, *, causal: bool, img_size: int = 224, patch_size: int = 14) -> dict[str, Any]:
    """forward_flops() arguments of a NEPA ViT of the package's `size` (nepa.config.SIZES) and `mlp`."""
    fields = {**SIZES[size].architecture, **ModelParams(size=size, mlp=mlp).architecture()}
    return dict(
        img_size=img_size,
        patch_size=fields.get("patch_size", patch_size),
        embed_dim=fields["embed_dim"],
        depth=fields["depth"],
        mlp_hidden_dim=fields["mlp_hidden_dim"],
        mlp_gated=fields["mlp_gated"],
        causal=causal,
    )


def nepa_arch(params: Params, img_size: int | None = None, causal: bool | None = None) -> dict[str, Any]:
    """forward_flops() arguments of the configured NEPA model (size and MLP from params)."""
    arch = vit_arch(params.model.size, params.model.mlp, causal=params.objective.causal if causal is None else causal)
    return {**arch, "img_size": img_size or SIZES[params.model.size].architecture.get("img_size", 224)}


def parameters(arch: dict[str, Any]) -> float:
    """Weights of a ViT trunk (matrices; biases and norms are a fraction of a percent)."""
    d, h = arch["embed_dim"], arch["mlp_hidden_dim"]
    return 3 * arch["patch_size"] ** 2 * d + arch["depth"] * (4 * d * d + (3 if arch["mlp_gated"] else 2) * d * h)


# ---- public runs the downstream stages are calibrated on --------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """A public run on V100s: its work in FLOPs (counted by this model) and the V100-seconds it took."""

    name: str
    source: str
    flops: float
    v100_seconds: float

    @property
    def v100_flops_per_s(self) -> float:
        return self.flops / self.v100_seconds


def _mae_vit(size: str) -> dict[str, Any]:
    """MAE's ViT/16 at 224 with its 4x GeLU MLP and class token, bidirectional."""
    width, depth = {"base": (768, 12), "large": (1024, 24)}[size]
    return dict(img_size=224, patch_size=16, embed_dim=width, depth=depth, mlp_hidden_dim=4 * width,
                mlp_gated=False, causal=False)  # fmt: skip


def _mae_finetune(size: str, epochs: int, hours: float) -> Reference:
    arch = _mae_vit(size)
    work = epochs * (IMAGENET_TRAIN * training_flops(**arch) + IMAGENET_VAL * forward_flops(**arch))
    return Reference(
        f"MAE fine-tune ViT-{size[0].upper()}/16, {epochs} epochs, batch 1024 (+ val each epoch)",
        f"facebookresearch/mae FINETUNE.md: 'Training time is ~{int(hours)}h{round(hours % 1 * 60)}m in 32 V100 GPUs'",
        work,
        32 * hours * HOUR,
    )


MAE_PROBE = Reference(
    "MAE linear probe ViT-B/16, 90 epochs, batch 16384 (the frozen trunk's forward each epoch)",
    "facebookresearch/mae FINETUNE.md: 'Training time is ~2h20m for 90 epochs in 32 V100 GPUs'",
    90 * (IMAGENET_TRAIN + IMAGENET_VAL) * forward_flops(**_mae_vit("base")),
    32 * (2 + 20 / 60) * HOUR,
)
MMSEG_ITERATION_S = 0.5  # per iteration of 8 V100s x 2 images
MMSEG_UPERNET = Reference(
    "mmsegmentation UperNet ViT-B/16, ADE20K 512x512, 160k iterations, batch 16 on 8 V100",
    "mmsegmentation configs/vit (upernet_vit-b16_mln_512x512_160k_ade20k, 8 GPUs x 2 images): ~0.5 s per "
    "iteration in its published training log, as issue 30 quotes it",
    160_000 * 16 * 3 * (forward_flops(**{**_mae_vit("base"), "img_size": 512})
                        + upernet_flops(embed_dim=768, channels=512, num_classes=150, grid=32)),
    160_000 * 8 * MMSEG_ITERATION_S,
)  # fmt: skip
REFERENCES: dict[tuple[str, str], Reference] = {
    ("finetune", "base"): _mae_finetune("base", 100, 7 + 11 / 60),
    ("finetune", "large"): _mae_finetune("large", 50, 8 + 52 / 60),
    ("probe", "base"): MAE_PROBE,
    ("probe", "large"): MAE_PROBE,  # no public ViT-L probe time: B's achieved FLOP/s
    ("segment", "base"): MMSEG_UPERNET,
    ("segment", "large"): MMSEG_UPERNET,
}


# ---- speed: measured, assumed or calibrated -----------------------------------------------------------------


@dataclass(frozen=True)
class Speed:
    flops_per_s: float  # per GPU, of the stage's kind of work
    kind: str  # MEASURED | ASSUMED | CALIBRATED
    source: str


def measured_speed(results: list[dict[str, Any]], size: str, mlp: str, batch: int) -> Speed | None:
    """The newest GPU measurement of the NEPA training step (eager, bf16) at `size`: with this MLP if measured,
    else the other; at `batch` if measured, else the nearest. As FLOP/s of the measured model."""
    for result in results:
        for kind in (mlp, "gelu" if mlp == "swiglu" else "swiglu"):
            rows = [
                r
                for r in result.get("results", [])
                if (r.get("family"), r.get("size"), r.get("mlp")) == ("nepa", size, kind)
                and r.get("status") == "ok"
                and not r.get("compile")
                and r.get("precision") == "bf16"
            ]
            if not rows:
                continue
            row = min(rows, key=lambda r: (abs(r["batch"] - batch), -r["batch"]))
            flops = float(row["images_per_s"]) * training_flops(**vit_arch(size, kind, causal=True))
            note = "" if kind == mlp else f"; the {kind} MLP's FLOP/s standing in for {mlp}"
            source = (
                f"nepa-{size}-{kind}, batch {row['batch']}, eager bf16, {row['images_per_s']:.1f} img/s on "
                f"{result['device'].get('name')} ({result.get('date', '?')[:10]}, {Path(result['path']).name}{note})"
            )
            return Speed(flops, "MEASURED", source)
    return None


def assumed_speed(size: str) -> Speed:
    cost = ASSUMED_COST[size]
    images_per_s = cost["epochs"] * IMAGENET_TRAIN / (cost["gpus"] * cost["days"] * 86400)
    return Speed(
        images_per_s * training_flops(**vit_arch(size, "swiglu", causal=True)),
        "ASSUMED",
        f"{images_per_s:.1f} img/s of the paper's ViT-{size[0].upper()}: {cost['epochs']:.0f} epochs x "
        f"{IMAGENET_TRAIN:,} images / ({cost['gpus']:.0f} GPUs x {cost['days']:.0f} days x 86400 s), the paper's "
        "cost statement (8xH100)",
    )


def calibrated_speed(stage: str, size: str) -> Speed:
    ref = REFERENCES[stage, size]
    return Speed(
        ref.v100_flops_per_s * GPU_RATIO.value,
        "CALIBRATED",
        f"{ref.v100_flops_per_s / 1e12:.1f} TFLOP/s per V100 in {ref.name} ({ref.source}) x {GPU_RATIO.value:g} "
        "(H100/V100, GPU_RATIO)",
    )


def stage_speed(stage: str, p: Params, results: list[dict[str, Any]]) -> Speed:
    """The speed of a stage's work per GPU: pretraining measured or assumed, downstream calibrated."""
    if stage == "pretrain":
        return measured_speed(results, p.model.size, p.model.mlp, p.pretrain.micro_batch) or assumed_speed(p.model.size)
    return calibrated_speed(stage, p.model.size)


def gpu_measurements(folder: Path) -> list[dict[str, Any]]:
    """step_throughput results measured on a GPU under `folder`, newest first."""
    return read(folder, "step_throughput", "cuda")


# ---- the cost of a job ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cost:
    stage: str
    work: str  # what is counted, in words
    flops: float  # in all
    flops_per_image: float  # of one training (or forward-only) image: the speed in images/s
    speed: Speed
    gpus: int
    exchange_hours: float  # wall time of the gradient exchange between nodes

    @property
    def wall_hours(self) -> float:
        return self.flops / (self.speed.flops_per_s * self.gpus) / HOUR + self.exchange_hours

    @property
    def gpu_hours(self) -> float:
        return self.wall_hours * self.gpus

    @property
    def images_per_s(self) -> float:
        return self.speed.flops_per_s / self.flops_per_image


def exchange_hours(arch: dict[str, Any], steps: int, gpus: int, nodes: int) -> float:
    """The ring all-reduce of the gradients once per optimizer step, between nodes only (see the module doc):
    each GPU sends and receives 2 (N-1)/N x the gradient bytes over its share of the network."""
    if nodes < 2:
        return 0.0
    volume = 2 * (gpus - 1) / gpus * parameters(arch) * GRADIENT_BYTES
    return steps * volume / INTER_NODE_BYTES_S.value / HOUR


def pretrain_steps(p: Params) -> StepCounts:
    """The full-scale pretraining's step counts: the engine's own schedule over ImageNet-1K train's steps per epoch."""
    from nepa.engine.schedule import step_counts  # the engine imports torch; the Snakefile reads plans through here

    s = p.pretrain
    return step_counts(s.epochs, s.warmup_epochs, s.max_steps, steps_per_epoch(s.global_batch), 1)


def stage_cost(stage: str, p: Params, speed: Speed, gpus: int, nodes: int) -> Cost:
    """The FLOPs and time of one full-scale GPU job of `stage` under params `p`."""
    if stage == "pretrain":
        s, steps = p.pretrain, pretrain_steps(p).stop_step
        arch = nepa_arch(p)
        images = steps * s.global_batch
        work = f"{steps:,} steps x batch {s.global_batch} = {images:.3g} images"
        per_image = training_flops(**arch)
        return Cost(stage, work, images * per_image, per_image, speed, gpus, exchange_hours(arch, steps, gpus, nodes))
    if stage == "finetune":
        f = p.finetune
        arch = nepa_arch(p, causal=f.attention == "causal")
        evals = 2 if f.ema_decay is not None else 1  # online and EMA weights, each epoch
        per_image = training_flops(**arch)
        flops = f.epochs * (IMAGENET_TRAIN * per_image + evals * IMAGENET_VAL * forward_flops(**arch))
        steps = round(f.epochs * steps_per_epoch(f.global_batch))
        work = f"{f.epochs:g} epochs x {IMAGENET_TRAIN:,} + {evals} val pass(es) each epoch"
        return Cost(stage, work, flops, per_image, speed, gpus, exchange_hours(arch, steps, gpus, nodes))
    if stage == "probe":
        per_image = forward_flops(**nepa_arch(p))
        images = IMAGENET_TRAIN + IMAGENET_VAL
        return Cost(stage, f"features of {images:,} images (forward only)", images * per_image, per_image, speed,
                    gpus, 0.0)  # fmt: skip
    s = p.segment
    arch = nepa_arch(p, causal=False)
    grid = -(-s.crop // arch["patch_size"])  # the crop padded to the patch: 512 -> 518 px, 37 tokens
    arch = {**arch, "img_size": grid * arch["patch_size"]}
    head = dict(embed_dim=arch["embed_dim"], channels=s.channels, num_classes=s.num_classes or 150, grid=grid)
    per_image = 3 * (forward_flops(**arch) + upernet_flops(**head))
    evaluation = (
        ADE20K_VAL * ADE20K_EVAL_WINDOWS.value * (forward_flops(**arch) + upernet_flops(**head, training=False))
    )
    work = (f"{s.iterations:,} it x batch {s.global_batch} at {grid * arch['patch_size']} px, backbone + UperNet "
            f"({per_image / 3 / 1e9:.0f} GFLOP forward), + slide evaluation")  # fmt: skip
    flops = s.iterations * s.global_batch * per_image + evaluation
    return Cost(stage, work, flops, per_image, speed, gpus, exchange_hours(arch, s.iterations, gpus, nodes))


def time_problem(name: str, stage: str, p: Params, cost: Cost, margin: float) -> str | None:
    """Why a job's estimated wall time (with `margin`) does not fit its SLURM time limit and requeues, or None."""
    r = p.launcher.resources(stage)
    allowed = r.time_min / 60 * (r.max_timeouts + 1)
    needed = cost.wall_hours * margin
    if allowed >= needed:
        return None
    timeouts = math.ceil(needed * 60 / r.time_min) - 1
    return (
        f"{name}: needs ~{duration(needed)} with margin on {cost.gpus} GPUs, but time_min {r.time_min} x "
        f"(max_timeouts {r.max_timeouts} + 1) allows {duration(allowed)}; set launcher.stages.{stage}.max_timeouts "
        f"to {timeouts} or more"
    )


def duration(hours: float) -> str:
    return f"{hours / 24:.1f} d" if hours >= 48 else f"{hours:.1f} h"
