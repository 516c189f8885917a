"""The evaluation parts against hand-computed values: mIoU, layer-decay ramp, UperNet shapes."""

from __future__ import annotations

import pytest
import torch

from nepa.eval.layer_decay import apply_layer_decay, decay_at, layer_ids, param_groups
from nepa.eval.miou import IGNORE, confusion_matrix, majority_baseline, scores
from nepa.eval.upernet import UperNet
from nepa.models import NepaConfig, NepaViT

TINY = dict(img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2, mlp_hidden_dim=64)


def test_miou_on_a_hand_computed_confusion_matrix() -> None:
    target = torch.tensor([0, 0, 0, 1, 1, 2, IGNORE, IGNORE])
    pred = torch.tensor([0, 0, 1, 1, 2, 2, 0, 3])
    conf = confusion_matrix(pred, target, num_classes=4)
    # rows true, columns predicted; the two ignored pixels count nowhere; class 3 absent from both after that
    assert conf.tolist() == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    s = scores(conf)
    # IoU0 = 2 / (3 + 2 - 2), IoU1 = 1 / (2 + 2 - 1), IoU2 = 1 / (1 + 2 - 1); class 3 has an empty union
    assert s["miou"] == pytest.approx((2 / 3 + 1 / 3 + 1 / 2) / 3)
    assert s["pixel_acc"] == pytest.approx(4 / 6)
    assert s["mean_acc"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # a class predicted but never labelled has IoU 0 and counts in the mean
    s = scores(confusion_matrix(torch.tensor([3, 0]), torch.tensor([0, 0]), num_classes=4))
    assert s["miou"] == pytest.approx((1 / 2 + 0) / 2)
    # majority-class segmenter: class 0 everywhere -> IoU0 = 3 / 6, others 0
    assert majority_baseline(conf)["miou"] == pytest.approx((3 / 6) / 3)
    assert majority_baseline(conf)["pixel_acc"] == pytest.approx(3 / 6)


def test_layer_decay_ramp_start_middle_end() -> None:
    # Table 5: 0.35 rising linearly to 1.0 over training; fixed when the ramp is off
    assert decay_at(0.35, 0.0, ramp=True) == pytest.approx(0.35)
    assert decay_at(0.35, 0.5, ramp=True) == pytest.approx(0.675)
    assert decay_at(0.35, 1.0, ramp=True) == pytest.approx(1.0)
    assert decay_at(0.35, 1.7, ramp=True) == pytest.approx(1.0)
    assert decay_at(0.65, 0.5, ramp=False) == 0.65


def test_layer_ids_and_group_lrs_follow_depth() -> None:
    model = NepaViT(NepaConfig(**TINY, num_classes=5))
    ids = layer_ids(model)
    assert ids["cls_token"] == ids["patch_embed.weight"] == 0
    assert ids["blocks.0.attn.qkv.weight"] == 1 and ids["blocks.3.mlp.fc2.bias"] == 4
    assert ids["norm.weight"] == ids["fc_norm.weight"] == ids["head.weight"] == 5
    groups = param_groups(model, 0.05, {"cls_token"})
    optimizer = torch.optim.AdamW(groups, lr=0.0)
    apply_layer_decay(optimizer, lr=1.0, decay=0.5)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert lr_of[id(model.head.weight)] == 1.0 and lr_of[id(model.blocks[3].mlp.fc1.weight)] == 0.5
    assert lr_of[id(model.patch_embed.weight)] == 0.5**5
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decay_of[id(model.head.weight)] == 0.05
    assert (
        decay_of[id(model.head.bias)] == decay_of[id(model.cls_token)] == decay_of[id(model.blocks[0].ls1.gamma)] == 0
    )


@pytest.mark.parametrize("size", [(32, 48), (30, 50)])  # a multiple of the patch, and one needing padding
def test_upernet_output_shape_at_non_square_sizes(size: tuple[int, int]) -> None:
    model = UperNet(NepaViT(NepaConfig(**TINY, causal=False)), taps=(0, 1, 2, 3), channels=16, num_classes=7)
    x = torch.randn(2, 3, *size)
    logits, aux = model.train()(x)
    assert logits.shape == aux.shape == (2, 7, *size)
    assert model.eval()(x).shape == (2, 7, *size)
    # the UperNet parts sit above the backbone's blocks in the layer-decay order
    ids = layer_ids(model, prefix="backbone.")
    assert ids["head.classifier.weight"] == ids["pyramid.up2.weight"] == 5 and ids["backbone.patch_embed.weight"] == 0
