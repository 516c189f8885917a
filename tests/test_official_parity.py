"""The importer reproduces the official implementation's outputs (golden fixture from SihanXU/nepa @15ea494),
and every official config field that changes the math reaches the model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import nepa.models  # noqa: F401  (registers the timm names)
from nepa.cli import main as nepa_main
from nepa.models import NepaViT
from nepa.objectives import next_embedding_loss
from nepa.official import read_official, write_official

FIXTURE = Path(__file__).parent / "fixtures" / "official_vit_nepa_pretrain"
ATOL = 1e-5


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "expected.safetensors"))


def test_import_official_matches_golden_outputs(tmp_path: Path, expected: dict[str, torch.Tensor]) -> None:
    assert nepa_main(["import-official", str(FIXTURE), str(tmp_path / "imported")]) == 0
    # the tiny fixture architecture is not a registered size: the file's config defines it
    model = timm.create_model("nepa_base_patch14_224", pretrained=str(tmp_path / "imported" / "model.safetensors"))
    model.eval()
    with torch.no_grad():
        pred, target = model.forward_pretrain(expected["pixel_values"])
    torch.testing.assert_close(target, expected["input_embedding"], atol=ATOL, rtol=0)
    torch.testing.assert_close(pred, expected["last_hidden_state"], atol=ATOL, rtol=0)
    torch.testing.assert_close(next_embedding_loss(pred, target).reshape(1), expected["loss"], atol=ATOL, rtol=0)


def test_export_official_round_trip(tmp_path: Path, expected: dict[str, torch.Tensor]) -> None:
    state, cfg = read_official(FIXTURE)
    write_official(state, cfg, tmp_path)
    original = load_file(str(FIXTURE / "model.safetensors"))
    written = load_file(str(tmp_path / "model.safetensors"))
    assert written.keys() == original.keys()
    for key in original:
        torch.testing.assert_close(written[key], original[key], atol=0, rtol=0)
    fields = json.loads((FIXTURE / "config.json").read_text())
    round_trip = json.loads((tmp_path / "config.json").read_text())
    for key in ("hidden_size", "is_causal", "qk_norm_affine", "use_gated_mlp", "layerscale_value", "rope_theta"):
        assert round_trip[key] == fields[key]


def _with_config(tmp_path: Path, name: str, **changes: object) -> Path:
    """A copy of the fixture with config fields changed and, where the weights need it, tensors added."""
    folder = tmp_path / name
    shutil.copytree(FIXTURE, folder)
    fields = json.loads((folder / "config.json").read_text())
    fields.update(changes)
    (folder / "config.json").write_text(json.dumps(fields))
    tensors = load_file(str(folder / "model.safetensors"))
    generator = torch.Generator().manual_seed(0)
    for key in list(tensors):
        if changes.get("use_gated_mlp") and key.endswith("intermediate.up_proj.weight"):
            tensors[key.replace("up_proj", "gate_proj")] = torch.randn(tensors[key].shape, generator=generator) * 0.1
            bias = key.replace("up_proj.weight", "gate_proj.bias")
            tensors[bias] = torch.zeros(tensors[key].shape[0])
        if changes.get("qk_norm_affine") and key.endswith("attention.attention.query.weight"):
            for norm in ("q_norm", "k_norm"):
                tensors[key.replace("query.weight", f"{norm}.weight")] = 1 + torch.rand(24, generator=generator)
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def _outputs(folder: Path, pixels: torch.Tensor) -> torch.Tensor:
    state, cfg = read_official(folder)
    cfg.num_classes = cfg.num_classes or 5
    model = NepaViT(cfg).eval()
    torch.manual_seed(0)
    model.reset_classifier(5, zero_init=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(key.startswith(("head.", "fc_norm.")) for key in missing), (missing, unexpected)
    with torch.no_grad():
        return torch.cat([model.forward_features(pixels).flatten(1), model(pixels)], dim=1)


@pytest.mark.parametrize(
    ("changes", "field", "value"),
    [
        (dict(use_gated_mlp=True, hidden_act="silu"), "mlp_gated", True),
        (dict(hidden_act="gelu_pytorch_tanh"), "mlp_act", "gelu_tanh"),
        (dict(qk_norm_affine=True), "qk_norm_affine", True),
        (dict(is_causal=False), "causal", False),
        (dict(add_pooling_layer=False), "pooling", "last"),
        (dict(layerscale_value=0.5), "layerscale_init", 0.5),
        (dict(layer_norm_eps=1.0), "norm_eps", 1.0),
        (dict(rope_theta=10000.0), "rope_theta", 10000.0),
    ],
)
def test_every_math_field_is_honoured(
    tmp_path: Path, expected: dict[str, torch.Tensor], changes: dict, field: str, value: object
) -> None:
    folder = _with_config(tmp_path, field, **changes)
    _, cfg = read_official(folder)
    assert getattr(cfg, field) == value
    if field == "layerscale_init":  # the init value only matters for new weights: the checkpoint holds lambdas
        return
    pixels = expected["pixel_values"]
    # tanh-GeLU moves outputs by ~1e-5 only; anything ignored would move them by exactly 0
    assert (_outputs(folder, pixels) - _outputs(FIXTURE, pixels)).abs().max() > 1e-6


def test_gated_checkpoint_round_trips(tmp_path: Path) -> None:
    """SwiGLU's up_proj / gate_proj land in timm's fc1_x / fc1_g and go back to their official names."""
    folder = _with_config(tmp_path, "gated", use_gated_mlp=True, hidden_act="silu")
    state, cfg = read_official(folder)
    assert {"blocks.0.mlp.fc1_x.weight", "blocks.0.mlp.fc1_g.weight"} <= set(state)
    NepaViT(cfg).load_state_dict(state)  # strict
    write_official(state, cfg, tmp_path / "out")
    original = load_file(str(folder / "model.safetensors"))
    written = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert written.keys() == original.keys()
    assert all(torch.equal(written[key], original[key]) for key in original)


def test_classification_variant_imports_head(tmp_path: Path, expected: dict[str, torch.Tensor]) -> None:
    folder = _with_config(tmp_path, "sft", architectures=["ViTNepaForImageClassification"], num_labels=7)
    tensors = load_file(str(folder / "model.safetensors"))
    tensors |= {"fc_norm.weight": torch.ones(96), "fc_norm.bias": torch.zeros(96)}
    tensors |= {"classifier.weight": torch.randn(7, 96), "classifier.bias": torch.zeros(7)}
    save_file(tensors, str(folder / "model.safetensors"))
    state, cfg = read_official(folder)
    assert cfg.num_classes == 7 and cfg.pooling == "mean"
    model = NepaViT(cfg)
    model.load_state_dict(state)  # strict: head and fc_norm land in their places
    torch.testing.assert_close(model.head.weight, tensors["classifier.weight"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(model_type="vit"), "model_type"),
        (dict(brand_new_field=3), "brand_new_field"),
        (dict(hidden_act="mish"), "hidden_act"),
    ],
)
def test_unsupported_checkpoints_are_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict, message: str
) -> None:
    folder = _with_config(tmp_path, "bad", **change)
    assert nepa_main(["import-official", str(folder), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "config.json" in err and "\n" not in err


def test_a_bare_vit_nepa_model_imports(tmp_path: Path, expected: dict[str, torch.Tensor]) -> None:
    """transformers saves a base ViTNepaModel without the `vit_nepa.` prefix (and without a head)."""
    folder = _with_config(tmp_path, "bare", architectures=["ViTNepaModel"])
    tensors = load_file(str(folder / "model.safetensors"))
    save_file({k.removeprefix("vit_nepa."): v for k, v in tensors.items()}, str(folder / "model.safetensors"))
    assert "embeddings.cls_token" in load_file(str(folder / "model.safetensors"))
    assert nepa_main(["import-official", str(folder), str(tmp_path / "imported")]) == 0
    model = timm.create_model("nepa_base_patch14_224", pretrained=str(tmp_path / "imported" / "model.safetensors"))
    with torch.no_grad():
        pred, target = model.eval().forward_pretrain(expected["pixel_values"])
    torch.testing.assert_close(target, expected["input_embedding"], atol=ATOL, rtol=0)
    torch.testing.assert_close(pred, expected["last_hidden_state"], atol=ATOL, rtol=0)


def test_a_classifier_round_trips_through_the_official_layout(
    tmp_path: Path, expected: dict[str, torch.Tensor]
) -> None:
    """nepa -> ViTNepaForImageClassification layout -> nepa: the same tensors, names and logits; and the logits are
    what the official classifier computes from the official trunk's output (the golden last_hidden_state): the mean
    of the last (image_size / patch)**2 tokens -> fc_norm -> classifier."""
    state, cfg = read_official(FIXTURE)
    cfg.num_classes, cfg.causal = 3, False  # as a bidirectional fine-tune leaves it
    model = NepaViT(cfg).eval()
    torch.manual_seed(0)
    model.load_state_dict(state, strict=False)
    with torch.no_grad():
        model.fc_norm.weight.uniform_(0.5, 1.5)
        model.head.bias.uniform_(-1, 1)
    names = ["cat", "dog", "owl"]
    write_official(model.state_dict(), model.cfg, tmp_path / "official", label_names=names)
    config = json.loads((tmp_path / "official" / "config.json").read_text())
    assert config["architectures"] == ["ViTNepaForImageClassification"] and config["id2label"]["2"] == "owl"
    written = load_file(str(tmp_path / "official" / "model.safetensors"))
    original = load_file(str(FIXTURE / "model.safetensors"))
    assert all(torch.equal(written[k], original[k]) for k in original)  # the trunk as released
    assert {k for k in written if k not in original} == {
        "fc_norm.weight",
        "fc_norm.bias",
        "classifier.weight",
        "classifier.bias",
    }
    assert nepa_main(["import-official", str(tmp_path / "official"), str(tmp_path / "back")]) == 0
    back = timm.create_model("nepa_base_patch14_224", pretrained=str(tmp_path / "back" / "model.safetensors")).eval()
    assert back.pretrained_cfg["label_names"] == tuple(names) and back.cfg == model.cfg
    pixels = expected["pixel_values"]
    with torch.no_grad():
        logits = model(pixels)
        torch.testing.assert_close(back(pixels), logits, atol=1e-5, rtol=0)
        # the official ViTNepaForImageClassification on the official trunk's (causal) output, against ours, causal
        model.cfg.causal = True
        tokens = expected["last_hidden_state"][:, -((56 // 14) ** 2) :]
        official = model.head(model.fc_norm(tokens.mean(dim=1)))
        torch.testing.assert_close(model(pixels), official, atol=1e-5, rtol=0)
