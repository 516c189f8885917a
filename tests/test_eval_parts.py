"""The evaluation parts against hand-computed values: mIoU, layer-decay ramp, UperNet shapes."""

from __future__ import annotations

import functools

import pytest
import torch

from nepa.engine.schedule import warmup_cosine
from nepa.engine.trainer import scaled_factor
from nepa.eval import layer_decay
from nepa.eval.layer_decay import decay_at
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
    assert decay_at(0.35, 0.0) == pytest.approx(0.35)
    assert decay_at(0.35, 0.5) == pytest.approx(0.675)
    assert decay_at(0.35, 1.0) == pytest.approx(1.0)
    assert decay_at(0.35, 1.7) == pytest.approx(1.0)
    model = NepaViT(NepaConfig(**TINY, num_classes=5))  # 4 blocks: layers 0 (stem) .. 5 (head)
    for ramp in (True, False):
        decay = layer_decay.groups(model, 0.05, 0.35, ramp=ramp)
        by_layer = {5 - g["layers_below_top"]: g for g in decay.param_groups}
        for progress, rate in ((0.0, 0.35), (0.5, 0.675), (1.0, 1.0)):
            rate = rate if ramp else 0.35
            for layer in (0, 2, 5):  # the group's lr multiplier: timm's fixed scale times the ramp's factor
                g = by_layer[layer]
                scale = g["lr_scale"] * (decay.lr_scale(g, progress) if decay.lr_scale else 1.0)
                assert scale == pytest.approx(rate ** (5 - layer), rel=1e-12)


def test_layer_decay_ramp_through_the_engine_schedule() -> None:
    """The groups' lrs as the engine's scheduler sets them: warm-up/cosine times the ramped layer scale."""
    model = NepaViT(NepaConfig(**TINY, num_classes=5))
    decay = layer_decay.groups(model, 0.05, 0.35, ramp=True)
    for group in decay.param_groups:  # as nepa.engine.trainer.Trainer sets them
        group["lr"] = group["lr_scale"]
    optimizer = torch.optim.AdamW(decay.param_groups, lr=1.0)
    factor = functools.partial(warmup_cosine, warmup_steps=0, total_steps=10)
    lambdas = [
        functools.partial(scaled_factor, factor=factor, lr_scale=decay.lr_scale, group=g, total_steps=10)
        for g in decay.param_groups
    ]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
    stem = next(g for g in optimizer.param_groups if g["layers_below_top"] == 5)
    head = next(g for g in optimizer.param_groups if g["layers_below_top"] == 0)
    ratios, head_lrs = [], []
    for _ in range(10):
        ratios.append(stem["lr"] / head["lr"])
        head_lrs.append(head["lr"])
        optimizer.step()
        scheduler.step()
    # steps 0, 5, 9 of 10: decay 0.35, 0.35 + 0.65 * 0.5, 0.35 + 0.65 * 0.9; the stem is 5 layers below the head
    assert ratios[0] == pytest.approx(0.35**5) and ratios[5] == pytest.approx(0.675**5)
    assert ratios[9] == pytest.approx(0.935**5)
    assert head_lrs == pytest.approx([warmup_cosine(step, 0, 10) for step in range(10)])  # the head: the schedule


def test_layer_decay_groups_follow_depth() -> None:
    model = NepaViT(NepaConfig(**TINY, num_classes=5))
    model.patch_embed.requires_grad_(False)
    groups = layer_decay.groups(model, 0.05, 0.65, ramp=False).param_groups
    of = {id(p): g for g in groups for p in g["params"]}
    assert id(model.patch_embed.weight) not in of  # frozen: in no optimizer group
    assert (
        of[id(model.cls_token)]["layers_below_top"] == 5
        and of[id(model.blocks[0].norm1.weight)]["layers_below_top"] == 4
    )
    assert (
        of[id(model.head.weight)]["layers_below_top"] == 0
        and of[id(model.blocks[3].mlp.fc1.weight)]["layers_below_top"] == 1
    )
    assert of[id(model.norm.weight)]["layers_below_top"] == of[id(model.fc_norm.weight)]["layers_below_top"] == 0
    assert of[id(model.head.weight)]["weight_decay"] == of[id(model.blocks[0].attn.qkv.weight)]["weight_decay"] == 0.05
    no_decay = (model.head.bias, model.cls_token, model.blocks[0].ls1.gamma, model.blocks[0].norm1.weight)
    assert all(of[id(p)]["weight_decay"] == 0.0 for p in no_decay)


@pytest.mark.parametrize("size", [(32, 48), (30, 50)])  # a multiple of the patch, and one needing padding
def test_upernet_output_shape_at_non_square_sizes(size: tuple[int, int]) -> None:
    model = UperNet(NepaViT(NepaConfig(**TINY, causal=False)), taps=(0, 1, 2, 3), channels=16, num_classes=7)
    x = torch.randn(2, 3, *size)
    logits, aux = model.train()(x)
    assert logits.shape == aux.shape == (2, 7, *size)
    assert model.eval()(x).shape == (2, 7, *size)
    # the UperNet parts sit above the backbone's blocks in the layer-decay order
    of = {id(p): g for g in layer_decay.groups(model, 0.05, 0.65, ramp=False).param_groups for p in g["params"]}
    assert of[id(model.head.classifier.weight)]["layers_below_top"] == 0
    assert of[id(model.pyramid.up2.weight)]["layers_below_top"] == 0
    assert of[id(model.backbone.patch_embed.weight)]["layers_below_top"] == 5


def test_upernet_prunes_what_follows_its_last_tap() -> None:
    """Blocks after the last tap and the final norm would get no gradient: they go, and every parameter learns."""
    backbone = NepaViT(NepaConfig(**{**TINY, "depth": 6}, causal=False))
    model = UperNet(backbone, taps=(0, 1, 2, 3), channels=16, num_classes=7)
    assert len(backbone.blocks) == backbone.cfg.depth == 4 and isinstance(backbone.norm, torch.nn.Identity)
    logits, aux = model.train()(torch.randn(2, 3, 32, 32))
    (logits.sum() + aux.sum()).backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]
