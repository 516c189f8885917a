"""`nepa probe`: linear probe on frozen features (paper Table 6: last embedding / mean embedding).

Features are extracted once, with the backbone as pretrained (its causal attention, eval mode) on the
deterministic eval view (resize + centre crop) of the train and val shards; one forward gives both:
    last  the final-LayerNorm output of the last token (in a causal model, the one that has seen every patch)
    mean  the mean of the final-LayerNorm outputs of the patch tokens
The classifier is MAE's protocol minus its augmentation: each feature standardised with the train
statistics (MAE's BatchNorm without affine, folded into the features once) and a linear layer trained by
SGD (momentum 0.9, lr base_lr x batch / 256, cosine) over the in-memory features. Why not full-batch
L-BFGS: it needs a tuned L2 penalty per feature set and full passes over 1.28M x D features per iteration
at full scale, where minibatch SGD on standardised features is the protocol the paper's peers report with.

Runs on one process (rank 0 of a launch; other ranks exit at once), on the GPU where there is one.
Writes {runs}/{size}-{variant}/probe/: metrics.json (val top-1/top-5 of each pooling), metrics.csv and
TensorBoard events (each pooling's training loss and val top-1 at every epoch's end).
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from nepa.config import Params, ProbeParams
from nepa.data.loaders import make_loader, read_split
from nepa.engine import distributed
from nepa.engine.metrics import MetricsLog
from nepa.engine.schedule import warmup_cosine
from nepa.eval import stage
from nepa.eval.classify import correct_topk
from nepa.layout import CURVE
from nepa.models import NepaViT
from nepa.provenance import write_metrics

VERB = "probe"
POOLINGS = ("last", "mean")


@torch.no_grad()
def extract(
    model: NepaViT, split: Path, p: ProbeParams, seed: int, verify: bool, device: torch.device
) -> tuple[dict[str, Tensor], Tensor]:
    """({pooling: (N, D) features}, (N,) labels) of a whole split, on the CPU, in the split's stored order."""
    loader = make_loader(
        "eval",
        split,
        batch_size=p.global_batch,
        rank=0,
        world=1,
        seed=seed,
        epoch=0,
        verify=verify,
        drop_last=False,
        num_workers=p.num_workers,
        image_size=model.cfg.img_size,
    )
    feats: dict[str, list[Tensor]] = {k: [] for k in POOLINGS}
    labels = []
    for images, y in tqdm(loader, desc=f"nepa probe: features of {split.name}", dynamic_ncols=True):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            h = model.forward_features(images.to(device, non_blocking=True))
        feats["last"].append(h[:, -1].float().cpu())
        feats["mean"].append(h[:, 1:].float().mean(dim=1).cpu())
        labels.append(y)
    return {k: torch.cat(v) for k, v in feats.items()}, torch.cat(labels)


def train_linear(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    p: ProbeParams,
    seed: int,
    device: torch.device,
    on_epoch: Callable[[int, float, nn.Linear], None] = lambda step, loss, head: None,
) -> nn.Linear:
    """A linear classifier on standardised features `x`, by minibatch SGD with a cosine lr; `on_epoch(step, mean
    training loss, head)` at each epoch's end (and at the last step)."""
    head = nn.Linear(x.shape[1], num_classes).to(device)
    nn.init.zeros_(head.weight)  # a convex problem: zero start, no init noise in the result
    nn.init.zeros_(head.bias)
    lr = p.lr
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=p.weight_decay)
    per_epoch = steps_per_epoch(len(x), p)
    total = max(1, round(p.epochs * per_epoch))
    gen = torch.Generator().manual_seed(seed)
    x, y = x.to(device), y.to(device)
    step = 0
    while step < total:
        losses = []
        for idx in torch.randperm(len(x), generator=gen)[: per_epoch * p.global_batch].view(per_epoch, -1):
            if step == total:
                break
            for group in opt.param_groups:
                group["lr"] = lr * warmup_cosine(step, warmup_steps=0, total_steps=total)
            idx = idx.to(device)
            loss = F.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
            step += 1
        on_epoch(step, torch.stack(losses).mean().item(), head)
    return head


def steps_per_epoch(samples: int, p: ProbeParams) -> int:
    return max(1, samples // p.global_batch)


def note_epoch(
    rows: dict[int, dict[str, float]],
    pooling: str,
    x_val: Tensor,
    y_val: Tensor,
    per_epoch: int,
    device: torch.device,
    step: int,
    loss: float,
    head: nn.Linear,
) -> None:
    """The row of an epoch's end: the pooling's mean training loss over the epoch and its val top-1."""
    rows.setdefault(step, {"step": step, "epoch": step / per_epoch})
    rows[step] |= {f"loss_{pooling}": loss, f"val_top1_{pooling}": top_k(head, x_val, y_val, device)["top1"]}


def write_curve(folder: Path, poolings: tuple[str, ...], rows: dict[int, dict[str, float]]) -> None:
    """metrics.csv and TensorBoard events: each pooling's loss and val top-1 at every epoch's end."""
    fields = ("step", "epoch", *(f"{k}_{pooling}" for pooling in poolings for k in ("loss", "val_top1")))
    log = MetricsLog(folder / CURVE, None, fields)
    for _, row in sorted(rows.items()):
        log.append(row)
    log.close()


@torch.no_grad()
def top_k(head: nn.Linear, x: Tensor, y: Tensor, device: torch.device) -> dict[str, float]:
    chunks = zip(x.split(4096), y.split(4096), strict=True)
    hits = sum(correct_topk(head(xb.to(device)), yb.to(device)).cpu() for xb, yb in chunks)
    return {"top1": 100 * hits[0].item() / len(y), "top5": 100 * hits[1].item() / len(y)}


add_arguments = stage.add_init_args


def main(args: argparse.Namespace, params: Params) -> int:
    p = params.probe
    weights, train, val, folder = stage.inputs(args, params, VERB, "imagenet")
    if distributed.from_environ().rank != 0:
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    torch.manual_seed(params.seed)  # random init (--init random): the probe of an untrained network
    model = stage.build(params, weights).to(device).eval()
    x_train, y_train = extract(model, train, p, params.seed, params.data.verify_shards, device)
    x_val, y_val = extract(model, val, p, params.seed, params.data.verify_shards, device)
    num_classes = len(read_split(train)[0]["classes"])
    metrics, rows = {}, {}
    for pooling in p.poolings:
        mean, std = x_train[pooling].mean(0), x_train[pooling].std(0) + 1e-6
        val_features = (x_val[pooling] - mean) / std
        per_epoch = steps_per_epoch(len(y_train), p)
        on_epoch = functools.partial(note_epoch, rows, pooling, val_features, y_val, per_epoch, device)
        head = train_linear((x_train[pooling] - mean) / std, y_train, num_classes, p, params.seed, device, on_epoch)
        scores = top_k(head, val_features, y_val, device)
        metrics |= {f"val_{k}_{pooling}": v for k, v in scores.items()}
        print(f"nepa probe: {pooling} embedding: val top-1 {scores['top1']:.2f}%, top-5 {scores['top5']:.2f}%")
    write_curve(folder, p.poolings, rows)
    write_metrics(folder, VERB, metrics, params, checkpoint=weights, seconds=time.perf_counter() - t0,
                  init=str(weights or stage.RANDOM))  # fmt: skip
    return 0
