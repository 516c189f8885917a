"""Model files: safetensors with the model's config in the header, so a file describes itself.

Loading never unpickles: safetensors holds tensors and strings only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from nepa.errors import UserError, require_file
from nepa.files import atomic_path, atomic_write_text
from nepa.models.nepa_vit import NepaConfig

CONFIG_KEY = "nepa_config"
LABELS_KEY = "label_names"  # a classifier's class names by output index (JSON), timm's pretrained-cfg name


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """A safetensors file written whole or not at all (nepa.files.atomic_path)."""
    with atomic_path(path) as tmp:
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        except SafetensorError as e:  # an I/O error, reported as "... (os error 28)": make it an OSError again
            if (code := re.search(r"os error (\d+)", str(e))) is None:
                raise
            raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from None


def save_model_file(state_dict: dict[str, torch.Tensor], cfg: NepaConfig, path: str | Path, **metadata: str) -> Path:
    path = Path(path)
    atomic_save_safetensors(state_dict, path, {CONFIG_KEY: json.dumps(dataclasses.asdict(cfg)), **metadata})
    return path


def load_model_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, str]]:
    """(state dict, config fields, all header metadata) of a nepa model file."""
    path = require_file(path, "model file", "pass the .safetensors written by `nepa export` or `nepa import-official`")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: not a readable safetensors file ({e}); re-export it with `nepa export`") from None
    if CONFIG_KEY not in metadata:
        fix = "convert official checkpoints with `nepa import-official`"
        raise UserError(f"{path}: no nepa config in the file header; {fix}")
    return tensors, json.loads(metadata[CONFIG_KEY]), metadata


def write_model_dir(
    folder: str | Path,
    state: dict[str, torch.Tensor],
    cfg: NepaConfig,
    label_names: list[str] | None = None,
    **card: str,
) -> Path:
    """A model folder: model.safetensors (config in its header), config.json, and a short model card.

    `card` entries (source, weights, step, data, params hash...) go into the card and the file header; a
    classifier's `label_names` into the header and config.json (timm's `pretrained_cfg["label_names"]` on load).
    """
    folder = Path(folder)
    config: dict[str, Any] = dataclasses.asdict(cfg)
    labels = {LABELS_KEY: json.dumps(label_names)} if label_names is not None else {}
    if label_names is not None:
        config[LABELS_KEY] = label_names
    save_model_file(state, cfg, folder / "model.safetensors", **labels, **card)
    atomic_write_text(folder / "config.json", json.dumps(config, indent=2) + "\n")
    lines = [f"# NEPA model ({cfg.embed_dim} wide, {cfg.depth} blocks, patch {cfg.patch_size})", ""]
    lines += [f"- {key}: {value}" for key, value in card.items()]
    lines += ["", "Load with `import nepa.models; timm.create_model(NAME, pretrained='model.safetensors')`.", ""]
    atomic_write_text(folder / "README.md", "\n".join(lines))
    return folder
