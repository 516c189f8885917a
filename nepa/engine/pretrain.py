"""`nepa pretrain`: NEPA pretraining of `model.size` under `variant` on the prepared ImageNet train split.

Writes {runs}/{run_name}/pretrain/: checkpoints/ (resumed automatically), metrics.csv (the loss curve),
metrics.json (provenance). Exit status: 0 done, 75 preempted and checkpointed (rerun to resume), 3 non-finite
loss, 2 bad input. Launch as one process, or

    torchrun --nproc_per_node N -m nepa.cli pretrain ...
    deepspeed --num_gpus N --no_local_rank --module nepa.cli pretrain ...   (LOCAL_RANK comes from the env)
    srun, one task per GPU, with MASTER_ADDR (and MASTER_PORT) exported      (nepa.engine.distributed)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import pandas as pd
from torch import Tensor

from nepa import layout, models
from nepa.batch import section_for
from nepa.config import Params
from nepa.data.loaders import make_loader, num_batches
from nepa.engine import distributed, rng
from nepa.engine.checkpoint import EMA_FILE, latest_checkpoint, resume_key
from nepa.engine.trainer import Task, TrainConfig, Trainer
from nepa.errors import require_file
from nepa.objectives import Objective, pretrain_loss
from nepa.provenance import params_hash, sha256_file, write_metrics


def stage_folder(params: Params) -> Path:
    return Path(layout.stage_dir(params.runs, params.run_name, "pretrain"))


def train_split(params: Params) -> Path:
    split = Path(layout.split_dir(params.data.root, "imagenet", layout.SPLITS["imagenet"][0]))
    require_file(
        split.parent / "manifest.json",
        "prepared ImageNet shards",
        "run `nepa prepare embedded && nepa prepare imagenet` (embedded scale) or `nepa prepare imagenet`",
    )
    return split


def images_loss(model: models.NepaViT, batch: tuple[Tensor, Tensor], objective: Objective) -> Tensor:
    images, _ = batch  # labels are not used: pretraining is self-supervised
    return pretrain_loss(model, images, objective)


def build_model(params: Params) -> models.NepaViT:
    model = models.create(
        params.model.timm_name,
        **params.model.architecture(),
        drop_path=params.pretrain.drop_path,
        mask_token=params.objective.mask_ratio > 0,  # input-embedding masking (Table 1c) needs the learned token
    )
    model.set_grad_checkpointing(params.pretrain.grad_checkpointing)
    return model


def main(args: argparse.Namespace, params: Params) -> int:
    split = train_split(params)
    env = distributed.from_environ()
    device = distributed.init(env, params.launcher.rendezvous_timeout_s)
    p = section_for(params, "pretrain", env.world)
    rng.seed_all(params.seed)  # the same initial weights on every rank
    model = build_model(params)
    loader: dict[str, Any] = dict(
        batch_size=p.micro_batch,
        rank=env.rank,
        world=env.world,
        seed=params.seed,
        num_workers=p.num_workers,
        verify=params.data.verify_shards,
        image_size=model.cfg.img_size,
        crop_scale=p.crop_scale,
        decode=params.data.decode,
        device=device,  # images arrive on the device, normalised there
    )
    task = Task(
        model=model,
        loss=functools.partial(images_loss, objective=params.objective),
        batches=lambda epoch, start: make_loader("pretrain", split, epoch=epoch, start_batch=start, **loader),
        batches_per_epoch=num_batches(split, batch_size=p.micro_batch, world=env.world),
    )
    data_sha256 = sha256_file(split.parent / "manifest.json")
    card = {
        "model": params.model.timm_name,
        "nepa_config": json.dumps(dataclasses.asdict(model.cfg)),
        "data": f"{split} (manifest sha256 {data_sha256[:16]})",
        "params_sha256": params_hash(params),
        "variant": params.variant,
    }
    folder = stage_folder(params)
    cfg = TrainConfig.from_params(
        p,
        folder=folder,
        seed=params.seed,
        name="nepa pretrain",
        card=card,
        resume_key=resume_key(params, ("model", "objective", "pretrain"), data_sha256),
    )
    status = Trainer(cfg, task, env, device).fit()
    if status == 0 and env.is_main:
        last = pd.read_csv(folder / layout.CURVE).iloc[-1]
        write_metrics(
            folder,
            "pretrain",
            {"final_loss": float(last["loss"]), "steps": int(last["step"])},
            params,
            checkpoint=latest_checkpoint(folder / layout.CHECKPOINTS) / EMA_FILE,
            seconds=float(last["wall_s"]),
        )
    distributed.shutdown()
    return status
