"""NEPA models, registered with timm: `timm.create_model("nepa_base_patch14_224", pretrained="x.safetensors")`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from timm.models import register_model

from nepa.config import SIZES
from nepa.errors import UserError
from nepa.models.nepa_vit import NepaConfig, NepaViT, PretrainOutput
from nepa.models.weights import load_model_file, save_model_file

__all__ = ["MODEL_SIZES", "NepaConfig", "NepaViT", "PretrainOutput", "create", "load_model_file", "save_model_file"]

# Architectures by timm name (nepa.config.SIZES: the one list of sizes, readable without torch).
MODEL_SIZES: dict[str, dict[str, Any]] = {size.timm_name: size.architecture for size in SIZES.values()}
# A fresh classifier may be missing from a pretrained file, and a file's classifier dropped.
HEAD_PREFIXES = ("head.", "fc_norm.")
TIMM_ONLY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def load_weights(model: NepaViT, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `model`; only the classification head may be missing or left over."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(HEAD_PREFIXES)]
    unexpected = [k for k in state if k not in own and not k.startswith(HEAD_PREFIXES)]
    wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise UserError(
            f"{source}: does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"wrong shape {wrong[:3]}); pass the model name the file was trained as"
        )
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def create(variant: str, pretrained: bool | str | Path = False, **kwargs: Any) -> NepaViT:
    """Build a registered NEPA model; `pretrained` is a local nepa safetensors path (nothing is downloaded).

    The file's architecture fields win over the name's defaults; explicit keyword arguments win over both
    (e.g. num_classes, causal, drop_path for fine-tuning).
    """
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    for key in TIMM_ONLY_KWARGS:
        kwargs.pop(key, None)
    fields = dict(MODEL_SIZES[variant])
    path = pretrained if isinstance(pretrained, (str, Path)) else overlay.get("file") if pretrained else None
    if pretrained and path is None:
        raise UserError(f"{variant}: pretrained=True needs a local file: pass pretrained='path/to/model.safetensors'")
    state = None
    if path is not None:
        state, file_fields, _ = load_model_file(path)
        known = {f.name for f in dataclasses.fields(NepaConfig)}
        if unknown := sorted(set(file_fields) - known):
            raise UserError(f"{path}: unknown config fields {unknown}; it was written by a newer nepa, upgrade nepa")
        fields.update(file_fields)
    fields.update(kwargs)
    model = NepaViT(NepaConfig(**fields))
    if state is not None:
        load_weights(model, state, str(path))
    return model


@register_model
def nepa_tiny_patch4_32(pretrained: bool | str | Path = False, **kwargs: Any) -> NepaViT:
    return create("nepa_tiny_patch4_32", pretrained, **kwargs)


@register_model
def nepa_small_patch14_224(pretrained: bool | str | Path = False, **kwargs: Any) -> NepaViT:
    return create("nepa_small_patch14_224", pretrained, **kwargs)


@register_model
def nepa_base_patch14_224(pretrained: bool | str | Path = False, **kwargs: Any) -> NepaViT:
    return create("nepa_base_patch14_224", pretrained, **kwargs)


@register_model
def nepa_large_patch14_224(pretrained: bool | str | Path = False, **kwargs: Any) -> NepaViT:
    return create("nepa_large_patch14_224", pretrained, **kwargs)
