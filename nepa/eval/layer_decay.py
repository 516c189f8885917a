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

from timm.models import group_parameters
from torch import nn

from nepa.engine.optim import no_decay_names


def layer_ids(model: nn.Module, prefix: str = "") -> dict[str, int]:
    """Parameter name -> layer id, for a NEPA ViT whose parameters are named `{prefix}patch_embed...`."""
    p = re.escape(prefix)
    matcher = {"stem": rf"^{p}(?:cls_token|mask_token|patch_embed)", "blocks": [(rf"^{p}blocks\.(\d+)", None)]}
    return group_parameters(model, matcher, reverse=True)  # unmatched names (norms, heads) -> the last id


def param_groups(model: nn.Module, weight_decay: float, prefix: str = "") -> list[dict[str, Any]]:
    """AdamW groups of the trainable parameters, one per (layer, decayed or not), each tagged with its
    `layer_id` and the model's `num_layers` for `lr_scale`. Weight decay as the engine's groups: none on
    1-D tensors (biases, norms, LayerScale) and on the model's `no_weight_decay()` names."""
    ids = layer_ids(model, prefix)
    num_layers = max(ids.values()) + 1
    skip = no_decay_names(model)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            decay = name not in skip
            key = (ids[name], decay)
            if key not in groups:
                groups[key] = {
                    "params": [],
                    "weight_decay": weight_decay if decay else 0.0,
                    "layer_id": ids[name],
                    "num_layers": num_layers,
                }
            groups[key]["params"].append(param)
    return [groups[key] for key in sorted(groups)]


def decay_at(start: float, progress: float, ramp: bool) -> float:
    """The decay rate at `progress` in [0, 1] of training: `start`, or rising linearly from it to 1.0."""
    return start + (1.0 - start) * min(max(progress, 0.0), 1.0) if ramp else start


def lr_scale(group: dict[str, Any], progress: float, *, start: float, ramp: bool) -> float:
    """A group's lr multiplier at `progress` of training: decay**(L - layer_id) (the engine's `Task.lr_scale`)."""
    return decay_at(start, progress, ramp) ** (group["num_layers"] - 1 - group["layer_id"])
