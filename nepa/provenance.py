"""What every stage records beside its numbers: which params, checkpoint, code and hardware made them.

Each stage verb writes `metrics.json` in its output folder with `write_metrics`, which `nepa report` reads, and
beside it `scores.json`: the stage's headline numbers alone, which `dvc metrics show` and `dvc exp show` list
(the provenance stays in metrics.json, in the run folder).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from nepa.config import Params
from nepa.files import atomic_write_text
from nepa.layout import METRICS, SCORES


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def params_hash(params: Params) -> str:
    """sha256 of the resolved params: two runs with the same hash ran the same configuration."""
    return hashlib.sha256(json.dumps(params.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


# Edited as the README says (params.yaml, and the DVC remote rendered from it): recorded as params
# (params_sha256), so they do not make the code "-dirty".
PARAMS_FILES = ("params.yaml", ".dvc/config")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        code = [":(top)", *(f":(top,exclude){name}" for name in PARAMS_FILES)]
        status = ["git", "status", "--porcelain", "--untracked-files=no", "--", *code]
        dirty = subprocess.run(status, capture_output=True, text=True)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu} ({os.cpu_count()} cores)"


# Each stage's headline number, {stage: {name in scores.json: its metric}}: one per stage, so that `dvc exp show`
# fits a terminal beside the params an experiment changed (DVC shows them as pretrain.loss, finetune.top1...);
# every other number is in metrics.json.
HEADLINES = {
    "pretrain": {"loss": "final_loss"},
    "finetune": {"top1": "val_top1"},  # of the weights finetune.report names
    "probe": {"top1_last": "val_top1_last"},  # of the last embedding (paper Table 6)
    "segment": {"miou": "val_miou"},
}


def write_metrics(
    folder: str | Path,
    stage: str,
    metrics: dict[str, float],
    params: Params,
    checkpoint: str | Path | None = None,
    seconds: float | None = None,
    **extra: Any,
) -> Path:
    """Write `folder/metrics.json`: {"stage", "metrics": {name: value}, "provenance": {...}}, and the stage's
    HEADLINES in `folder/scores.json`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "stage": stage,
        "metrics": metrics,
        "provenance": {
            "run": params.run_name,
            "scale": params.scale,
            "recipe": params.recipe,
            "variant": params.variant,
            "size": params.model.size,
            "seed": params.seed,
            "params_sha256": params_hash(params),
            "checkpoint_sha256": sha256_file(checkpoint) if checkpoint else None,
            "git_commit": git_commit(),
            "hardware": hardware(),
            "hours": None if seconds is None else round(seconds / 3600, 4),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),  # CPU results depend on it (reduction order)
            **extra,
        },
    }
    scores = {name: metrics[key] for name, key in HEADLINES.get(stage, {}).items() if key in metrics}
    atomic_write_text(folder / SCORES, json.dumps({stage: scores}, indent=2) + "\n")
    return atomic_write_text(folder / METRICS, json.dumps(record, indent=2) + "\n")
