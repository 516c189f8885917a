"""`nepa estimate`: GPU-hours and wall time of every stage of a full reproduction, before anything is launched.

    nepa estimate [--gpus N] [--benchmarks DIR] [--params params.yaml] [--set section.key=value ...]

Stages: for ViT-B and ViT-L, pretrain, finetune, probe and segment; then the Table 1 ablations
(`ablation_variants`, ViT-B): pretrain at the ablation schedule and finetune each. The work of a stage comes
from the resolved params at `scale: full` (params.yaml's own, or its full-scale recipe when it is at the
embedded scale): images = epochs x 1,281,167 (or max_steps x global_batch where that stops first).

Speed: images/s per GPU of the NEPA model's training step (forward + backward + AdamW, bf16, eager: the
engine's path), as measured on a GPU by benchmarks/step_throughput.py: the newest such result under
--benchmarks (default {results}/benchmarks). Where there is none, the speed is an ASSUMPTION derived from the
paper's cost statement (ASSUMED_COST below), and every line that uses it says so. How the other stages are
scaled from that one figure is listed in SCALING, printed with the table. Nothing here is launched or timed.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nepa.config import Params, add_params_arguments, load_params
from nepa.errors import UserError

IMAGENET_TRAIN = 1_281_167
IMAGENET_VAL = 50_000
SIZES = {"base": "B", "large": "L"}

# ---- the assumptions, in one place --------------------------------------------------------------------------
# Used only where no GPU measurement exists: PAPER.md "Cost: 8xH100, ~3 days (B), ~5 days (L)", for the paper's
# pretraining schedules (B 1600 epochs, L 800 epochs). Per-GPU speed = epochs x 1,281,167 / (8 x days x 86400 s),
# i.e. everything the paper's runs spent (data loading, checkpoints, evaluation) charged to the training step.
ASSUMED_COST: dict[str, dict[str, float]] = {
    "base": {"epochs": 1600, "days": 3.0, "gpus": 8},
    "large": {"epochs": 800, "days": 5.0, "gpus": 8},
}
# How stages other than pretraining are scaled from the training-step speed (measured or assumed):
FORWARD_ONLY = 3.0  # a forward pass is 1/3 of a training step's FLOPs (backward = 2x forward)
SCALING = (
    "multi-GPU speed = per-GPU speed x GPUs (linear scaling; no communication cost counted)",
    "finetune: the pretraining step's speed of the same model (same FLOPs up to bidirectional attention and the "
    "frozen patch embedding); + one forward over the 50,000 val images per epoch at 3x that speed",
    "probe: one forward over train + val at 3x the training speed, on one GPU (the verb runs one process); "
    "the linear classifier's SGD over in-memory features is not counted",
    "segment: the 224-px training speed x (backbone FLOPs per 224 image / per crop image, crop padded to the "
    "patch); the UperNet head and the evaluation are not counted: a lower bound",
    "ablations: the speed of the benchmarked NEPA model with the variant's MLP (architecture switches such as "
    "RoPE, QK-Norm and LayerScale are not benchmarked separately)",
)


# ---- FLOPs ---------------------------------------------------------------------------------------------------


def forward_flops(
    *, img_size: int, patch_size: int, embed_dim: int, depth: int, mlp_hidden_dim: int, mlp_gated: bool,
    causal: bool, in_chans: int = 3, prefix_tokens: int = 1,
) -> float:  # fmt: skip
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
    from nepa.models import MODEL_SIZES

    fields = {**MODEL_SIZES[params.model.timm_name], **params.model.architecture()}
    return dict(
        img_size=img_size or fields.get("img_size", 224), patch_size=fields.get("patch_size", 14),
        embed_dim=fields["embed_dim"], depth=fields["depth"], mlp_hidden_dim=fields["mlp_hidden_dim"],
        mlp_gated=fields["mlp_gated"], causal=params.objective.causal,
    )  # fmt: skip


# ---- speed: measured or assumed ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Speed:
    images_per_s: float  # per GPU, training step
    measured: bool
    source: str


def benchmark_key(size: str, mlp: str) -> str:
    """The model name benchmarks/step_throughput.py gives this NEPA size and MLP."""
    return f"nepa-{SIZES[size]}" + ("-swiglu" if mlp == "swiglu" else "")


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
            rows = [r for r in result.get("results", []) if r.get("model") == key and r.get("status") == "ok"
                    and not r.get("compile") and r.get("precision") == "bf16"]  # fmt: skip
            if not rows:
                continue
            row = min(rows, key=lambda r: (abs(r["batch"] - batch), -r["batch"]))
            device = result["device"]
            note = "" if key == benchmark_key(size, mlp) else f", {other} MLP standing in for {mlp}"
            source = (f"MEASURED: {key}, batch {row['batch']}, eager bf16, on {device.get('name')} "
                      f"({result.get('date', '?')[:10]}, {Path(result['_path']).name}{note})")  # fmt: skip
            return Speed(float(row["images_per_s"]), True, source)
    return None


def assumed_speed(size: str) -> Speed:
    cost = ASSUMED_COST[size]
    speed = cost["epochs"] * IMAGENET_TRAIN / (cost["gpus"] * cost["days"] * 86400)
    return Speed(speed, False, f"ASSUMED, no GPU measurement of ViT-{SIZES[size]}: {cost['epochs']:.0f} epochs x "
                               f"{IMAGENET_TRAIN:,} images / ({cost['gpus']:.0f} GPUs x {cost['days']:.0f} days x "
                               "86400 s), the paper's cost statement (8xH100)")  # fmt: skip


# ---- stages --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    stage: str
    work: str
    speed: Speed
    gpu_hours: float
    gpus: int

    @property
    def wall_hours(self) -> float:
        return self.gpu_hours / self.gpus


def _hours(images: float, speed: float) -> float:
    return images / speed / 3600


def pretrain_images(p: Params) -> tuple[float, str]:
    s = p.pretrain
    images = s.epochs * IMAGENET_TRAIN
    if s.max_steps is not None and s.max_steps * s.global_batch < images:
        return s.max_steps * s.global_batch, f"{s.max_steps:,} steps x batch {s.global_batch}"
    return images, f"{s.epochs:g} epochs x {IMAGENET_TRAIN:,}"


def stage_estimates(p: Params, speed: Speed, gpus: int, name: str, stages: tuple[str, ...]) -> list[Estimate]:
    out = []
    v = speed.images_per_s
    if "pretrain" in stages:
        images, work = pretrain_images(p)
        out.append(Estimate(f"{name} pretrain", f"{work} = {images:.3g} images", speed, _hours(images, v), gpus))
    if "finetune" in stages:
        f = p.finetune
        train, val = f.epochs * IMAGENET_TRAIN, f.epochs * IMAGENET_VAL
        hours = _hours(train, v) + _hours(val, v * FORWARD_ONLY)
        out.append(Estimate(f"{name} finetune", f"{f.epochs:g} epochs x {IMAGENET_TRAIN:,} + val each epoch", speed,
                            hours, gpus))  # fmt: skip
    if "probe" in stages:
        images = IMAGENET_TRAIN + IMAGENET_VAL
        out.append(Estimate(f"{name} probe", f"features of {images:,} images (forward only)", speed,
                            _hours(images, v * FORWARD_ONLY), 1))  # fmt: skip
    if "segment" in stages:
        s = p.segment
        patch = nepa_arch(p)["patch_size"]
        side = -(-s.crop // patch) * patch
        ratio = training_flops(**nepa_arch(p, 224)) / training_flops(**{**nepa_arch(p, side), "causal": False})
        images = s.iterations * s.global_batch
        out.append(Estimate(f"{name} segment", f"{s.iterations:,} it x batch {s.global_batch} at {side} px "
                            f"(x{1 / ratio:.1f} FLOPs of 224)", speed, _hours(images, v * ratio), gpus))  # fmt: skip
    return out


def resolve(args: argparse.Namespace, size: str, variant: str | None = None) -> tuple[Params, bool]:
    """Params of `size` (and `variant`, else --variant or params.yaml's) at scale full, --set applied last. True if
    params.yaml itself is at scale full. Otherwise (False) its sections hold the embedded schedule, which would win
    over the full-scale presets: the full-scale recipe is then resolved from its recipe, model knobs, objective,
    variant lists and launcher alone."""
    chosen = variant or args.variant
    overrides = (*args.overrides, *([f"variant={chosen}"] if chosen else []))
    own = load_params(args.params, overrides, size=size)
    if own.scale == "full":
        return own, True
    kept = own.model_dump(mode="json", include={"recipe", "variant", "ablation_variants", "results", "objective",
                                                "launcher", "model"})  # fmt: skip
    kept["model"].pop("size")
    full = {**kept, "scale": "full", "data": {"imagenet_src": "unused-by-estimate"}}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "params.yaml"
        path.write_text(yaml.safe_dump(full))
        return load_params(path, overrides, size=size), False


def default_gpus(params: Params) -> tuple[int, str]:
    pretrain = params.launcher.stages.get("pretrain")
    if pretrain is not None and pretrain.gpus_per_node > 0:
        n = pretrain.nodes * pretrain.gpus_per_node
        return n, f"launcher.stages.pretrain: {pretrain.nodes} node(s) x {pretrain.gpus_per_node} GPUs"
    return 8, "the paper's 8 GPUs (launcher.stages.pretrain sets no GPUs)"


def _duration(hours: float) -> str:
    return f"{hours / 24:.1f} d" if hours >= 48 else f"{hours:.1f} h"


def render(estimates: list[Estimate], header: list[str]) -> str:
    """The table, with each speed's source once as a footnote: M1, M2... measured, A1, A2... ASSUMED."""
    notes: dict[Speed, str] = {}
    for e in estimates:
        if e.speed not in notes:
            kind = "M" if e.speed.measured else "A"
            notes[e.speed] = f"{kind}{sum(1 for s in notes if s.measured == e.speed.measured) + 1}"
    width = max(len(e.stage) for e in estimates)
    lines = [*header, "", f"{'stage':<{width}}  {'GPU-hours':>9}  {'wall':>7}  {'GPUs':>4}  {'img/s/GPU':>9}  "
             f"{'speed':<12}  work"]  # fmt: skip
    for e in estimates:
        label = ("measured " if e.speed.measured else "ASSUMED ") + notes[e.speed]
        lines.append(f"{e.stage:<{width}}  {e.gpu_hours:>9,.1f}  {_duration(e.wall_hours):>7}  {e.gpus:>4}  "
                     f"{e.speed.images_per_s:>9.1f}  {label:<12}  {e.work}")  # fmt: skip
    total, wall = sum(e.gpu_hours for e in estimates), sum(e.wall_hours for e in estimates)
    lines.append(f"{'total, one stage after another':<{width}}  {total:>9,.1f}  {_duration(wall):>7}")
    lines += ["", "Speeds (training step, images/s per GPU):"]
    lines += [f"  {note}: {speed.images_per_s:.1f}, {speed.source}" for speed, note in notes.items()]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gpus", type=int, help="GPUs per stage (default: launcher.stages.pretrain, else 8)")
    parser.add_argument("--benchmarks", type=Path, help="step_throughput results (default: {results}/benchmarks)")
    add_params_arguments(parser)  # its own: it resolves the full-scale recipe of each size (resolve)


def main(args: argparse.Namespace) -> int:
    base, at_full = resolve(args, "base")
    gpus, gpus_from = (args.gpus, "--gpus") if args.gpus else default_gpus(base)
    if gpus < 1:
        raise UserError("--gpus must be at least 1")
    results = gpu_results(args.benchmarks or Path(base.results) / "benchmarks")
    estimates: list[Estimate] = []
    assumed = False

    def speed_of(p: Params, size: str, batch: int) -> Speed:
        nonlocal assumed
        found = measured_speed(results, size, p.model.mlp, batch)
        assumed |= found is None
        return found or assumed_speed(size)

    for size in SIZES:
        p = base if size == "base" else resolve(args, size)[0]
        name = f"ViT-{SIZES[size]}"
        speed = speed_of(p, size, p.pretrain.micro_batch)
        estimates += stage_estimates(p, speed, gpus, name, ("pretrain", "finetune", "probe", "segment"))
    for variant in base.ablation_variants:
        p = resolve(args, "base", variant)[0]
        speed = speed_of(p, "base", p.pretrain.micro_batch)
        estimates += stage_estimates(p, speed, gpus, f"ablation {variant} (B)", ("pretrain", "finetune"))
    header = [
        f"nepa estimate: a full reproduction, recipe {base.recipe}, on {gpus} GPU(s) ({gpus_from}); nothing is run.",
        "Params: " + ("params.yaml at scale full" if at_full else
                      f"params.yaml is at scale embedded: this is the full-scale recipe '{base.recipe}' (its presets, "
                      "with params.yaml's model knobs, variants and launcher; not its embedded schedule)"),
        "Speed: " + (f"measured on a GPU ({len(results)} result file(s) under the benchmarks folder)" if not assumed
                     else "NO GPU MEASUREMENT for some or all models: those lines use the ASSUMED speed below; run "
                     "benchmarks/step_throughput.py on the target GPU for a measured estimate"),
    ]  # fmt: skip
    print(render(estimates, header))
    print("How the other stages are scaled from the training-step speed:")
    for line in SCALING:
        print(f"  - {line}")
    if not math.isfinite(sum(e.gpu_hours for e in estimates)):
        return 1
    return 0
