"""Layer-wise learning-rate decay (BEiT/MAE) from timm, and the paper's ramp of the decay rate to 1.0.

The groups are timm's (`timm.optim.param_groups_layer_decay`, layers from the model's `group_matcher`): the patch
embedding and the CLS/mask tokens are layer 0, `blocks.i` is layer i+1, everything after the blocks (final norm,
fc_norm, head, or a segmentation head) is the last layer L; no weight decay on 1-D tensors (biases, norms,
LayerScale) and the model's `no_weight_decay()` names; each group's lr is the schedule's times its fixed
`lr_scale`, decay**(L - layer).

Written here, because timm lacks it: NEPA's Table 5 lets the decay rate itself rise linearly from its start value
(0.35 B, 0.60 L) to 1.0 over training, so the lower layers catch up with the head by the end. timm's groups keep
their scale but not their layer, so each is tagged with `layers_below_top` (L - layer, from the same
group_matcher), and the engine's moving `lr_scale` multiplies the fixed decay**(L - layer) by
(decay(t) / decay)**(L - layer): the group's lr follows decay(t)**(L - layer). Without the ramp (the official
scripts, BEiT, MAE) timm's fixed scales are all there is.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

from timm.models import group_parameters
from timm.optim import param_groups_layer_decay
from torch import nn


class LayerDecay(NamedTuple):
    """What a task gives the engine (nepa.engine.trainer.Task): the AdamW groups and their moving lr scale."""

    param_groups: list[dict[str, Any]]
    lr_scale: Callable[[dict[str, Any], float], float] | None  # (group, progress in [0, 1]) -> factor; None: fixed


def groups(model: nn.Module, weight_decay: float, decay: float, ramp: bool) -> LayerDecay:
    """timm's layer-decay groups of the trainable parameters of `model` (which has `group_matcher` and
    `no_weight_decay`), with the paper's ramp of `decay` to 1.0 over training where `ramp`."""
    timm_groups = param_groups_layer_decay(
        model, weight_decay, no_weight_decay_list=tuple(model.no_weight_decay()), layer_decay=decay
    )
    layers = group_parameters(model, model.group_matcher(coarse=False), reverse=True)  # the map timm grouped by
    top = max(layers.values())
    names = {id(p): name for name, p in model.named_parameters()}
    for group in timm_groups:
        group["layers_below_top"] = top - layers.get(names[id(group["params"][0])], top)
    return LayerDecay(timm_groups, functools.partial(ramp_scale, start=decay) if ramp else None)


def decay_at(start: float, progress: float) -> float:
    """The ramp's decay rate at `progress` in [0, 1] of training: rising linearly from `start` to 1.0."""
    return start + (1.0 - start) * min(max(progress, 0.0), 1.0)


def ramp_scale(group: dict[str, Any], progress: float, *, start: float) -> float:
    """The ramp's factor on a group's fixed scale start**n (n = layers below the top): the lr is decay(t)**n."""
    return (decay_at(start, progress) / start) ** group["layers_below_top"]
