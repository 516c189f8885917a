"""Layer-wise learning-rate decay (BEiT/MAE), and the paper's ramp of the decay rate to 1.0.

Layer ids follow timm's ViT grouping (`timm.models.group_parameters`): the patch embedding and the CLS/mask
tokens are layer 0, `blocks.i` is layer i+1, everything after the blocks (final norm, fc_norm, head, or a
segmentation head) is the last layer L. Group g's lr is lr(t) * decay**(L - layer_g).

NEPA's Table 5 lets the decay rate itself rise linearly from its start value (0.35 B, 0.60 L) to 1.0 over
training, so the lower layers catch up with the head by the end. timm has no such schedule, so
`decay_at` is written here; with `ramp=False` the rate stays fixed (the official scripts, BEiT, MAE).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from timm.models import group_parameters
from torch import nn


def layer_ids(model: nn.Module, prefix: str = "") -> dict[str, int]:
    """Parameter name -> layer id, for a NEPA ViT whose parameters are named `{prefix}patch_embed...`."""
    p = re.escape(prefix)
    matcher = {"stem": rf"^{p}(?:cls_token|mask_token|patch_embed)", "blocks": [(rf"^{p}blocks\.(\d+)", None)]}
    return group_parameters(model, matcher, reverse=True)  # unmatched names (norms, heads) -> the last id


def param_groups(
    model: nn.Module, weight_decay: float, no_weight_decay: set[str] = frozenset(), prefix: str = ""
) -> list[dict[str, Any]]:
    """AdamW groups per (layer, decayed or not) over the trainable parameters, each tagged with its `layer_id`
    and the model's `num_layers` for `apply_layer_decay`. No weight decay on 1-D tensors (biases, norms,
    LayerScale) and on `no_weight_decay` names, as timm."""
    ids = layer_ids(model, prefix)
    num_layers = max(ids.values()) + 1
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = param.ndim > 1 and name not in no_weight_decay
        group = groups.setdefault(
            (ids[name], decay),
            {
                "params": [],
                "weight_decay": weight_decay if decay else 0.0,
                "layer_id": ids[name],
                "num_layers": num_layers,
            },
        )
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]


def decay_at(start: float, progress: float, ramp: bool) -> float:
    """The decay rate at `progress` in [0, 1] of training: `start`, or rising linearly from it to 1.0."""
    return start + (1.0 - start) * min(max(progress, 0.0), 1.0) if ramp else start


def apply_layer_decay(optimizer: torch.optim.Optimizer, lr: float, decay: float) -> None:
    """Set each group's lr to lr * decay**(L - layer_id)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * decay ** (group["num_layers"] - 1 - group["layer_id"])
