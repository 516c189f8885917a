"""NEPA models, registered with timm: `timm.create_model("nepa_base_patch14_224", pretrained="x.safetensors")`.

Each name carries a timm pretrained cfg (`model.pretrained_cfg`: input size, mean = std = 0.5, crop 0.875,
bicubic, no classes; a classifier file's class names as `label_names`), so
`timm.data.resolve_data_config(model=model)` gives NEPA's evaluation transform. Nothing is downloaded:
`pretrained` is a local nepa safetensors file. timm's builder arguments work as for its own ViTs:
`features_only=True` (+ `out_indices`, default the last 3 blocks), `global_pool`, `device`, `dtype`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from nepa.config import SIZES
from nepa.errors import UserError
from nepa.models.nepa_vit import GLOBAL_POOLS, NepaConfig, NepaViT, PretrainOutput
from nepa.models.weights import LABELS_KEY, load_model_file, save_model_file

__all__ = ["MODEL_SIZES", "NepaConfig", "NepaViT", "PretrainOutput", "create", "load_model_file", "save_model_file"]

# Architectures by timm name (nepa.config.SIZES: the one list of sizes, readable without torch).
MODEL_SIZES: dict[str, dict[str, Any]] = {size.timm_name: size.architecture for size in SIZES.values()}


def pretrained_cfg(img_size: int, patch_size: int) -> dict[str, Any]:
    """What a NEPA model expects of its input: the official normalisation (mean = std = 0.5) and the paper's
    evaluation view (resize to img_size / 0.875, centre crop, bicubic); pretrained backbones have no classes.

    Sizes: RoPE is the only position code, so any input whose sides are multiples of the patch size works (not
    fixed); min_input_size is the smallest sensible square grid, 8 x 8 patches (a 2 x 2 max-pooled pyramid level
    still 4 x 4), as timm's RoPE patch-14 models state theirs: a plain min(size, target) shrink (timm's test
    harness) would not land on a multiple of 14.
    """
    return dict(
        input_size=(3, img_size, img_size),
        fixed_input_size=False,
        min_input_size=(3, min(8 * patch_size, img_size), min(8 * patch_size, img_size)),
        pool_size=None,
        crop_pct=0.875,
        interpolation="bicubic",
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        num_classes=0,
        first_conv="patch_embed",
        classifier="head",
        license="apache-2.0",
        paper_name="Next-Embedding Prediction Makes Strong Vision Learners",
        paper_ids="arXiv:2512.16922",
        origin_url="https://github.com/SihanXU/nepa",
    )


default_cfgs = generate_default_cfgs(
    {name: pretrained_cfg(dims.get("img_size", 224), dims.get("patch_size", 14)) for name, dims in MODEL_SIZES.items()}
)
# A fresh classifier may be missing from a pretrained file, and a file's classifier dropped.
HEAD_PREFIXES = ("head.", "fc_norm.")
# build_model_with_cfg passes these from the pretrained cfg to the model; NepaConfig carries them instead.
CFG_KWARGS = ("num_classes", "in_chans", "global_pool", "img_size")


def upgrade_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Files written before the MLPs came from timm named SwiGLU's layers `gate` / `fc1` (timm: fc1_g / fc1_x)."""
    if not any(".mlp.gate." in k for k in state):
        return state
    return {k.replace(".mlp.gate.", ".mlp.fc1_g.").replace(".mlp.fc1.", ".mlp.fc1_x."): v for k, v in state.items()}


def load_weights(model: NepaViT, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `model`; only the classification head may be missing or left over."""
    own, state = model.state_dict(), upgrade_state(state)
    # the file's head where the caller asked for another class count: dropped, as timm drops a pretrained classifier
    new_head = {k for k in state if k.startswith(HEAD_PREFIXES) and k in own and own[k].shape != state[k].shape}
    state = {k: v for k, v in state.items() if k not in new_head}
    missing = [k for k in own if k not in state and not k.startswith(HEAD_PREFIXES)]
    unexpected = [k for k in state if k not in own and not k.startswith(HEAD_PREFIXES)]
    wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
    # The architecture comes from the file's own header, so a misfit means the file's tensors and header disagree.
    fix = "the file is damaged or was edited: export it again (`nepa export`, `nepa import-official`)"
    if wrong:
        k = wrong[0]
        raise UserError(
            f"{source}: tensor {k} is {list(state[k].shape)} in the file, but the model its header describes "
            f"has {list(own[k].shape)}" + (f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else "") + f"; {fix}"
        )
    if missing or unexpected:
        raise UserError(
            f"{source}: does not fit the model its header describes (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); {fix}"
        )
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


# timm's builder takes these (a feature extractor instead of the model); the rest are NepaConfig fields.
BUILDER_KWARGS = ("features_only", "out_indices", "feature_cls")


def build(cfg: NepaConfig, state: dict[str, torch.Tensor] | None = None, source: str = "") -> NepaViT:
    """The model of `cfg`, with `state` loaded: what timm's builder builds (and may wrap as a feature extractor)."""
    model = NepaViT(cfg)
    if state is not None:
        load_weights(model, state, source)
    return model


def create(variant: str, pretrained: bool | str | Path = False, **kwargs: Any) -> nn.Module:
    """Build a registered NEPA model; `pretrained` is a local nepa safetensors path (nothing is downloaded).

    The file's architecture fields win over the name's defaults; explicit keyword arguments win over both
    (e.g. num_classes, causal, drop_path for fine-tuning; timm's global_pool).
    """
    cfg_arg, overlay = kwargs.pop("pretrained_cfg", None), dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    kwargs.pop("cache_dir", None)
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    builder = {k: kwargs.pop(k) for k in BUILDER_KWARGS if k in kwargs}
    if "global_pool" in kwargs:
        pool = kwargs.pop("global_pool")
        if pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool {pool!r} is not one of {sorted(GLOBAL_POOLS)}")
        kwargs["pooling"] = GLOBAL_POOLS[pool]
    fields = dict(MODEL_SIZES[variant])
    path = pretrained if isinstance(pretrained, (str, Path)) else overlay.get("file") if pretrained else None
    if pretrained and path is None:
        raise UserError(f"{variant}: pretrained=True needs a local file: pass pretrained='path/to/model.safetensors'")
    state, label_names = None, None
    if path is not None:
        state, file_fields, metadata = load_model_file(path)
        known = {f.name for f in dataclasses.fields(NepaConfig)}
        if unknown := sorted(set(file_fields) - known):
            raise UserError(f"{path}: unknown config fields {unknown}; it was written by a newer nepa, upgrade nepa")
        fields.update(file_fields)
        overlay["file"] = str(path)
        label_names = json.loads(metadata[LABELS_KEY]) if LABELS_KEY in metadata else None
    cfg = NepaConfig(**{**fields, **kwargs})
    smallest = min(8 * cfg.patch_size, cfg.img_size)
    overlay |= dict(
        input_size=(cfg.in_chans, cfg.img_size, cfg.img_size),
        min_input_size=(cfg.in_chans, smallest, smallest),
        num_classes=cfg.num_classes,
        label_names=tuple(label_names) if label_names and len(label_names) == cfg.num_classes else None,
    )
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = build_model_with_cfg(
            functools.partial(build, state=state, source=str(path)),
            variant,
            pretrained=False,
            pretrained_cfg=cfg_arg,
            pretrained_cfg_overlay=overlay,
            model_cfg=cfg,
            feature_cfg=dict(out_indices=3, feature_cls="getter"),  # as timm's ViTs: the last 3 blocks
            kwargs_filter=CFG_KWARGS,
            **builder,
        )
    return model.to(dtype=dtype) if dtype is not None else model


def entrypoint(variant: str) -> Any:
    """timm's entrypoint for `variant`: timm.create_model(variant, ...) calls it."""

    def entry(pretrained: bool | str | Path = False, **kwargs: Any) -> nn.Module:
        return create(variant, pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = variant
    return register_model(entry)


for _variant in MODEL_SIZES:
    globals()[_variant] = entrypoint(_variant)
