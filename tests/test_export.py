"""`nepa export` of a real fine-tune (real DeepSpeed on embedded Fashion-MNIST shards): nepa safetensors with its
class names and the official ViTNepaForImageClassification layout, both loading back to the same logits; bad
inputs in one line. (The pretraining export: tests/test_engine_runs.py; the official math: test_official_parity.py.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import nepa.models  # noqa: F401  (registers the timm names)
from nepa.cli import main as nepa_main
from nepa.engine.checkpoint import EMA_FILE, latest_checkpoint, online_weights
from nepa.models import NepaViT
from nepa.official import label_names_of, read_official

FINETUNE = [
    "finetune.global_batch=8",
    "finetune.micro_batch=8",
    "finetune.epochs=1",
    "finetune.warmup_epochs=0",
    "finetune.max_steps=2",
    "finetune.checkpoint_every=2",
    "finetune.num_workers=0",
    "finetune.base_lr=0.05",
    "finetune.mixup=0",
    "finetune.cutmix=0",
]
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def sets(*values: str) -> list[str]:
    return [x for v in values for x in ("--set", v)]


@pytest.fixture(scope="module")
def finetuned(fashion_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with params.yaml, tiny embedded shards and a 2-step fine-tune of a tiny random backbone."""
    root = tmp_path_factory.mktemp("export")
    data = f"data:\n  root: {root / 'data'}\n  embedded_images: [64, 32]\n  embedded_scenes: [4, 2]\n"
    (root / "params.yaml").write_text(f"runs: {root / 'runs'}\n{data}  images_per_shard: 64\n  workers: 1\n")
    for dataset in ("embedded", "imagenet"):
        assert nepa_main(["prepare", dataset, "--params", str(root / "params.yaml")]) == 0
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "NEPA_", "RANK", "WORLD_SIZE"))}
    done = subprocess.run(
        [sys.executable, "-m", "nepa.cli", "finetune", "--params", str(root / "params.yaml"), "--init", "random",
         *sets(*FINETUNE)],
        env={**keep, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return root


def export(root: Path, *args: str) -> int:
    return nepa_main(["export", "--params", str(root / "params.yaml"), *args])


def test_a_finetuned_classifier_exports_in_both_formats_with_its_logits(finetuned: Path) -> None:
    run = finetuned / "runs" / "tiny-nepa" / "finetune-random"
    latest = latest_checkpoint(run / "checkpoints")
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for weights, expected in (("ema", load_file(latest / EMA_FILE)), ("online", online_weights(latest))):
        out = finetuned / weights
        assert (
            export(finetuned, "--stage", "finetune", "--from", str(run), "--weights", weights, "--out", str(out)) == 0
        )
        model = timm.create_model("nepa_tiny_patch4_32", pretrained=str(out / "model.safetensors")).eval()
        assert model.pretrained_cfg["label_names"] == tuple(FASHION) and model.num_classes == 10
        assert not model.cfg.causal and model.cfg.pooling == "mean"  # the fine-tune's bidirectional mean-pool head
        assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
        assert model.state_dict().keys() == expected.keys()
        assert json.loads((out / "config.json").read_text())["label_names"] == FASHION

        official = finetuned / f"{weights}-official"
        args = ("--stage", "finetune", "--from", str(run), "--weights", weights, "--format", "official")
        assert export(finetuned, *args, "--out", str(official)) == 0
        config = json.loads((official / "config.json").read_text())
        assert config["architectures"] == ["ViTNepaForImageClassification"] and not config["is_causal"]
        assert config["id2label"] == {str(i): name for i, name in enumerate(FASHION)}
        assert config["label2id"]["Ankle boot"] == 9 and config["add_pooling_layer"]
        back = finetuned / f"{weights}-back"
        assert nepa_main(["import-official", str(official), str(back)]) == 0  # nepa -> official -> nepa
        again = timm.create_model("nepa_tiny_patch4_32", pretrained=str(back / "model.safetensors")).eval()
        assert again.pretrained_cfg["label_names"] == tuple(FASHION)
        with torch.no_grad():
            torch.testing.assert_close(again(x), model(x), atol=1e-5, rtol=0)
        state, cfg = read_official(official)
        assert label_names_of(official, cfg.num_classes) == FASHION
        assert all(torch.equal(state[k], v) for k, v in expected.items())


def test_the_default_finetune_export_sits_in_the_finetune_folder(finetuned: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs" / "tiny-nepa"
    shutil.copytree(finetuned / "runs" / "tiny-nepa" / "finetune-random", runs / "finetune")
    assert export(finetuned, "--stage", "finetune", "--set", f"runs={tmp_path / 'runs'}") == 0
    assert isinstance(
        timm.create_model("nepa_tiny_patch4_32", pretrained=str(runs / "finetune/export/model.safetensors")), NepaViT
    )
    assert export(finetuned, "--stage", "finetune", "--format", "official", "--set", f"runs={tmp_path / 'runs'}") == 0
    assert (runs / "finetune" / "export" / "official" / "config.json").is_file()


def test_a_finetune_without_its_classes_file_is_one_line(
    finetuned: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "finetune"
    shutil.copytree(finetuned / "runs" / "tiny-nepa" / "finetune-random", run)
    (run / "classes.json").unlink()
    assert export(finetuned, "--stage", "finetune", "--from", str(run)) == 2
    err = capsys.readouterr().err.strip()
    assert f"{run / 'classes.json'}: the fine-tune's class names not found" in err and "nepa finetune" in err
    assert "\n" not in err and "Traceback" not in err
    (run / "classes.json").write_text(json.dumps([{"index": 0, "id": "0", "name": "cat"}]))
    assert export(finetuned, "--stage", "finetune", "--from", str(run)) == 2
    err = capsys.readouterr().err.strip()
    assert "not the class list this fine-tune trained with" in err and "\n" not in err


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_exporting_a_run_without_a_checkpoint_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], stage: str
) -> None:
    (tmp_path / "params.yaml").write_text(f"runs: {tmp_path / 'runs'}\n")
    assert export(tmp_path, "--stage", stage) == 2
    err = capsys.readouterr().err.strip()
    folder = tmp_path / "runs" / "tiny-nepa" / stage / "checkpoints"
    assert err == f"nepa export: error: {folder}: no checkpoint; run `nepa {stage}` with the same params first"
