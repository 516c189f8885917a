"""NEPA models, registered with timm: `timm.create_model("nepa_base_patch14_224", pretrained="x.safetensors")`.

Each name carries a timm pretrained cfg (`model.pretrained_cfg`: input size, mean = std = 0.5, crop 0.875,
bicubic, no classes), so `timm.data.resolve_data_config(model=model)` gives NEPA's evaluation transform.
Nothing is downloaded: `pretrained` is a local nepa safetensors file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from nepa.config import SIZES
from nepa.errors import UserError
from nepa.models.nepa_vit import NepaConfig, NepaViT, PretrainOutput
from nepa.models.weights import load_model_file, save_model_file

__all__ = ["MODEL_SIZES", "NepaConfig", "NepaViT", "PretrainOutput", "create", "load_model_file", "save_model_file"]

# Architectures by timm name (nepa.config.SIZES: the one list of sizes, readable without torch).
MODEL_SIZES: dict[str, dict[str, Any]] = {size.timm_name: size.architecture for size in SIZES.values()}


def pretrained_cfg(img_size: int) -> dict[str, Any]:
    """What a NEPA model expects of its input: the official normalisation (mean = std = 0.5) and the paper's
    evaluation view (resize to img_size / 0.875, centre crop, bicubic); pretrained backbones have no classes."""
    return dict(
        input_size=(3, img_size, img_size),
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
    {name: pretrained_cfg(dims.get("img_size", 224)) for name, dims in MODEL_SIZES.items()}
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
    state = upgrade_state(state)
    own = model.state_dict()
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


def create(variant: str, pretrained: bool | str | Path = False, **kwargs: Any) -> NepaViT:
    """Build a registered NEPA model; `pretrained` is a local nepa safetensors path (nothing is downloaded).

    The file's architecture fields win over the name's defaults; explicit keyword arguments win over both
    (e.g. num_classes, causal, drop_path for fine-tuning).
    """
    cfg_arg, overlay = kwargs.pop("pretrained_cfg", None), dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    kwargs.pop("cache_dir", None)
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
        overlay["file"] = str(path)
    cfg = NepaConfig(**{**fields, **kwargs})
    overlay |= dict(input_size=(cfg.in_chans, cfg.img_size, cfg.img_size), num_classes=cfg.num_classes)
    model = build_model_with_cfg(
        NepaViT,
        variant,
        pretrained=False,
        pretrained_cfg=cfg_arg,
        pretrained_cfg_overlay=overlay,
        model_cfg=cfg,
        kwargs_filter=CFG_KWARGS,
    )
    if state is not None:
        load_weights(model, state, str(path))
    return model


def entrypoint(variant: str) -> Any:
    """timm's entrypoint for `variant`: timm.create_model(variant, ...) calls it."""

    def build(pretrained: bool | str | Path = False, **kwargs: Any) -> NepaViT:
        return create(variant, pretrained, **kwargs)

    build.__name__ = build.__qualname__ = variant
    return register_model(build)


for _variant in MODEL_SIZES:
    globals()[_variant] = entrypoint(_variant)
