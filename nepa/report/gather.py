"""What the runs left: every stage's metrics.json as one long pandas table, and the metrics.csv curves.

Runs live in {runs}/{size}-{variant}/{stage folder}/ (nepa/pipeline.py); a stage folder is a verb's name, with
`-random` for the from-scratch baselines (nepa/eval/stage.py). metrics.json is provenance.write_metrics' format.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from nepa.errors import UserError

PROVENANCE = ("scale", "recipe", "params_sha256", "checkpoint_sha256", "git_commit", "hardware", "hours", "torch")
COLUMNS = ("run", "size", "variant", "stage", "metric", "value", *PROVENANCE, "source")


def metrics_table(runs: Path) -> pd.DataFrame:
    """One row per (run, stage folder, metric) of every {runs}/*-*/*/metrics.json, with the run's provenance."""
    rows = []
    for path in sorted(runs.glob("*-*/*/metrics.json")):
        try:
            record = json.loads(path.read_text())
            metrics, provenance = record["metrics"], record["provenance"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{path}: not a nepa metrics.json ({e!r}); re-run its stage") from None
        run = path.parent.parent.name
        size, variant = run.split("-", 1)  # the folder name is the fallback for files without these fields
        for metric, value in metrics.items():
            rows.append({
                "run": run, "size": provenance.get("size", size), "variant": provenance.get("variant", variant),
                "stage": path.parent.name, "metric": metric, "value": float(value),
                **{key: provenance.get(key) for key in PROVENANCE}, "source": str(path),
            })  # fmt: skip
    return pd.DataFrame(rows, columns=list(COLUMNS))


def curves(runs: Path, stage: str) -> dict[str, pd.DataFrame]:
    """{run: its {stage}/metrics.csv} for every run that has one (a stage still running has a partial curve)."""
    found = {}
    for path in sorted(runs.glob(f"*-*/{stage}/metrics.csv")):
        frame = pd.read_csv(path)
        if len(frame):
            found[path.parent.parent.name] = frame
    return found
