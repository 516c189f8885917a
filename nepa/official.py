"""Convert between nepa model files and the official release layout (SixAILab on Hugging Face).

Official layout: a folder with `config.json` (`model_type: vit_nepa`) and `model.safetensors` with keys
`vit_nepa.*` (ViTNepaForPreTraining; plus `fc_norm.*` / `classifier.*` and `id2label` for
ViTNepaForImageClassification), or the same keys without the `vit_nepa.` prefix (a bare ViTNepaModel, as
transformers saves a base model). Every config field that changes the computation is mapped to a `NepaConfig`
field or refused; fields that only describe the file (versions, init range) are ignored, and a classifier's
label names (`id2label`) travel with it.

`nepa import-official DIR OUT` converts a released checkpoint into a nepa model folder.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from nepa.errors import UserError, require_file
from nepa.models import NepaConfig
from nepa.models.weights import atomic_save_safetensors, write_model_dir

# official config field -> NepaConfig field, for fields that carry over as they are
SAME_MEANING = {
    "image_size": "img_size",
    "patch_size": "patch_size",
    "num_channels": "in_chans",
    "hidden_size": "embed_dim",
    "num_hidden_layers": "depth",
    "num_attention_heads": "num_heads",
    "intermediate_size": "mlp_hidden_dim",
    "use_gated_mlp": "mlp_gated",
    "qkv_bias": "qkv_bias",
    "qk_norm": "qk_norm",
    "qk_norm_affine": "qk_norm_affine",
    "qk_norm_bias": "qk_norm_bias",
    "layerscale_value": "layerscale_init",
    "rope_theta": "rope_theta",
    "pos_embed_shift": "rope_shift",
    "pos_embed_jitter": "rope_jitter",
    "pos_embed_rescale": "rope_rescale",
    "layer_norm_eps": "norm_eps",
    "is_causal": "causal",
    "drop_path_prob": "drop_path",
    "hidden_dropout_prob": "proj_drop",
    "attention_probs_dropout_prob": "attn_drop",
}
# transformers ACT2FN names -> ours (gelu_new/gelu_fast are the tanh approximation too)
ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "silu": "silu",
    "swish": "silu",
    "relu": "relu",
}
DESCRIPTIVE = {
    "architectures",
    "dtype",
    "torch_dtype",
    "initializer_range",
    "model_type",
    "transformers_version",
    "id2label",
    "label2id",
    "problem_type",
    "num_labels",
    "add_pooling_layer",
    "hidden_act",
    "num_prompt_token",
}

# official key <-> our key, as templates: {i} a block index, {p} weight|bias, {n} q_norm|k_norm.
# query/key/value are fused into our qkv separately (QKV below).
KEY_MAP = [
    ("vit_nepa.embeddings.cls_token", "cls_token"),
    ("vit_nepa.embeddings.mask_token", "mask_token"),
    ("vit_nepa.embeddings.patch_embeddings.projection.{p}", "patch_embed.{p}"),
    ("vit_nepa.encoder.layer.{i}.layernorm_before.{p}", "blocks.{i}.norm1.{p}"),
    ("vit_nepa.encoder.layer.{i}.layernorm_after.{p}", "blocks.{i}.norm2.{p}"),
    ("vit_nepa.encoder.layer.{i}.attention.attention.{n}.{p}", "blocks.{i}.attn.{n}.{p}"),
    ("vit_nepa.encoder.layer.{i}.attention.output.dense.{p}", "blocks.{i}.attn.proj.{p}"),
    ("vit_nepa.encoder.layer.{i}.intermediate.up_proj.{p}", "blocks.{i}.mlp.fc1.{p}"),
    ("vit_nepa.encoder.layer.{i}.intermediate.up_proj.{p}", "blocks.{i}.mlp.fc1_x.{p}"),  # gated (timm SwiGLU)
    ("vit_nepa.encoder.layer.{i}.intermediate.gate_proj.{p}", "blocks.{i}.mlp.fc1_g.{p}"),
    ("vit_nepa.encoder.layer.{i}.output.dense.{p}", "blocks.{i}.mlp.fc2.{p}"),
    ("vit_nepa.encoder.layer.{i}.layer_scale.lambda1", "blocks.{i}.ls1.gamma"),
    ("vit_nepa.encoder.layer.{i}.output.layer_scale.lambda1", "blocks.{i}.ls2.gamma"),
    ("vit_nepa.layernorm.{p}", "norm.{p}"),
    ("fc_norm.{p}", "fc_norm.{p}"),
    ("classifier.{p}", "head.{p}"),
]
PLACEHOLDERS = {"i": r"\d+", "p": "weight|bias", "n": "q_norm|k_norm"}
BASE_PREFIX = "vit_nepa."  # transformers' base_model_prefix: the trunk's keys inside a task model
QKV_OFFICIAL = "vit_nepa.encoder.layer.{i}.attention.attention.{part}.{p}"
QKV_ORDER = ("query", "key", "value")


def _pattern(template: str) -> re.Pattern[str]:
    regex = re.escape(template)
    for name, alternatives in PLACEHOLDERS.items():
        regex = regex.replace(re.escape(f"{{{name}}}"), f"(?P<{name}>{alternatives})")
    return re.compile(regex)


TO_OURS = [(_pattern(theirs), ours) for theirs, ours in KEY_MAP]
TO_OFFICIAL = [(_pattern(ours), theirs) for theirs, ours in KEY_MAP]
QKV_IN = re.compile(
    r"vit_nepa\.encoder\.layer\.(?P<i>\d+)\.attention\.attention\.(?P<part>query|key|value)\.(?P<p>weight|bias)"
)
QKV_OUT = re.compile(r"blocks\.(?P<i>\d+)\.attn\.qkv\.(?P<p>weight|bias)")


def translate(key: str, table: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, template in table:
        if m := pattern.fullmatch(key):
            return template.format(**m.groupdict())
    return None


def config_from_official(official: dict[str, Any], source: str) -> NepaConfig:
    if official.get("model_type") != "vit_nepa":
        found = official.get("model_type")
        raise UserError(f"{source}: model_type is {found!r}, not 'vit_nepa'; pass a NEPA checkpoint")
    unknown = sorted(set(official) - set(SAME_MEANING) - DESCRIPTIVE)
    if unknown:
        raise UserError(f"{source}: config fields nepa does not know {unknown}; they may change the model, so it stops")
    if official.get("num_prompt_token", 0):
        raise UserError(f"{source}: num_prompt_token={official['num_prompt_token']} is not supported (prompt tokens)")
    act = official.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise UserError(f"{source}: hidden_act {act!r} is not supported; use one of {sorted(ACTIVATIONS)}")
    fields = {ours: official[theirs] for theirs, ours in SAME_MEANING.items() if theirs in official}
    fields["mlp_act"] = ACTIVATIONS[act]
    fields["pooling"] = "mean" if official.get("add_pooling_layer", True) else "last"
    fields["drop_path"] = fields.get("drop_path") or 0.0
    return NepaConfig(**fields)


def state_from_official(tensors: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    if not any(key.startswith(BASE_PREFIX) for key in tensors):  # a bare ViTNepaModel: the base model's own keys
        tensors = {BASE_PREFIX + key: value for key, value in tensors.items()}
    state: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if m := QKV_IN.fullmatch(key):
            qkv.setdefault((m["i"], m["p"]), {})[m["part"]] = value
        elif (ours := translate(key, TO_OURS)) is not None:
            state[ours] = value
        else:
            raise UserError(f"{source}: unknown tensor {key!r}; is this a vit_nepa checkpoint?")
    for (block, kind), parts in qkv.items():
        state[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts[p] for p in QKV_ORDER])
    if any(".mlp.fc1_g." in key for key in state):  # gated: up_proj is the SwiGLU's fc1_x
        state = {key.replace(".mlp.fc1.", ".mlp.fc1_x."): value for key, value in state.items()}
    return state


FIX = "pass the folder of a released checkpoint (config.json + model.safetensors)"


def read_config(folder: Path) -> tuple[Path, dict[str, Any]]:
    config_path = require_file(folder / "config.json", "official config", FIX)
    try:
        return config_path, json.loads(config_path.read_text())
    except (json.JSONDecodeError, OSError) as e:
        raise UserError(f"{config_path}: unreadable ({e}); download the checkpoint again") from None


def read_official(folder: str | Path) -> tuple[dict[str, torch.Tensor], NepaConfig]:
    folder = Path(folder)
    config_path, official = read_config(folder)
    weights_path = require_file(folder / "model.safetensors", "official weights", FIX)
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{weights_path}: unreadable ({e}); download the checkpoint again") from None
    cfg = config_from_official(official, str(config_path))
    state = state_from_official(tensors, str(weights_path))
    if "head.weight" in state:
        cfg.num_classes = state["head.weight"].shape[0]
    cfg.mask_token = "mask_token" in state
    return state, cfg


def label_names_of(folder: str | Path, num_classes: int) -> list[str] | None:
    """A classifier's label names by output index (config.json's id2label), or None (a backbone, or no id2label)."""
    config_path, official = read_config(Path(folder))
    id2label = official.get("id2label")
    if not num_classes or not id2label:
        return None
    if set(id2label) != {str(i) for i in range(num_classes)}:
        raise UserError(
            f"{config_path}: id2label does not name the classifier's {num_classes} outputs 0..{num_classes - 1}"
        )
    return [id2label[str(i)] for i in range(num_classes)]


# ---- back to the official layout ----------------------------------------------------------------


def config_to_official(cfg: NepaConfig, label_names: list[str] | None = None) -> dict[str, Any]:
    if not cfg.rope or not cfg.layerscale_init:
        raise UserError("the official layout always has RoPE and LayerScale; this model (an ablation) has not")
    if not cfg.pooling:
        raise UserError("the official layout pools (mean or last token); this model has no pooling")
    official: dict[str, Any] = {theirs: getattr(cfg, ours) for theirs, ours in SAME_MEANING.items()}
    official["hidden_act"] = {"gelu_tanh": "gelu_pytorch_tanh"}.get(cfg.mlp_act, cfg.mlp_act)
    official["add_pooling_layer"] = cfg.pooling == "mean"
    official["num_prompt_token"] = 0
    official["model_type"] = "vit_nepa"
    official["architectures"] = ["ViTNepaForImageClassification" if cfg.num_classes else "ViTNepaForPreTraining"]
    if cfg.num_classes:  # transformers' defaults where the names are unknown
        names = label_names or [f"LABEL_{i}" for i in range(cfg.num_classes)]
        official["id2label"] = {str(i): name for i, name in enumerate(names)}
        official["label2id"] = {name: i for i, name in enumerate(names)}
    return official


def state_to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if m := QKV_OUT.fullmatch(key):
            for part, chunk in zip(QKV_ORDER, value.chunk(3), strict=True):
                out[QKV_OFFICIAL.format(i=m["i"], part=part, p=m["p"])] = chunk
        elif key == "mask_token":  # pretraining-only; the official model has no slot for it
            continue
        elif (theirs := translate(key, TO_OFFICIAL)) is not None:
            out[theirs] = value
        else:
            raise UserError(f"model tensor {key!r} has no place in the official layout")
    return out


def write_official(
    state: dict[str, torch.Tensor], cfg: NepaConfig, folder: str | Path, label_names: list[str] | None = None
) -> Path:
    folder = Path(folder)
    official = config_to_official(cfg, label_names)
    atomic_save_safetensors(state_to_official(state), folder / "model.safetensors", {"format": "pt"})
    (folder / "config.json").write_text(json.dumps(official, indent=2, sort_keys=True) + "\n")
    return folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", type=Path, help="folder with the official config.json and model.safetensors")
    parser.add_argument("out", type=Path, help="output folder: model.safetensors + config.json + README.md")


def main(args: argparse.Namespace) -> int:
    """`nepa import-official DIR OUT`."""
    state, cfg = read_official(args.src)
    labels = label_names_of(args.src, cfg.num_classes)
    source = f"official checkpoint {args.src.resolve()}"
    write_model_dir(args.out, state, cfg, label_names=labels, source=source, weights="as released")
    print(f"wrote {args.out / 'model.safetensors'} ({sum(v.numel() for v in state.values()):,} parameters)")
    return 0
