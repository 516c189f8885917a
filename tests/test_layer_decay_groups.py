"""Layer-wise lr decay's parameter groups against a snapshot of the groups nepa built before it took them from
timm (`timm.optim.param_groups_layer_decay`): the same parameters in each group, the same weight decay, the same
lr multiplier at every point of training (fixed decay and the paper's ramp), for classifiers and a UperNet. The
snapshot was written by the hand-written grouping (commit 77c8192), whose multiplier was the engine's moving
lr_scale alone; timm's groups carry a fixed `lr_scale` the engine applies first, and the ramp's factor on it.

    python tests/test_layer_decay_groups.py     # rewrites tests/snapshots/layer_decay_groups.json
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from nepa.config import SIZES
from nepa.eval import layer_decay
from nepa.eval.finetune import learnable_qk_norm
from nepa.eval.upernet import UperNet
from nepa.models import NepaConfig, NepaViT

SNAPSHOT = Path(__file__).parent / "snapshots" / "layer_decay_groups.json"
PROGRESS = (0.0, 0.3, 1.0)
TINY = SIZES["tiny"].architecture


def classifier(**overrides: Any) -> NepaViT:
    model = NepaViT(NepaConfig(**{**TINY, "num_classes": 10, **overrides}))
    model.patch_embed.requires_grad_(False)  # as fine-tuning freezes it
    return model


def learnable_qk(model: NepaViT) -> NepaViT:
    learnable_qk_norm(model)
    return model


MODELS: dict[str, Callable[[], nn.Module]] = {
    "classifier": classifier,
    "classifier_last_token_mask_token": lambda: classifier(pooling="last", mask_token=True),
    "classifier_learnable_qk_norm": lambda: learnable_qk(classifier()),
    "upernet": lambda: UperNet(NepaViT(NepaConfig(**TINY, causal=False)), (1, 2, 3, 5), channels=16, num_classes=7),
}
# (model, layer decay start, ramp): the paper's fine-tuning, the official one, the segmentation
CASES = [
    ("classifier", 0.35, True),
    ("classifier", 0.65, False),
    ("classifier_last_token_mask_token", 0.35, True),
    ("classifier_learnable_qk_norm", 0.65, False),
    ("upernet", 0.65, False),
]


def groups_of(model: nn.Module, start: float, ramp: bool) -> list[dict[str, Any]]:
    """The groups as the engine uses them: parameter names, weight decay, and the lr multiplier at PROGRESS
    (the group's fixed `lr_scale` times the task's moving scale, as nepa.engine.trainer applies them)."""
    decay = layer_decay.groups(model, 0.05, start, ramp=ramp)
    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    for group in decay.param_groups:
        lr = [group.get("lr_scale", 1.0) * (decay.lr_scale(group, p) if decay.lr_scale else 1.0) for p in PROGRESS]
        out.append({"params": [names[id(p)] for p in group["params"]], "weight_decay": group["weight_decay"], "lr": lr})
    return out


def snapshot() -> dict[str, list[dict[str, Any]]]:
    torch.manual_seed(0)
    return {f"{name} {start} ramp={ramp}": groups_of(MODELS[name](), start, ramp) for name, start, ramp in CASES}


def canonical(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Order-free: each group with its names sorted, the groups sorted by their first name."""
    return sorted(({**g, "params": sorted(g["params"])} for g in groups), key=lambda g: g["params"][0])


@pytest.mark.parametrize("case", [f"{n} {s} ramp={r}" for n, s, r in CASES])
def test_layer_decay_groups_equal_the_snapshot(case: str) -> None:
    expected = canonical(json.loads(SNAPSHOT.read_text())[case])
    got = canonical(snapshot()[case])
    assert [g["params"] for g in got] == [g["params"] for g in expected]
    assert [g["weight_decay"] for g in got] == [g["weight_decay"] for g in expected]
    for g, e in zip(got, expected, strict=True):
        assert g["lr"] == pytest.approx(e["lr"], rel=1e-12), g["params"][0]


if __name__ == "__main__":
    SNAPSHOT.write_text(json.dumps(snapshot(), indent=1) + "\n")
    sys.exit(0)
