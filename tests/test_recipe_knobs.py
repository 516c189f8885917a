"""Where the paper and the official code disagree (docs/paper.md "Decisions"): `recipe: paper` trains without the
official code's RoPE coordinate rescale and without QK-Norm scales; `recipe: official` fine-tunes a ViT-B, pretrained
without them, with learnable QK-Norm scales, as its fine-tune configs do."""

from __future__ import annotations

from pathlib import Path

import torch

from nepa.config import load_params
from nepa.eval.finetune import build_model


def params(tmp_path: Path, recipe: str):
    path = tmp_path / "params.yaml"
    path.write_text(f"recipe: {recipe}\n")
    return load_params(path)


def test_official_fine_tuning_learns_qk_norm_scales_from_the_same_start(tmp_path: Path) -> None:
    official = params(tmp_path, "official")
    assert official.finetune.qk_norm_affine and not official.model.qk_norm_affine
    model = build_model(official, None, num_classes=10)
    scales = [p for n, p in model.named_parameters() if ".q_norm." in n or ".k_norm." in n]
    assert len(scales) == 2 * model.cfg.depth and model.cfg.qk_norm_affine
    assert all(p.requires_grad and torch.equal(p, torch.ones_like(p)) for p in scales)
    plain = build_model(
        official.model_copy(update={"finetune": official.finetune.model_copy(update={"qk_norm_affine": False})}),
        None,
        num_classes=10,
    )
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k in plain.state_dict()})
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model.eval()(images), plain.eval()(images))


def test_paper_recipe_has_neither_qk_norm_scales_nor_the_rope_rescale(tmp_path: Path) -> None:
    paper = params(tmp_path, "paper")
    assert paper.model.rope_rescale is None and not paper.finetune.qk_norm_affine
    model = build_model(paper, None, num_classes=10)
    assert not [n for n, _ in model.named_parameters() if "_norm." in n and ("q_norm" in n or "k_norm" in n)]
    assert model.cfg.rope_rescale is None
    assert params(tmp_path, "official").model.rope_rescale == 2.0
