"""What the runs left: every stage's metrics.json as one long pandas table, and the metrics.csv curves.

Runs are found anywhere below {runs} (one folder per run and seed, however they are nested) and identified by
what each records, not by their folder names: the stage (`stage`), and in its provenance the model size, the
variant, the seed and the backbone a downstream stage started from (`init`: a pretrained file or `random`).
Files from before a field was recorded fall back to the folder layout {size}-{variant}[-s{seed}]/{stage}[-random]/.
metrics.json is provenance.write_metrics' format.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from nepa.errors import UserError
from nepa.layout import RUN_NAME

PROVENANCE = ("scale", "recipe", "params_sha256", "checkpoint_sha256", "git_commit", "hardware", "hours", "torch")
RANDOM, PRETRAINED = "random", "pretrained"  # what a downstream stage started from; pretraining: ""
COLUMNS = ("run", "size", "variant", "seed", "init", "stage", "metric", "value", *PROVENANCE, "source")


class RunKey(NamedTuple):
    """One run of one stage, as it records itself."""

    size: str
    variant: str
    seed: int | None  # None: a run from before seeds were recorded
    init: str  # PRETRAINED or RANDOM for downstream stages, "" for pretraining
    stage: str


def _folder_key(stage_folder: Path) -> RunKey:
    """The identity a stage folder's names give: {size}-{variant}[-s{seed}]/{stage}[-random]."""
    run = RUN_NAME.fullmatch(stage_folder.parent.name)
    size, variant, seed = run.group("size", "variant", "seed") if run else (stage_folder.parent.name, "", None)
    stage, _, suffix = stage_folder.name.partition("-")
    init = RANDOM if suffix == RANDOM else PRETRAINED if stage != "pretrain" else ""
    return RunKey(size, variant, None if seed is None else int(seed), init, stage)


def run_key(stage_folder: Path, record: dict[str, Any]) -> RunKey:
    """The identity of a stage's run from its metrics.json record (folder names where a field is missing)."""
    fallback, provenance = _folder_key(stage_folder), record.get("provenance", {})
    stage = record.get("stage", fallback.stage)
    init = provenance.get("init")
    init = fallback.init if init is None else "" if stage == "pretrain" else RANDOM if init == RANDOM else PRETRAINED
    seed = provenance.get("seed", fallback.seed)
    return RunKey(provenance.get("size", fallback.size), provenance.get("variant", fallback.variant),
                  None if seed is None else int(seed), init, stage)  # fmt: skip


def _read(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
        if not isinstance(record["metrics"], dict) or not isinstance(record["provenance"], dict):
            raise TypeError("metrics and provenance must be mappings")
        return record
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a nepa metrics.json ({e!r}); re-run its stage") from None


def _newest(found: list[tuple[RunKey, Path]]) -> list[tuple[RunKey, Path]]:
    """One file per identity, the newest (the same seed copied into two runs folders counts once); runs from
    before seeds were recorded cannot be told apart, so each such file stays."""
    newest: dict[RunKey, Path] = {}
    kept = []
    for key, path in found:
        if key.seed is None:
            kept.append((key, path))
        elif key not in newest or newest[key].stat().st_mtime < path.stat().st_mtime:
            newest[key] = path
    return sorted([*kept, *newest.items()], key=lambda item: str(item[1]))


def metrics_table(runs: Path) -> pd.DataFrame:
    """One row per (run, metric) of every metrics.json below `runs`, with the run's identity and provenance."""
    records = {path: _read(path) for path in sorted(runs.glob("**/metrics.json"))}
    rows = []
    for key, path in _newest([(run_key(path.parent, record), path) for path, record in records.items()]):
        provenance = records[path]["provenance"]
        for metric, value in records[path]["metrics"].items():
            rows.append({
                "run": str(path.parent.relative_to(runs)), **key._asdict(), "metric": metric, "value": float(value),
                **{k: provenance.get(k) for k in PROVENANCE}, "source": str(path),
            })  # fmt: skip
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["seed"] = frame["seed"].astype("Int64")  # missing seeds stay missing, not NaN floats
    return frame


def curves(runs: Path, stage: str) -> list[tuple[RunKey, pd.DataFrame]]:
    """(run, its metrics.csv) for every run of `stage` below `runs` that has one, identified by what its
    metrics.json records (a stage still running, or stopped by a non-finite loss, has a curve and no
    metrics.json: its folder names identify it)."""
    found = []
    for path in sorted(runs.glob("**/metrics.csv")):
        summary = path.parent / "metrics.json"
        key = run_key(path.parent, _read(summary)) if summary.is_file() else _folder_key(path.parent)
        if key.stage == stage:
            found.append((key, path))
    frames = [(key, pd.read_csv(path)) for key, path in _newest(found)]
    return [(key, frame) for key, frame in frames if len(frame)]
