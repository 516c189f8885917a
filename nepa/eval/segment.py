"""`nepa segment`: ADE20K-style semantic segmentation with UperNet (paper Table 3), on the engine.

    backbone (export / --init), bidirectional attention, drop path -> UperNet (nepa/eval/upernet.py) on four
    block taps (`segment.taps`; default the BEiT/MAE choice, blocks d/3, d/2, 2d/3, d of d, 1-based)
    segment_train view (random rescale 0.5-2, crop, flip) -> pixel CE over `num_classes` classes, label 0
    ignored, label k -> class k-1, + 0.4 x the auxiliary head's CE
    AdamW with fixed layer-wise lr decay (head and pyramid at the top rate), linear warm-up, cosine
    single-scale val mIoU / pixel accuracy: `eval_mode` slide (mmseg's protocol: short side rescaled to the
    crop, crop-sized windows at `eval_stride`, logits averaged, back to the image size) or whole (the image as is)

Writes {runs}/{size}-{variant}/segment[-random]/: checkpoints/, metrics.csv (loss curve; the val scores in the
last row), metrics.json (val mIoU, pixel and mean class accuracy, and the same scores of the trivial
majority-class segmenter).
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from nepa.batch import section_for
from nepa.config import Params, SegmentParams
from nepa.data.loaders import make_loader, num_batches, read_split
from nepa.engine import distributed, rng
from nepa.engine.distributed import several_processes
from nepa.engine.trainer import Task, Trainer
from nepa.errors import UserError
from nepa.eval import layer_decay, stage
from nepa.eval.miou import IGNORE, confusion_matrix, majority_baseline, scores
from nepa.eval.upernet import UperNet
from nepa.layout import CURVE
from nepa.provenance import write_metrics

VERB = "segment"
AUX_WEIGHT = 0.4  # the mmseg UperNet configs' auxiliary FCN loss weight


def default_taps(depth: int) -> tuple[int, ...]:
    """0-based blocks d/3, d/2, 2d/3, d (1-based, rounded): 3/5/7/11 for ViT-B, 7/11/15/23 for ViT-L (BEiT, MAE)."""
    return tuple(round(depth * f) - 1 for f in (1 / 3, 1 / 2, 2 / 3, 1))


def to_targets(masks: Tensor) -> Tensor:
    """ADE20K labels (0 other, 1..C) -> classes (IGNORE, 0..C-1)."""
    return masks - 1


def loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    images, masks = batch
    logits, aux = model(images)
    targets = to_targets(masks)
    ce = functools.partial(F.cross_entropy, target=targets, ignore_index=IGNORE)
    return ce(logits) + AUX_WEIGHT * ce(aux)


def sliding_logits(model: nn.Module, image: Tensor, crop: int, stride: int, num_classes: int) -> Tensor:
    """mmseg's slide inference: crop-sized windows every `stride` pixels (the last flush with the border),
    logits summed and divided by how many windows saw each pixel."""
    _, _, h, w = image.shape
    out = image.new_zeros(image.shape[0], num_classes, h, w)
    seen = image.new_zeros(1, 1, h, w)
    for row in range(max(h - crop + stride - 1, 0) // stride + 1):
        for col in range(max(w - crop + stride - 1, 0) // stride + 1):
            y2, x2 = min(row * stride + crop, h), min(col * stride + crop, w)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            out[:, :, y1:y2, x1:x2] += model(image[:, :, y1:y2, x1:x2])
            seen[:, :, y1:y2, x1:x2] += 1
    return out / seen


def predict(model: nn.Module, images: Tensor, s: SegmentParams, num_classes: int) -> Tensor:
    """(B, H, W) class predictions of a batch of val images, by `s.eval_mode`."""
    if s.eval_mode == "whole":
        return model(images).argmax(dim=1)
    size = images.shape[-2:]
    scale = s.crop / min(size)  # mmseg's test resize: short side to the crop size (512 for ADE20K)
    scaled = F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
    logits = sliding_logits(model, scaled, s.crop, s.eval_stride, num_classes)
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(dim=1)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    s: SegmentParams,
    num_classes: int,
    device: torch.device,
    progress: bool = False,
) -> Tensor:
    """The val confusion matrix of every rank's batches, summed over ranks (a collective call). `progress`: a
    progress bar (sliding windows at 512 px take minutes even on GPUs)."""
    training = model.training
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    bar = tqdm(batches, desc=f"nepa segment: evaluation ({s.eval_mode})", disable=not progress, dynamic_ncols=True)
    for images, masks in bar:
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            pred = predict(model, images, s, num_classes)
        confusion += confusion_matrix(pred, to_targets(masks), num_classes)
    if several_processes():
        dist.all_reduce(confusion)
    model.train(training)
    return confusion.cpu()


def build_model(params: Params, weights: Path | None, num_classes: int, device: torch.device, world: int) -> UperNet:
    s = params.segment
    rng.seed_all(params.seed)  # the same head (and random-init backbone) on every rank
    backbone = stage.build(params, weights, num_classes=0, causal=False, drop_path=s.drop_path)
    backbone.set_grad_checkpointing(s.grad_checkpointing)
    taps = s.taps or default_taps(backbone.cfg.depth)
    if len(taps) != 4 or list(taps) != sorted(set(taps)) or not 0 <= taps[0] <= taps[-1] < backbone.cfg.depth:
        raise UserError(
            f"segment.taps {taps}: need four increasing blocks within 0..{backbone.cfg.depth - 1} "
            f"for {params.model.timm_name}; set segment.taps"
        )
    model = UperNet(backbone, taps, s.channels, num_classes)
    if world > 1 and device.type == "cuda":  # batch statistics over the global batch, as mmseg's SyncBN
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


add_arguments = stage.add_init_args


def main(args: argparse.Namespace, params: Params) -> int:
    s = params.segment
    weights, train, val, folder = stage.inputs(args, params, VERB, "ade20k")
    data_classes = len(read_split(train)[0]["classes"])
    num_classes = s.num_classes or data_classes
    if data_classes > num_classes:
        raise UserError(f"segment.num_classes {num_classes}: the prepared ADE20K shards have {data_classes} classes")
    env = distributed.from_environ()
    device = distributed.init(env, params.launcher.rendezvous_timeout_s)
    s = section_for(params, VERB, env.world)

    model = build_model(params, weights, num_classes, device, env.world)
    loader = functools.partial(
        make_loader,
        rank=env.rank,
        world=env.world,
        seed=params.seed,
        num_workers=s.num_workers,
        verify=params.data.verify_shards,
    )
    train_batches = functools.partial(loader, "segment_train", train, batch_size=s.micro_batch, crop=s.crop)
    eval_batch = s.micro_batch if s.eval_mode == "whole" else 1  # slide: val images differ in size
    val_batches = functools.partial(
        loader, "segment_eval", val, batch_size=eval_batch, epoch=0, drop_last=False,
        patch_size=model.backbone.cfg.patch_size,
    )  # fmt: skip
    confusion: list[Tensor] = []

    def evaluate_model(ema: object) -> dict[str, float]:
        """The val scores at the last step, into its metrics.csv row (the confusion matrix kept); the loader's
        seed draws leave the generators that the last checkpoint saves as they were."""
        with torch.random.fork_rng(devices=[]):
            confusion[:] = [evaluate(model, val_batches(), s, num_classes, device, progress=env.is_main)]
        return {f"val_{k}": v for k, v in scores(confusion[0]).items()}

    decay = layer_decay.groups(model, s.weight_decay, s.layer_decay, ramp=False)
    task = Task(
        model=model,
        loss=loss,
        batches=lambda epoch, start: train_batches(epoch=epoch, start_batch=start),
        batches_per_epoch=num_batches(train, batch_size=s.micro_batch, world=env.world),
        param_groups=decay.param_groups,
        lr_scale=decay.lr_scale,
        evaluate=evaluate_model,
        eval_fields=("val_miou", "val_pixel_acc", "val_mean_acc"),  # miou.scores
        eval_each_epoch=False,
    )
    cfg = stage.train_config(s, params, VERB, weights, train, folder, model.backbone.cfg)
    status = Trainer(cfg, task, env, device).fit()
    if status == 0:
        if not confusion:  # a finished run that was only resumed evaluates here
            evaluate_model(None)
        if env.is_main:
            metrics = {f"val_{k}": v for k, v in scores(confusion[0]).items()}
            metrics |= {f"val_{k}_majority_class": v for k, v in majority_baseline(confusion[0]).items()}
            wall_s = float(pd.read_csv(folder / CURVE)["wall_s"].max())
            write_metrics(
                folder,
                VERB,
                metrics,
                params,
                checkpoint=weights,
                seconds=wall_s,
                init=str(weights or stage.RANDOM),
                taps=list(model.taps),
            )
    distributed.shutdown()
    return status
