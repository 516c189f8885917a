"""`nepa finetune`: classification fine-tuning of a NEPA backbone (paper Table 5; `official` preset: the
released scripts), on the engine (nepa/engine: DeepSpeed, checkpoints with exact resume, preemption, NaN guard, EMA).

    backbone (export / --init) -> causal or bidirectional attention, pooling mean (-> LayerNorm) or last token,
    zero-initialised Linear head, frozen patch embedding, drop path
    timm train view (RandAugment, random erasing) -> Mixup/CutMix + label smoothing -> soft-target CE
    AdamW, warm-up + cosine, layer-wise lr decay (fixed, or the paper's ramp to 1.0), EMA of the weights
    each epoch end (and the last step): top-1/top-5 of the online and the EMA weights on the val shards

Writes {runs}/{size}-{variant}/finetune[-random]/: checkpoints/ (their card holds the architecture), classes.json
(the class of each output: `nepa export --stage finetune` names them), metrics.csv (loss curve; the accuracies in
the rows of epoch ends), metrics.json (the final accuracies, and the one `finetune.report` picks).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torch import Tensor, nn

from nepa.batch import section_for
from nepa.config import FinetuneParams, Params
from nepa.data.loaders import make_loader, num_batches, read_split
from nepa.engine import distributed, rng
from nepa.engine.ema import Ema
from nepa.engine.trainer import Task, Trainer
from nepa.eval import layer_decay, stage
from nepa.eval.classify import accuracy
from nepa.files import atomic_write_text
from nepa.layout import CURVE
from nepa.models import NepaViT
from nepa.provenance import write_metrics

VERB = "finetune"
CLASSES_FILE = "classes.json"  # the prepared split's classes ({index, id, name}), beside checkpoints/
WEIGHTS = ("online", "ema")


def build_model(params: Params, weights: Path | None, num_classes: int) -> NepaViT:
    f = params.finetune
    rng.seed_all(params.seed)  # the same head and (random init) backbone on every rank
    model = stage.build(
        params, weights, num_classes=0, causal=f.attention == "causal", pooling=f.pooling, drop_path=f.drop_path
    )
    model.reset_classifier(num_classes, zero_init=True)
    model.set_grad_checkpointing(f.grad_checkpointing)
    if f.qk_norm_affine and model.cfg.qk_norm and not model.cfg.qk_norm_affine:
        learnable_qk_norm(model)
    if f.freeze_patch_embed:  # Table 1d: a frozen patch embedding fine-tunes better (77.4 vs 73.1)
        model.patch_embed.requires_grad_(False)
    return model


def learnable_qk_norm(model: NepaViT) -> None:
    """Give every block's QK-Norm learnable scales, initialised to 1 (the same outputs), as the official fine-tune
    configs do for a ViT-B pretrained without them; the exported config records it."""
    cfg = model.cfg
    for block in model.blocks:
        for name in ("q_norm", "k_norm"):
            setattr(block.attn, name, nn.LayerNorm(cfg.head_dim, eps=cfg.norm_eps, bias=cfg.qk_norm_bias))
    cfg.qk_norm_affine = True


def make_mixup(f: FinetuneParams, num_classes: int) -> Mixup | None:
    """timm's batch-wise Mixup/CutMix (one of the two per batch, switch probability 0.5, as MAE and DeiT),
    whose soft targets carry the label smoothing; None where both are off."""
    if f.mixup <= 0 and f.cutmix <= 0:
        return None
    return Mixup(mixup_alpha=f.mixup, cutmix_alpha=f.cutmix, label_smoothing=f.label_smoothing, num_classes=num_classes)


def make_loss(f: FinetuneParams, num_classes: int) -> Callable[[nn.Module, Any], Tensor]:
    """The micro-batch loss: soft-target CE after Mixup/CutMix, or label-smoothed CE where both are off."""
    mixup = make_mixup(f, num_classes)
    criterion = SoftTargetCrossEntropy() if mixup else nn.CrossEntropyLoss(label_smoothing=f.label_smoothing)

    def loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        images, labels = batch
        if mixup is not None:  # draws from numpy's global generator, which the engine checkpoints per rank
            images, labels = mixup(images, labels)
        return criterion(model(images), labels)

    return loss


class Evaluator:
    """Top-1/top-5 of the online and the EMA weights on the validation split, in percent.

    The EMA weights are evaluated in a copy of the model, so the training model is never touched; the
    evaluation draws nothing from the generators a resumed run must find as they were.
    """

    def __init__(self, model: NepaViT, batches: Callable[[], Iterable[Any]], device: torch.device, progress: bool):
        self.model, self.batches, self.device, self.progress = model, batches, device, progress
        self.shadow = copy.deepcopy(model)
        self.last: dict[str, float] | None = None

    def __call__(self, ema: Ema | None) -> dict[str, float]:
        out = {}
        with torch.random.fork_rng(devices=[]):
            for name, scores in self._scores(ema):
                out |= {f"val_{k}_{name}": v for k, v in scores.items()}
        self.last = out
        return out

    def _scores(self, ema: Ema | None) -> Iterable[tuple[str, dict[str, float]]]:
        yield "online", self._accuracy(self.model, "online")
        if ema is not None:
            self.shadow.load_state_dict(ema.state_dict())
            yield "ema", self._accuracy(self.shadow, "ema")

    def _accuracy(self, model: NepaViT, weights: str) -> dict[str, float]:
        bar = f"nepa {VERB}: evaluation ({weights} weights)" if self.progress else None
        return accuracy(model, self.batches(), self.device, progress=bar)

    @staticmethod
    def fields(ema: bool) -> tuple[str, ...]:
        return tuple(f"val_{k}_{w}" for w in WEIGHTS[: 1 + ema] for k in ("top1", "top5"))


def reported(scores: dict[str, float], rule: str) -> dict[str, float]:
    """The number the run reports, by the rule fixed in params before it ran (never chosen afterwards)."""
    source = {"ema_final": "ema", "online_final": "online"}.get(rule)
    if source is None:  # max_final: the better of the two final models
        source = max(WEIGHTS, key=lambda w: scores[f"val_top1_{w}"])
    return {"val_top1": scores[f"val_top1_{source}"], "val_top5": scores[f"val_top5_{source}"]}


add_arguments = stage.add_init_args


def main(args: argparse.Namespace, params: Params) -> int:
    weights, train, val, folder = stage.inputs(args, params, VERB, "imagenet")
    env = distributed.from_environ()
    device = distributed.init(env, params.launcher.rendezvous_timeout_s)
    f = section_for(params, VERB, env.world)

    classes = read_split(train)[0]["classes"]
    num_classes = len(classes)
    model = build_model(params, weights, num_classes)
    loader = functools.partial(make_loader, rank=env.rank, world=env.world, seed=params.seed,
                               num_workers=f.num_workers, verify=params.data.verify_shards,
                               image_size=model.cfg.img_size, decode=params.data.decode)  # fmt: skip
    train_batches = functools.partial(
        loader, "finetune", train, batch_size=f.micro_batch, auto_augment=f.auto_augment, reprob=f.reprob,
        crop_scale=f.crop_scale,
    )  # fmt: skip
    val_batches = functools.partial(
        loader, "eval", val, batch_size=f.micro_batch, epoch=0, drop_last=False, crop_ratio=f.eval_crop_ratio
    )
    evaluator = Evaluator(model, val_batches, device, progress=env.is_main)
    decay = layer_decay.groups(model, f.weight_decay, f.layer_decay, ramp=f.layer_decay_ramp)
    task = Task(
        model=model,
        loss=make_loss(f, num_classes),
        batches=lambda epoch, start: train_batches(epoch=epoch, start_batch=start),
        batches_per_epoch=num_batches(train, batch_size=f.micro_batch, world=env.world),
        param_groups=decay.param_groups,
        lr_scale=decay.lr_scale,
        evaluate=evaluator,
        eval_fields=Evaluator.fields(f.ema_decay is not None),
    )
    cfg = stage.train_config(f, params, VERB, weights, train, folder, model.cfg)
    classes_json = json.dumps(classes, indent=1) + "\n"
    if env.is_main:
        atomic_write_text(folder / CLASSES_FILE, classes_json)
    cfg = dataclasses.replace(
        cfg, card={**cfg.card, "classes_sha256": hashlib.sha256(classes_json.encode()).hexdigest()}
    )
    trainer = Trainer(cfg, task, env, device)
    status = trainer.fit()
    if status == 0:
        scores = evaluator.last or evaluator(trainer.ema)  # a finished run that was only resumed evaluates here
        if env.is_main:
            wall_s = float(pd.read_csv(folder / CURVE)["wall_s"].max())
            write_metrics(
                folder,
                VERB,
                {**scores, **reported(scores, f.report)},
                params,
                checkpoint=weights,
                seconds=wall_s,
                report=f.report,
                init=str(weights or stage.RANDOM),
            )
    distributed.shutdown()
    return status
