"""The environment block: package versions, the accelerator, and what the run folders record of how they ran."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

import pandas as pd
import torch

from nepa.provenance import hardware

PACKAGES = ("torch", "timm", "deepspeed", "snakemake", "dvc", "submitit")
# The checkpoint layout of nepa/engine/checkpoint.py (LATEST, STATE_FILE), read here without importing the
# engine: that would load DeepSpeed into a verb that needs none of it.
LATEST, STATE_FILE = "latest", "state.json"


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def accelerator() -> str:
    """This machine's GPUs (or CPU) and the CUDA the installed torch was built for."""
    return f"{hardware()}; torch built for CUDA {torch.version.cuda or 'none (CPU build)'}"


def deepspeed_config(pretrain: Path) -> str:
    """The DeepSpeed config a pretraining folder records, else what its latest checkpoint says of the engine."""
    for path in sorted(pretrain.glob("*.json")):  # the engine's config is the JSON with zero_optimization
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(config, dict) and "zero_optimization" in config:
            return f"{path.name}: {json.dumps(config, sort_keys=True)}"
    said = f"not recorded: no DeepSpeed config JSON in {pretrain} (nepa/engine/trainer.py builds it in memory)"
    latest = pretrain / "checkpoints" / LATEST
    try:
        state = json.loads((latest.parent / latest.read_text().strip() / STATE_FILE).read_text())
    except (OSError, ValueError):
        return said
    world, zero = state["world"], state["zero_stage"]
    return f"{said}; latest checkpoint: step {state['step']}, {world} process(es), ZeRO stage {zero}"


def slurm_jobs(folder: Path) -> str:
    """SLURM job ids by verb from the launcher's job folders ({launcher.folder}/VERB/JOBID/, nepa/launch.py)."""
    jobs = {
        verb.name: sorted(job.name for job in verb.iterdir() if job.is_dir() and job.name.split("_")[0].isdigit())
        for verb in sorted(folder.iterdir()) if verb.is_dir()
    } if folder.is_dir() else {}  # fmt: skip
    listed = "; ".join(f"{verb}: {', '.join(ids)}" for verb, ids in jobs.items() if ids)
    if not listed:
        return f"none: no job folders under {folder} (no stage was launched with launcher.kind: submitit here)"
    # metrics.json does not record SLURM_JOB_ID, so a job is tied to its verb, not to a size and variant
    return listed


def environment(runs: Path, launcher_folder: Path, metrics: pd.DataFrame) -> pd.DataFrame:
    rows = [("python", platform.python_version()), *((name, version(name)) for name in PACKAGES)]
    rows.append(("this machine (report)", accelerator()))
    for machine, on in metrics.groupby("hardware")["run"]:
        rows.append((f"runs on {machine}", ", ".join(sorted(set(on)))))
    rows += [
        (f"{p.parent.relative_to(runs)}: DeepSpeed config", deepspeed_config(p))
        for p in sorted(runs.glob("**/pretrain"))
    ]
    rows.append(("SLURM jobs", slurm_jobs(launcher_folder)))
    return pd.DataFrame(rows, columns=["Item", "Value"])
