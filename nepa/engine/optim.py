"""AdamW parameter groups: weight decay on weight matrices only.

No decay on biases, norm weights and LayerScale gammas (all 1-D) nor on what the model names in
`no_weight_decay()` (cls and mask tokens), as in MAE, BEiT and the paper. A task with its own groups
(layer-wise lr decay) splits them with `no_decay_names()` and may give each group an `lr_scale`: its lr is
then peak lr x lr_scale.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def no_decay_names(model: nn.Module) -> set[str]:
    named = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    return {n for n, p in model.named_parameters() if p.ndim <= 1 or n in named}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    skip = no_decay_names(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if n not in skip], "weight_decay": weight_decay},
        {"params": [p for n, p in named if n in skip], "weight_decay": 0.0},
    ]
