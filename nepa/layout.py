"""Where everything lives, once: run folders, each stage's files, the prepared datasets and their splits.

    {data.root}/raw/                                   the embedded default's raw layouts (nepa prepare embedded)
    {data.root}/shards/{imagenet,ade20k}/{split}/      prepared shards, manifest.json beside the splits
    {runs}/{size}-{variant}[-s{seed}]/                 one run: a model size, a variant and, where runs are per
        pretrain/  export/  finetune/  probe/  segment/    seed (params seeds/ablation_seeds), the seed
    {results}/report/, report.md, report.html          the report

A stage folder holds checkpoints/ (training stages), metrics.csv (its curve, one row per logged step or epoch),
metrics.json (its final numbers with their provenance), scores.json (the numbers alone, for `dvc metrics`) and
tensorboard/. The verbs, both DAGs (nepa/pipeline.py, workflow/rules/) and the report (nepa/report/gather.py)
build their paths here; the functions take strings, so that the DAGs can pass their placeholders ("{size}").
"""

from __future__ import annotations

import re

SPLITS = {"imagenet": ("train", "val"), "ade20k": ("training", "validation")}  # each dataset's (train, val)
DOWNSTREAM = ("finetune", "probe", "segment")  # the stages that start from a pretraining's export
CHECKPOINTS = "checkpoints"
EXPORT = "export"
MODEL_FILE = "model.safetensors"
METRICS = "metrics.json"  # final numbers and provenance (nepa/provenance.py)
CURVE = "metrics.csv"  # nepa/engine/metrics.py
SCORES = "scores.json"  # the final numbers alone: what `dvc metrics` shows


def run_name(size: str, variant: str, seed: object = None) -> str:
    """A run's folder name: {size}-{variant}, and -s{seed} where runs are per seed (seed None: they are not)."""
    return f"{size}-{variant}" + ("" if seed is None else f"-s{seed}")


# run_name read back, for folders whose metrics.json does not record the run's identity
RUN_NAME = re.compile(r"(?P<size>[^-]+)-(?P<variant>.+?)(?:-s(?P<seed>\d+))?")


def stage_dir(runs: str, run: str, stage: str) -> str:
    """A stage's folder in a run: pretrain, export, finetune, probe, segment (finetune-random: --init random)."""
    return f"{runs}/{run}/{stage}"


def raw_dir(data: str) -> str:
    return f"{data}/raw"


def shards_dir(data: str, dataset: str) -> str:
    return f"{data}/shards/{dataset}"


def split_dir(data: str, dataset: str, split: str) -> str:
    return f"{shards_dir(data, dataset)}/{split}"


def report_dir(results: str) -> str:
    return f"{results}/report"
