"""Recipes as data: the paper's and the official code's full-scale numbers, and the ablation variants.

Sources: PAPER.md (the paper's Tables 1, 5 and the official scripts). tests/test_presets.py checks
these numbers against PAPER.md's tables.
"""

from __future__ import annotations

from typing import Any

from nepa.errors import UserError

Layer = dict[str, Any]

# ---- the embedded default ------------------------------------------------------------------------

# Every stage for real on Fashion-MNIST, sized to finish within ten minutes on 2 CPU cores
# (results/embedded_dag.md). The EMA decays fit runs of ~100 steps: at the full-scale 0.999 the exported EMA
# would still be mostly the random initialisation (0.999^156 = 86 %).
EMBEDDED: Layer = {
    "data": {"embedded_images": [10000, 1000]},
    "pretrain": dict(
        epochs=1, warmup_epochs=0.1, global_batch=64, micro_batch=64, base_lr=0.006, ema_decay=0.95, num_workers=1
    ),
    "finetune": dict(epochs=0.5, warmup_epochs=0.05, global_batch=64, micro_batch=64, ema_decay=0.95, num_workers=1),
    "probe": dict(epochs=10, num_workers=1),
    # At 64 px the UperNet head, not the backbone, is most of a step: a 64-channel head at batch 8
    # (the recipe of results/eval_embedded/).
    "segment": dict(
        iterations=300, warmup_iterations=30, global_batch=8, micro_batch=8, channels=64, lr=1e-3, num_workers=1
    ),
}

# ---- full-scale recipes ---------------------------------------------------------------------------

PRETRAIN_COMMON: Layer = dict(
    warmup_epochs=40, global_batch=4096, micro_batch=128, base_lr=3e-4, betas=[0.9, 0.95], weight_decay=0.05,
    grad_clip=1.0, ema_decay=0.9999, drop_path=0.0, crop_scale=[0.08, 1.0], checkpoint_every=1000, keep_last=3,
    log_every=50, num_workers=10,
)  # fmt: skip
PRETRAIN_EPOCHS = {
    ("paper", "base"): 1600,
    ("paper", "large"): 800,
    ("official", "base"): 1600,
    ("official", "large"): 1600,
}

FINETUNE_COMMON: Layer = dict(
    global_batch=1024, micro_batch=128, betas=[0.9, 0.999], weight_decay=0.05, auto_augment="rand-m9-mstd0.5-inc1",
    reprob=0.25, mixup=0.8, cutmix=1.0, label_smoothing=0.1, freeze_patch_embed=True, ema_decay=0.9999,
    checkpoint_every=1000, keep_last=3, log_every=50, num_workers=10,
)  # fmt: skip
FINETUNE: dict[tuple[str, str], Layer] = {
    ("paper", "base"): dict(epochs=100, warmup_epochs=5, base_lr=1e-3, layer_decay=0.35, drop_path=0.1),
    ("paper", "large"): dict(epochs=50, warmup_epochs=5, base_lr=1e-3, layer_decay=0.60, drop_path=0.2),
    # The released scripts: fixed decay, longer staggered warm-up, 100 epochs; B at base lr 1.5e-3.
    ("official", "base"): dict(epochs=100, warmup_epochs=20, base_lr=1.5e-3, layer_decay=0.65, drop_path=0.1),
    ("official", "large"): dict(epochs=100, warmup_epochs=30, base_lr=1e-3, layer_decay=0.75, drop_path=0.2),
}

# ADE20K: the paper gives UperNet, crop 512, batch 16, 160k iterations; the rest is the MAE/BEiT peer recipe.
SEGMENT: dict[str, Layer] = {
    "base": dict(taps=[3, 5, 7, 11], drop_path=0.1, layer_decay=0.65),
    "large": dict(taps=[7, 11, 15, 23], drop_path=0.2, layer_decay=0.75),
}
SEGMENT_COMMON: Layer = dict(
    iterations=160_000, global_batch=16, micro_batch=2, crop=512, lr=1e-4, weight_decay=0.05, warmup_iterations=1500,
    channels=512, num_classes=150, eval_mode="slide", eval_stride=341, checkpoint_every=4000, keep_last=3,
    log_every=50, num_workers=8,
)  # fmt: skip
PROBE_FULL: Layer = dict(epochs=90, global_batch=4096, base_lr=0.1, weight_decay=0.0, num_workers=10)

# Ablations of Table 1 run ViT-B at pretraining batch 2048 for 50k (1a) or 100k (1b-1e) steps.
ABLATION_STEPS = {"1a": 50_000, "1b": 100_000, "1c": 100_000, "1d": 100_000, "1e": 100_000}


def full_scale(recipe: str, size: str) -> Layer:
    """The paper-scale recipe of `recipe` for ViT-B or ViT-L, as a params layer."""
    if size not in ("base", "large"):
        raise UserError(f"scale full runs the paper's ViT-B or ViT-L: set model.size to base or large, not {size!r}")
    return {
        "pretrain": {**PRETRAIN_COMMON, "epochs": PRETRAIN_EPOCHS[recipe, size]},
        "finetune": {**FINETUNE_COMMON, **FINETUNE[recipe, size]},
        "segment": {**SEGMENT_COMMON, **SEGMENT[size]},
        "probe": PROBE_FULL,
    }


def recipe_knobs(recipe: str, size: str) -> Layer:
    """The knobs where the paper and the official code disagree (PAPER.md "Decisions"), at any scale."""
    if recipe == "paper":
        return {"model": {"mlp": "swiglu", "qk_norm_affine": False}, "finetune": {"layer_decay_ramp": True}}
    # Official: GeLU 4x MLP; learnable QK-Norm in the L pretraining config; fixed layer decay.
    return {"model": {"mlp": "gelu", "qk_norm_affine": size == "large"}, "finetune": {"layer_decay_ramp": False}}


def ablation_schedule(table: str) -> Layer:
    """Full-scale schedule of an ablation row: batch 2048, 50k or 100k steps."""
    return {"pretrain": {"global_batch": 2048, "max_steps": ABLATION_STEPS[table]}}


# ---- ablation variants (Table 1), by name: params layers applied over params.yaml ---------------

_NO_BUNDLE = {"layerscale": False, "rope": False, "mlp": "gelu", "qk_norm": False}

ABLATIONS: dict[str, Layer] = {
    "nepa": {},
    # 1a: the objective's switches
    "no_shift": {"objective": {"shift": False}},
    "no_causal": {"objective": {"causal": False}},
    "no_stop_grad": {"objective": {"stop_grad": False}},
    # 1b: the stability bundle, one component at a time
    "plain_vit": {"model": _NO_BUNDLE},
    "ls": {"model": {**_NO_BUNDLE, "layerscale": True}},
    "ls_rope": {"model": {**_NO_BUNDLE, "layerscale": True, "rope": True}},
    "ls_rope_swiglu": {"model": {**_NO_BUNDLE, "layerscale": True, "rope": True, "mlp": "swiglu"}},
    "ls_rope_qknorm": {"model": {**_NO_BUNDLE, "layerscale": True, "rope": True, "qk_norm": True}},
    # 1c: input-embedding masking
    "mask_40": {"objective": {"mask_ratio": 0.4}},
    "mask_60": {"objective": {"mask_ratio": 0.6}},
    # 1d / 1e: fine-tuning choices
    "ft_patch_embed_trained": {"finetune": {"freeze_patch_embed": False}},
    "ft_causal": {"finetune": {"attention": "causal"}},
    # appendix: GeLU instead of SwiGLU
    "gelu": {"model": {"mlp": "gelu"}},
}
ABLATION_TABLE = {
    "no_shift": "1a", "no_causal": "1a", "no_stop_grad": "1a",
    "plain_vit": "1b", "ls": "1b", "ls_rope": "1b", "ls_rope_swiglu": "1b", "ls_rope_qknorm": "1b",
    "mask_40": "1c", "mask_60": "1c", "ft_patch_embed_trained": "1d", "ft_causal": "1e",
}  # fmt: skip
