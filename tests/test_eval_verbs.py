"""The downstream verbs: Mixup/CutMix targets, the frozen patch embedding, the built heads, CLI errors, and
real runs on tiny embedded shards (the probe; slow: a fine-tune killed and resumed bit for bit, a segmentation)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from nepa.cli import main as nepa_main
from nepa.config import FinetuneParams, Params
from nepa.engine.checkpoint import EMA_FILE, latest_checkpoint, online_weights
from nepa.engine.faults import EXIT_INJECTED
from nepa.eval import finetune, layer_decay
from nepa.eval.segment import default_taps
from nepa.models import NepaConfig, NepaViT, save_model_file

NUM_CLASSES = 10


# ---- Mixup / CutMix -------------------------------------------------------------------------------


def mixed(f: FinetuneParams, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, labels, mixed images, soft targets) of one batch through the fine-tuning's Mixup."""
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    y = torch.arange(8)  # y[i] != y[7 - i]: every sample's partner has another class
    np.random.seed(seed)  # timm draws lambda and the CutMix box from numpy's global generator
    xm, target = finetune.make_mixup(f, NUM_CLASSES)(x.clone(), y)
    return x, y, xm, target


def lam_of(target: torch.Tensor, y: torch.Tensor, smoothing: float) -> torch.Tensor:
    """lambda per sample, from the weight of its own class: lam * on + (1 - lam) * off."""
    off = smoothing / NUM_CLASSES
    return (target[torch.arange(len(y)), y] - off) / (1 - smoothing)


def is_cutmix(x: torch.Tensor, xm: torch.Tensor) -> bool:
    """Every pixel is the image's own or its partner's (x.flip(0)) — a pasted box, not a blend."""
    own, partner = (xm == x).all(1), (xm == x.flip(0)).all(1)
    return bool((own | partner).all())


def test_mixup_targets_sum_to_one_and_blend_like_the_images() -> None:
    f = FinetuneParams(mixup=0.8, cutmix=0.0, label_smoothing=0.1)
    x, y, xm, target = mixed(f, seed=0)
    assert torch.allclose(target.sum(1), torch.ones(8))
    lam = lam_of(target, y, 0.1)
    assert torch.allclose(lam, lam[0].expand(8)) and 0 < lam[0] < 1  # one lambda per batch
    assert torch.allclose(xm, lam[0] * x + (1 - lam[0]) * x.flip(0), atol=1e-6)
    assert torch.allclose(target[torch.arange(8), y.flip(0)], (1 - lam) * 0.9 + 0.01)  # the partner's share


def test_cutmix_targets_are_the_pasted_area() -> None:
    f = FinetuneParams(mixup=0.0, cutmix=1.0, label_smoothing=0.1)
    for seed in range(5):
        x, y, xm, target = mixed(f, seed)
        assert torch.allclose(target.sum(1), torch.ones(8)) and is_cutmix(x, xm)
        from_partner = ((xm != x).any(1) & (xm == x.flip(0)).all(1)).float().mean((1, 2))  # per sample
        assert torch.allclose(1 - lam_of(target, y, 0.1), from_partner, atol=1e-6)


def test_mixup_and_cutmix_alternate_and_switch_off() -> None:
    f = FinetuneParams(mixup=0.8, cutmix=1.0)  # the paper's: one of the two per batch
    kinds = {is_cutmix(x, xm) for x, _, xm, _ in (mixed(f, seed) for seed in range(12))}
    assert kinds == {True, False}
    assert finetune.make_mixup(FinetuneParams(mixup=0.0, cutmix=0.0), NUM_CLASSES) is None


# ---- the fine-tuned model ---------------------------------------------------------------------------


def test_finetune_model_frozen_patch_embedding_and_zero_head() -> None:
    params = Params(finetune=FinetuneParams(attention="causal", pooling="last"))
    model = finetune.build_model(params, None, NUM_CLASSES)
    assert model.cfg.causal and model.cfg.pooling == "last" and model.cfg.drop_path == params.finetune.drop_path
    assert torch.count_nonzero(model.head.weight) == 0 and model.head.out_features == NUM_CLASSES
    frozen = {k: v.clone() for k, v in model.patch_embed.state_dict().items()}
    blocks = {k: v.clone() for k, v in model.blocks.state_dict().items()}
    optimizer = torch.optim.AdamW(layer_decay.groups(model, 0.05, 0.65, ramp=False).param_groups, lr=1e-3)
    loss = finetune.make_loss(params.finetune, NUM_CLASSES)
    np.random.seed(0)
    for step in range(3):
        batch = (torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(step)), torch.tensor([0, 1, 2, 3]))
        optimizer.zero_grad()
        loss(model.train(), batch).backward()
        optimizer.step()
    assert all(not p.requires_grad and p.grad is None for p in model.patch_embed.parameters())
    assert all(torch.equal(v, model.patch_embed.state_dict()[k]) for k, v in frozen.items())
    assert not all(torch.equal(v, model.blocks.state_dict()[k]) for k, v in blocks.items())


def test_reported_number_follows_the_rule_in_params() -> None:
    scores = {"val_top1_online": 80.0, "val_top5_online": 95.0, "val_top1_ema": 81.0, "val_top5_ema": 94.0}
    assert finetune.reported(scores, "ema_final") == {"val_top1": 81.0, "val_top5": 94.0}
    assert finetune.reported(scores, "online_final") == {"val_top1": 80.0, "val_top5": 95.0}
    assert finetune.reported({**scores, "val_top1_online": 82.0}, "max_final")["val_top1"] == 82.0


def test_default_taps_are_beit_and_mae_blocks() -> None:
    # docs/paper.md, segment.taps: B 3/5/7/11, L 7/11/15/23 (0-based), the last block included
    assert default_taps(12) == (3, 5, 7, 11) and default_taps(24) == (7, 11, 15, 23)
    assert default_taps(6) == (1, 2, 3, 5) and default_taps(4) == (0, 1, 2, 3)


# ---- CLI errors ---------------------------------------------------------------------------------------


def run_cli(tmp_path: Path, *args: str) -> int:
    params = tmp_path / "params.yaml"
    params.write_text(f"runs: {tmp_path / 'runs'}\ndata:\n  root: {tmp_path / 'data'}\n")
    return nepa_main([*args, "--params", str(params)])


@pytest.mark.parametrize("verb", ["finetune", "probe", "segment"])
def test_missing_checkpoint_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], verb: str) -> None:
    assert run_cli(tmp_path, verb) == 2
    err = capsys.readouterr().err.strip()
    export = tmp_path / "runs" / "tiny-nepa" / "export" / "model.safetensors"
    assert f"{export}: pretrained model file not found" in err and "nepa export" in err and "--init random" in err
    assert "\n" not in err and "Traceback" not in err
    assert run_cli(tmp_path, verb, "--init", str(tmp_path / "nope.safetensors")) == 2
    assert "nope.safetensors: pretrained model file not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("finetune", "--init", "random"), "prepared imagenet shards not found"),
        (("segment", "--init", "random"), "prepared ade20k shards not found"),
        (("finetune", "--init", "random", "--set", "finetune.ema_decay=null"), "finetune.ema_decay is off"),
        (
            ("finetune", "--init", "random", "--set", "finetune.mixup=0.8", "--set", "finetune.micro_batch=7"),
            "use an even one",
        ),
    ],
)
def test_bad_inputs_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: tuple, needle: str) -> None:
    assert run_cli(tmp_path, *args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err


# ---- real runs on tiny embedded shards ----------------------------------------------------------------


@pytest.fixture(scope="module")
def root(fashion_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """params.yaml, prepared tiny ImageNet/ADE20K shards, and a tiny model file standing in for an export."""
    root = tmp_path_factory.mktemp("eval")
    lines = [
        f"data:\n  root: {root / 'data'}\n  embedded_images: [128, 64]\n  embedded_scenes: [16, 8]\n",
        "  images_per_shard: 64\n  workers: 1\n",
    ]
    (root / "params.yaml").write_text("".join(lines))
    for dataset in ("embedded", "imagenet", "ade20k"):
        assert nepa_main(["prepare", dataset, "--params", str(root / "params.yaml")]) == 0
    torch.manual_seed(0)
    model = NepaViT(NepaConfig(img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, mlp_hidden_dim=64))
    save_model_file(model.state_dict(), model.cfg, root / "init.safetensors")
    return root


def nepa(root: Path, runs: Path, verb: str, *sets: str, **env: str) -> subprocess.CompletedProcess:
    """`nepa VERB` as a launcher starts it: a subprocess, one thread, no launcher or fault variables."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "NEPA_", "RANK", "WORLD_SIZE"))}
    cmd = [sys.executable, "-m", "nepa.cli", verb, "--params", str(root / "params.yaml"), "--init",
           str(root / "init.safetensors"), *(x for s in [f"runs={runs}", *sets] for x in ("--set", s))]  # fmt: skip
    env = {**keep, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", **env}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def metrics(folder: Path) -> dict[str, float]:
    return json.loads((folder / "metrics.json").read_text())["metrics"]


def test_probe_reports_both_poolings(root: Path, tmp_path: Path) -> None:
    done = nepa(root, tmp_path, "probe", "probe.epochs=2", "probe.global_batch=32", "probe.num_workers=0")
    assert done.returncode == 0, done.stderr
    m = metrics(tmp_path / "tiny-nepa" / "probe")
    assert set(m) == {f"val_top{k}_{p}" for k in (1, 5) for p in ("last", "mean")}
    assert all(0 <= v <= 100 for v in m.values()) and m["val_top5_mean"] >= m["val_top1_mean"]
    # its curve: a row per epoch, in metrics.csv and TensorBoard; the last rows' top-1 are the reported ones
    curve = pd.read_csv(tmp_path / "tiny-nepa" / "probe" / "metrics.csv")
    assert curve["epoch"].tolist() == [1.0, 2.0] and curve["val_top1_last"].iloc[-1] == m["val_top1_last"]
    assert list((tmp_path / "tiny-nepa" / "probe" / "tensorboard").glob("events.out.tfevents.*"))
    scores = json.loads((tmp_path / "tiny-nepa" / "probe" / "scores.json").read_text())
    assert scores == {"probe": {"top1_last": m["val_top1_last"]}}  # what `dvc metrics show` lists


FINETUNE = [
    "finetune.global_batch=16",
    "finetune.micro_batch=8",
    "finetune.epochs=1",
    "finetune.warmup_epochs=0.25",
    "finetune.max_steps=4",
    "finetune.checkpoint_every=2",
    "finetune.log_every=1",
    "finetune.num_workers=0",
    "finetune.base_lr=0.01",
]


@pytest.mark.slow
def test_finetune_resumes_bit_identical_after_a_kill(root: Path, tmp_path: Path) -> None:
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert (done := nepa(root, whole, "finetune", *FINETUNE)).returncode == 0, done.stderr
    killed = nepa(root, cut, "finetune", *FINETUNE, NEPA_EXIT_AT_STEP="3")  # dies after step 3; last checkpoint: 2
    assert killed.returncode == EXIT_INJECTED, killed.stderr
    assert (done := nepa(root, cut, "finetune", *FINETUNE)).returncode == 0, done.stderr
    assert "resuming from" in done.stderr

    a, b = (latest_checkpoint(r / "tiny-nepa" / "finetune" / "checkpoints") for r in (whole, cut))
    online_a, online_b = online_weights(a), online_weights(b)
    assert online_a.keys() == online_b.keys() and all(torch.equal(online_a[k], online_b[k]) for k in online_a)
    ema_a, ema_b = load_file(a / EMA_FILE), load_file(b / EMA_FILE)
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    rows = [pd.read_csv(r / "tiny-nepa" / "finetune" / "metrics.csv").set_index("step") for r in (whole, cut)]
    assert rows[0].index.tolist() == rows[1].index.tolist() == [1, 2, 3, 4]
    assert rows[0]["loss"].equals(rows[1]["loss"]) and rows[0]["lr"].equals(rows[1]["lr"])
    assert metrics(whole / "tiny-nepa" / "finetune") == metrics(cut / "tiny-nepa" / "finetune")
    # the accuracies of both weights sit in the last step's row, and the EMA's is the reported one
    m = metrics(whole / "tiny-nepa" / "finetune")
    assert rows[0].loc[4, "val_top1_ema"] == m["val_top1_ema"] == m["val_top1"]
    # the patch embedding is the init file's, bit for bit, after real DeepSpeed steps
    init = load_file(root / "init.safetensors")
    assert all(torch.equal(online_a[k], init[k]) for k in ("patch_embed.weight", "patch_embed.bias"))
    assert not torch.equal(online_a["blocks.0.attn.qkv.weight"], init["blocks.0.attn.qkv.weight"])


@pytest.mark.slow
def test_segment_runs_and_scores(root: Path, tmp_path: Path) -> None:
    sets = [
        "segment.iterations=2",
        "segment.warmup_iterations=1",
        "segment.global_batch=4",
        "segment.micro_batch=4",
        "segment.crop=32",
        "segment.channels=16",
        "segment.num_workers=0",
    ]
    assert (done := nepa(root, tmp_path, "segment", *sets)).returncode == 0, done.stderr
    m = metrics(tmp_path / "tiny-nepa" / "segment")
    assert 0 <= m["val_miou"] <= 1 and 0 <= m["val_pixel_acc"] <= 1
    last = pd.read_csv(tmp_path / "tiny-nepa" / "segment" / "metrics.csv").iloc[-1]  # the mIoU curve's point
    assert last["step"] == 2 and last["val_miou"] == m["val_miou"]
    # the trivial segmenter: IoU = its class's pixel share (= pixel accuracy), one class of n right (mean acc 1/n)
    trivial = {k.removesuffix("_majority_class"): v for k, v in m.items() if k.endswith("_majority_class")}
    assert trivial["val_miou"] == pytest.approx(trivial["val_pixel_acc"] * trivial["val_mean_acc"])
