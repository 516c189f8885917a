"""The model and objective do what the paper says: loss range, causality, stop-grad, relative RoPE,
ablation switches, sizes, heads."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import AttentionRope, RotaryEmbeddingDinoV3

import nepa.models  # noqa: F401  (registers the timm names)
from nepa.models import NepaConfig, NepaViT, save_model_file
from nepa.models.nepa_vit import Attention, Rope2D, apply_rope, patch_center_coords, rope_cos_sin
from nepa.models.weights import write_model_dir
from nepa.objectives import Objective, next_embedding_loss, pretrain_loss, random_patch_mask

TINY = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, mlp_hidden_dim=64)


def tiny(**overrides: object) -> NepaViT:
    torch.manual_seed(0)
    model = NepaViT(NepaConfig(**{**TINY, **overrides}))
    # LayerScale 1e-5 makes blocks nearly invisible at init; open them so effects are measurable
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.fill_(1.0)
    return model.eval()


def images(n: int = 2, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_loss_is_minus_one_for_identical_and_near_zero_for_random() -> None:
    z = torch.randn(4, 65, 64)
    pred = torch.cat([z[:, 1:], torch.randn(4, 1, 64)], dim=1)  # pred[t] == z[t+1]
    assert next_embedding_loss(pred, z).item() == pytest.approx(-1.0, abs=1e-6)
    random = next_embedding_loss(torch.randn(64, 65, 256), torch.randn(64, 65, 256)).item()
    assert abs(random) < 0.01  # mean cosine of random 256-d vectors ~ N(0, 1/sqrt(256 * 64 * 64))


def _grad_of_output_wrt_patches(model: NepaViT, t: int, causal: bool) -> torch.Tensor:
    """|d pred[:, t] / d pixels| summed per patch, (num_patches,)."""
    x = images(1).requires_grad_(True)
    out = model.forward_pretrain(x, causal=causal)
    # a random projection: a plain sum of a LayerNorm output is constant and has no gradient
    (out.pred[:, t] * torch.randn(out.pred.shape[-1], generator=torch.Generator().manual_seed(2))).sum().backward()
    p = model.cfg.patch_size
    return x.grad.abs().sum(1)[0].unfold(0, p, p).unfold(1, p, p).sum((-1, -2)).flatten()


def test_causal_mask_blocks_the_future() -> None:
    model = tiny()
    t = 5  # output at token 5 (CLS + 4 patches seen); patch p is token p + 1
    grad = _grad_of_output_wrt_patches(model, t, causal=True)
    assert torch.all(grad[t:] == 0), "output t must not see tokens t+1.."
    assert torch.all(grad[:t] > 0), "output t must see tokens 1..t"
    assert torch.all(_grad_of_output_wrt_patches(model, t, causal=False)[t:] > 0)


def test_stop_grad_stops_gradients_into_targets() -> None:
    model = tiny()
    out = model.forward_pretrain(images())
    assert not out.target.requires_grad and out.pred.requires_grad
    # the target path carries gradient only without stop-grad
    grads = {}
    for stop_grad in (True, False):
        model.zero_grad()
        pretrain_loss(model, images(), Objective(stop_grad=stop_grad)).backward()
        grads[stop_grad] = model.patch_embed.weight.grad.clone()
    assert not torch.allclose(grads[True], grads[False])
    out = model.forward_pretrain(images(), detach_target=False)
    assert out.target.requires_grad


def _rope(head_dim: int, grid: int, num_prefix: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    periods = Rope2D(NepaConfig(embed_dim=head_dim, num_heads=1)).periods
    return rope_cos_sin(patch_center_coords(grid, grid), periods, torch.float32, num_prefix)


def test_rope_is_relative() -> None:
    """Shifting every coordinate by the same offset leaves q.k logits unchanged."""
    head_dim, n = 32, 16
    periods = Rope2D(NepaConfig(embed_dim=head_dim, num_heads=1)).periods
    coords = patch_center_coords(4, 4)
    q, k = torch.randn(1, 1, n, head_dim), torch.randn(1, 1, n, head_dim)

    def logits(c: torch.Tensor) -> torch.Tensor:
        cos, sin = rope_cos_sin(c, periods, torch.float32)
        return apply_rope(q, cos, sin) @ apply_rope(k, cos, sin).transpose(-1, -2)

    shifted = coords + torch.tensor([0.37, -1.3])
    torch.testing.assert_close(logits(shifted), logits(coords), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(logits(coords * 1.5), logits(coords), atol=1e-3)  # scaling is not relative


def test_rope_skips_the_cls_token_and_rotates_the_textbook_way() -> None:
    """apply_rope (one swap of halves, the sign in sin, identity rows for the CLS) is rotate-half RoPE."""
    x = torch.randn(2, 3, 17, 8)
    cos, sin = _rope(8, 4, num_prefix=1)
    out = apply_rope(x, cos, sin)
    torch.testing.assert_close(out[..., 0, :], x[..., 0, :], atol=0, rtol=0)
    half_cos, half_sin = cos[1:], sin[1:, 4:]  # the unsigned sines
    x1, x2 = x[..., 1:, :4], x[..., 1:, 4:]
    textbook = x[..., 1:, :] * half_cos + torch.cat((-x2, x1), dim=-1) * half_sin.tile(2)
    torch.testing.assert_close(out[..., 1:, :], textbook, atol=1e-6, rtol=0)


def test_rope_table_is_timms_dinov3_table() -> None:
    """The angles are timm's RotaryEmbeddingDinoV3 (DINOv3's), which the official code follows."""
    timm_rope = RotaryEmbeddingDinoV3(64, temperature=100.0).eval()
    sin, cos = timm_rope.get_embed([8, 6]).chunk(2, dim=-1)
    periods = Rope2D(NepaConfig(embed_dim=64, num_heads=1)).periods
    ours_cos, ours_sin = rope_cos_sin(patch_center_coords(8, 6), periods, torch.float32)
    torch.testing.assert_close(ours_cos, cos, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours_sin[:, 32:], sin[:, 32:], atol=1e-6, rtol=0)
    torch.testing.assert_close(ours_sin[:, :32], -sin[:, :32], atol=1e-6, rtol=0)


def test_timm_attention_rope_computes_our_attention() -> None:
    """timm's AttentionRope, given our weights, matches our Attention (it is kept for speed, not for its math)."""
    cfg = NepaConfig(embed_dim=64, num_heads=2, qk_norm_affine=True)
    ours = Attention(cfg).eval()
    norm = functools.partial(torch.nn.LayerNorm, eps=cfg.norm_eps, bias=False)
    theirs = AttentionRope(64, 2, qk_norm=True, norm_layer=norm, rotate_half=True, num_prefix_tokens=1).eval()
    with torch.no_grad():
        ours.q_norm.weight.uniform_(0.5, 1.5)
    theirs.load_state_dict(ours.state_dict())
    cos, sin = _rope(32, 4, num_prefix=1)
    x = torch.randn(2, 17, 64)
    with torch.no_grad():
        expected = ours(x, (cos[:, None], sin[:, None]), causal=True)
        got = theirs(x, rope=torch.cat((sin[1:, 16:].tile(2), cos[1:]), dim=-1), is_causal=True)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_shift_switch_compares_the_same_position_without_shift() -> None:
    pred, target = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    same = -F.cosine_similarity(pred, target, dim=-1).mean()
    nxt = -F.cosine_similarity(pred[:, :-1], target[:, 1:], dim=-1).mean()
    assert next_embedding_loss(pred, target, shift=False).item() == pytest.approx(same.item(), abs=1e-6)
    assert next_embedding_loss(pred, target, shift=True).item() == pytest.approx(nxt.item(), abs=1e-6)


def test_mask_ratio_masks_inputs_not_targets() -> None:
    mask = random_patch_mask(8, 64, 0.4, torch.device("cpu"))
    assert mask.sum(1).eq(round(0.4 * 64)).all()
    model = tiny(mask_token=True)
    with torch.no_grad():
        model.mask_token.fill_(3.0)
        plain = model.forward_pretrain(images())
        masked = model.forward_pretrain(images(), patch_mask=random_patch_mask(2, 16, 0.5, torch.device("cpu")))
    torch.testing.assert_close(masked.target, plain.target, atol=0, rtol=0)  # targets stay clean
    assert not torch.allclose(masked.pred, plain.pred)
    torch.manual_seed(0)
    assert pretrain_loss(model, images(), Objective(mask_ratio=0.5)).item() != pytest.approx(
        pretrain_loss(model, images(), Objective()).item()
    )


def test_causal_switch_of_the_objective_reaches_attention() -> None:
    model = tiny()
    with torch.no_grad():
        causal = pretrain_loss(model, images(), Objective(causal=True))
        bidirectional = pretrain_loss(model, images(), Objective(causal=False))
    assert causal.item() != pytest.approx(bidirectional.item())


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_paper_sizes_have_the_paper_parameter_counts() -> None:
    # ViT-B/14 without absolute position embedding or head: 12 blocks x 7,089,408 + patch embed 452,352
    # + CLS 768 + final norm 1,536 = 85,527,552 ("86M" for ViT-B counts pos-embed and head too).
    assert _count(timm.create_model("nepa_base_patch14_224")) == 85_527_552
    # ViT-L/14: 24 x 12,598,272 + 603,136 + 1,024 + 2,048 = 302,964,736 ("304M" with pos-embed and head)
    assert _count(timm.create_model("nepa_large_patch14_224")) == 302_964_736
    # the paper preset's SwiGLU at 2/3 width keeps ViT-B's count within 0.1%
    swiglu = timm.create_model("nepa_base_patch14_224", mlp_gated=True, mlp_act="silu", mlp_hidden_dim=2048)
    assert abs(_count(swiglu) - 85_527_552) / 85_527_552 < 1e-3


def test_classification_heads() -> None:
    model = tiny(num_classes=7)
    assert model.head.weight.shape == (7, 32) and isinstance(model.fc_norm, torch.nn.LayerNorm)
    assert model(images()).shape == (2, 7)
    model.reset_classifier(3, zero_init=True)  # as the paper's fine-tuning
    assert model(images()).abs().max().item() == 0.0
    last = tiny(num_classes=3, pooling="last")
    h = last.forward_features(images())
    torch.testing.assert_close(last.forward_head(h, pre_logits=True), h[:, -1])


@pytest.mark.parametrize("size", [(16, 24), (32, 8)])
def test_dense_features_at_non_square_sizes(size: tuple[int, int]) -> None:
    model = tiny(causal=False)
    feats = model.forward_intermediates(torch.randn(2, 3, *size), indices=[0, 1], intermediates_only=True)
    assert [f.shape for f in feats] == [(2, 32, size[0] // 4, size[1] // 4)] * 2
    with pytest.raises(AssertionError, match="multiples of the patch size 4"):
        model.forward_intermediates(torch.randn(1, 3, 18, 16), indices=[1])


def test_pretrained_path_round_trip_through_timm(tmp_path: Path) -> None:
    model = timm.create_model("nepa_tiny_patch4_32", depth=2)
    path = save_model_file(model.state_dict(), model.cfg, tmp_path / "m.safetensors")
    loaded = timm.create_model("nepa_tiny_patch4_32", pretrained=str(path), num_classes=10)
    assert loaded.cfg.depth == 2 and loaded.num_classes == 10  # file architecture, caller's head
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, atol=0, rtol=0)


def test_pretrained_cfg_describes_the_input(tmp_path: Path) -> None:
    """timm's data config of a NEPA model is NEPA's eval view; a file's own image size wins over the name's."""
    model = timm.create_model("nepa_base_patch14_224")
    data = timm.data.resolve_data_config(model=model)
    assert data["input_size"] == (3, 224, 224) and data["mean"] == data["std"] == (0.5, 0.5, 0.5)
    assert (data["crop_pct"], data["interpolation"], model.pretrained_cfg["num_classes"]) == (0.875, "bicubic", 0)
    small = timm.create_model("nepa_tiny_patch4_32", img_size=16, depth=1)
    path = save_model_file(small.state_dict(), small.cfg, tmp_path / "m.safetensors")
    loaded = timm.create_model("nepa_tiny_patch4_32", pretrained=str(path), num_classes=3)
    assert loaded.pretrained_cfg["input_size"] == (3, 16, 16) and loaded.pretrained_cfg["file"] == str(path)
    assert loaded.pretrained_cfg["num_classes"] == 3


def test_files_with_the_former_swiglu_names_still_load(tmp_path: Path) -> None:
    """Before the MLPs came from timm, SwiGLU's layers were `gate` and `fc1` (now fc1_g and fc1_x)."""
    model = timm.create_model("nepa_tiny_patch4_32", depth=1, mlp_gated=True, mlp_act="silu")
    old = {k.replace("fc1_g", "gate").replace("fc1_x", "fc1"): v for k, v in model.state_dict().items()}
    assert "blocks.0.mlp.gate.weight" in old and "blocks.0.mlp.fc1.weight" in old
    path = save_model_file(old, model.cfg, tmp_path / "old.safetensors")
    loaded = timm.create_model("nepa_tiny_patch4_32", pretrained=str(path))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, atol=0, rtol=0)


def test_training_mode_rescales_rope_coordinates_only_in_training() -> None:
    model = tiny(rope_rescale=2.0)
    x = images()
    with torch.no_grad():
        model.eval()
        a, b = model.forward_features(x), model.forward_features(x)
        torch.testing.assert_close(a, b, atol=0, rtol=0)
        model.train()
        torch.manual_seed(0)
        c = model.forward_features(x)
        torch.manual_seed(1)
        d = model.forward_features(x)
    assert not torch.allclose(c, d)
    assert math.isfinite(c.sum().item())


# ---- timm's conventions (timm's own battery runs in tests/test_timm_battery.py) --------------------------------


def test_heads_pools_and_feature_info_follow_timm() -> None:
    model = timm.create_model("nepa_tiny_patch4_32", depth=2, num_classes=4).eval()
    assert model.head_hidden_size == model.num_features == 96 and model.global_pool == "avg"
    assert [f["module"] for f in model.feature_info] == ["blocks.0", "blocks.1"]
    assert {f["reduction"] for f in model.feature_info} == {4}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
        model.reset_classifier(5, "avg")  # timm's positional global_pool (it once landed on zero_init)
        assert model(x).shape == (2, 5) and model.cfg.num_classes == 5
        model.reset_classifier(0)  # no head: the pre-logits, fc_norm kept
        torch.testing.assert_close(model(x), pre_logits)
        model.reset_classifier(3, "last")
        torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True),
                                   model.forward_features(x)[:, -1])  # fmt: skip
        assert isinstance(model.fc_norm, torch.nn.Identity) and model.global_pool == "last"
        model.reset_classifier(0, "")
        assert model(x).shape == (2, 1 + 64, 96)
    with pytest.raises(ValueError, match="global_pool 'max'"):
        timm.create_model("nepa_tiny_patch4_32", global_pool="max")
    assert timm.create_model("nepa_tiny_patch4_32", global_pool="last").cfg.pooling == "last"


def test_group_matcher_orders_stem_blocks_then_the_rest() -> None:
    model = timm.create_model("nepa_tiny_patch4_32", depth=3, num_classes=2, mask_token=True)
    layers = timm.models.group_parameters(model, model.group_matcher(), reverse=True)
    assert layers["cls_token"] == layers["mask_token"] == layers["patch_embed.weight"] == 0
    assert layers["blocks.0.attn.qkv.weight"] == 1 and layers["blocks.2.mlp.fc2.bias"] == 3
    assert layers["norm.weight"] == layers["fc_norm.bias"] == layers["head.weight"] == 4


def test_features_only_and_intermediates_of_a_loaded_file(tmp_path: Path) -> None:
    """features_only wraps the model after its file is loaded: the features are the file's model's."""
    torch.manual_seed(0)
    model = timm.create_model("nepa_tiny_patch4_32", depth=3, causal=False).eval()
    path = save_model_file(model.state_dict(), model.cfg, tmp_path / "m.safetensors")
    features = timm.create_model("nepa_tiny_patch4_32", pretrained=str(path), features_only=True, out_indices=(0, 2))
    assert features.feature_info.channels() == [96, 96] and features.feature_info.reduction() == [4, 4]
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        expected = model.forward_intermediates(x, indices=[0, 2], intermediates_only=True)
        got = features.eval()(x)
        final, tokens = model.forward_intermediates(x, indices=1, output_fmt="NLC", stop_early=True)
        prefixed = model.forward_intermediates(x, indices=[1], return_prefix_tokens=True, intermediates_only=True)
    assert [f.shape for f in got] == [(2, 96, 8, 12)] * 2
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=0, rtol=0)
    assert tokens[0].shape == (2, 96, 96) and final.shape == (2, 97, 96)  # blocks 0..2 of 3: no early stop at 2
    torch.testing.assert_close(prefixed[0][1], model.encode(x, taps=[1])[2][0][:, :1])
    pruned = timm.create_model("nepa_tiny_patch4_32", depth=3)
    assert pruned.prune_intermediate_layers([0, 1], prune_norm=True) == [0, 1]
    assert len(pruned.blocks) == pruned.cfg.depth == 2 and isinstance(pruned.norm, torch.nn.Identity)
    assert pruned.num_classes == 0 and pruned.cfg.pooling == ""


def test_grad_checkpointing_gives_the_same_gradients() -> None:
    """Checkpointed blocks recompute their forward with the same random draws (drop path, RoPE rescale): the
    gradients are bit for bit those without, which is why a run may resume across the switch."""
    grads = []
    for on in (False, True):
        torch.manual_seed(0)
        model = timm.create_model("nepa_tiny_patch4_32", depth=3, drop_path=0.5, num_classes=3).train()
        model.set_grad_checkpointing(on)
        pretrain_loss(model, images(4, 32), Objective()).backward()
        model(images(4, 32)).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])


def test_fx_and_torch_export_trace_the_model() -> None:
    """fx (timm's feature extraction by graph) and torch.export (TorchScript's successor) give eager outputs."""
    model = timm.create_model("nepa_tiny_patch4_32", depth=2, num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), expected, atol=1e-6, rtol=0)
    batch = torch.export.Dim("batch")
    exported = torch.export.export(model, (x,), dynamic_shapes=({0: batch},)).module()
    torch.testing.assert_close(exported(x), expected, atol=1e-6, rtol=0)
    assert exported(torch.randn(5, 3, 32, 32)).shape == (5, 3)


def test_pretrained_cfg_states_the_sizes_a_patch_14_model_takes() -> None:
    cfg = timm.create_model("nepa_base_patch14_224", device="meta").pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and not cfg["fixed_input_size"]
    assert cfg["min_input_size"] == (3, 112, 112)  # 8 x 8 patches of 14, where timm's harness shrinks to
    with torch.device("meta"):
        model = timm.create_model("nepa_base_patch14_224", dtype=torch.bfloat16)
        assert model(torch.randn(1, 3, 112, 126, dtype=torch.bfloat16)).shape == (1, 768)
    assert {p.device.type for p in model.parameters()} == {"meta"} and model.cls_token.dtype == torch.bfloat16


def test_class_names_of_a_file_reach_timms_pretrained_cfg(tmp_path: Path) -> None:
    model = timm.create_model("nepa_tiny_patch4_32", depth=1, num_classes=2)
    path = write_model_dir(tmp_path, model.state_dict(), model.cfg, label_names=["cat", "dog"]) / "model.safetensors"
    loaded = timm.create_model("nepa_tiny_patch4_32", pretrained=str(path))
    assert loaded.num_classes == 2 and loaded.pretrained_cfg["label_names"] == ("cat", "dog")
    assert (
        "label_names"
        not in timm.create_model("nepa_tiny_patch4_32", pretrained=str(path), num_classes=5).pretrained_cfg
    )
    assert json.loads((tmp_path / "config.json").read_text())["label_names"] == ["cat", "dog"]
