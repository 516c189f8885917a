"""AdamW parameter groups: weight decay on weight matrices only (timm's `param_groups_weight_decay`).

No decay on biases, norm weights and LayerScale gammas (1-D) nor on what the model names in `no_weight_decay()`
(cls and mask tokens), as in timm, MAE, BEiT and the paper. A task with its own groups (layer-wise lr decay)
splits them with `no_decay_names()` and may give each group an `lr_scale`: its lr is then peak lr x lr_scale.
"""

from __future__ import annotations

from typing import Any

from timm.optim import param_groups_weight_decay
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The trainable parameters in timm's groups, decayed first (the order nepa's checkpoints hold them in)."""
    named = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=tuple(named))
    return sorted(groups, key=lambda group: group["weight_decay"] == 0.0)


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of the trainable parameters `param_groups` does not decay."""
    undecayed = {id(p) for group in param_groups(model, 1.0) if group["weight_decay"] == 0.0 for p in group["params"]}
    return {name for name, p in model.named_parameters() if id(p) in undecayed}
