"""Our numbers beside the paper's: one row per paper row, with the run it came from and whether they compare.

A value compares with the paper's only from a full-scale run of the paper's model on the paper's schedule.
Reduced-scale runs (`scale: embedded`: a tiny model on Fashion-MNIST) stand in for the ViT-B rows and compare
in direction only: the order of two rows the paper compares, a collapse, a failure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from nepa.presets import ABLATION_STEPS, ABLATION_TABLE, pretrained_by, stand_in
from nepa.report.gather import PROVENANCE
from nepa.report.paper import BASELINES, BY_KEY, MODEL_NAMES, ROWS, PaperRow

COLLAPSE_LOSS = -0.99  # the loss's minimum is -1: this close to it, the predictions copy the targets
FAIL_FACTOR = 2.0  # a "fails" row is reproduced by a top-1 no better than twice chance (or not finite)
STAND_INS = ("tiny", "small")  # sizes whose reduced-scale runs stand in for the paper's ViT-B rows
HEADLINE = ("val_top1", "val_top1_last", "val_top1_mean", "val_miou")  # the metrics the paper's tables quote
NOT_RUN = "not run"
COMPARISON = ("Table", "Setting", "Model", "Paper", "Ours", "Δ ours − paper", "Direction", "Run", "Scale",
              "Checkpoint", "Params", "Commit", "Hardware", "Hours")  # fmt: skip


@dataclass
class Evidence:
    """What the runs say: metrics.json values and provenance, metrics.csv curves, the chance level."""

    metrics: pd.DataFrame  # gather.metrics_table
    curves: dict[str, dict[str, pd.DataFrame]]  # stage folder -> run -> its metrics.csv
    chance: float | None  # top-1 of guessing, in percent (100 / classes of the prepared data); None: unknown
    values: dict[tuple[str, str, str], float] = field(init=False)
    provenances: dict[tuple[str, str], dict[str, Any]] = field(init=False)
    runs: set[str] = field(init=False)

    def __post_init__(self) -> None:
        m = self.metrics
        self.values = {(r.run, r.stage, r.metric): r.value for r in m.itertuples()}
        # a missing field (None) became NaN in the frame: back to None
        self.provenances = {
            (r["run"], r["stage"]): {k: None if pd.isna(r[k]) else r[k] for k in PROVENANCE}
            for _, r in m.drop_duplicates(["run", "stage"]).iterrows()
        }
        self.runs = set(m["run"]) | {run for by_run in self.curves.values() for run in by_run}

    def value(self, run: str, stage: str, metric: str) -> float | None:
        return self.values.get((run, stage, metric))

    def scale(self, run: str) -> str | None:
        return next((p["scale"] for (r, _), p in self.provenances.items() if r == run), None)

    def stopped(self, run: str, stage: str) -> bool:
        """A curve without metrics.json: the stage stopped (a non-finite loss exits 3) or is still running."""
        return run in self.curves.get(stage, {}) and (run, stage) not in self.provenances

    def _last(self, run: str, column: str) -> float | None:
        curve = self.curves.get("pretrain", {}).get(run)
        return None if curve is None else float(curve[column].iloc[-1])

    def final_loss(self, run: str) -> float | None:
        loss = self.value(run, "pretrain", "final_loss")
        return loss if loss is not None else self._last(run, "loss")

    def pretrain_steps(self, run: str) -> float | None:
        steps = self.value(run, "pretrain", "steps")
        return steps if steps is not None else self._last(run, "step")


def run_for(row: PaperRow, ev: Evidence) -> str | None:
    """The run of the row's size and variant, or for a ViT-B row a reduced-scale run of its variant's stand-in."""
    candidates = [f"{row.size}-{row.variant}"]
    candidates += [f"{size}-{stand_in(row.variant)}" for size in STAND_INS if row.size == "base"]
    return next((run for run in candidates if run in ev.runs), None)


def incomparable(row: PaperRow, run: str, ev: Evidence) -> str:
    """Why our value does not compare with the paper's in value ('' when it does)."""
    scale, size = ev.scale(run), run.split("-", 1)[0]
    if scale != "full":
        return f"reduced scale ({scale or 'unknown'}, {size} model)"
    if size != row.size:
        return f"{size} model"
    steps, expected = ev.pretrain_steps(f"{size}-{pretrained_by(row.variant)}"), ABLATION_STEPS.get(row.table)
    if expected is not None and steps != expected:
        return f"pretrained {steps:g} steps, the paper {expected}"
    if expected is None and row.variant in ABLATION_TABLE:  # at full scale a Table 1 variant gets its schedule
        return f"pretrained on Table {ABLATION_TABLE[row.variant]}'s schedule"
    return ""


def _rel(a: float, b: float) -> str:
    return "<" if a < b else ">" if a > b else "="


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def direction(row: PaperRow, run: str, ours: float | None, ev: Evidence) -> str:
    """Whether our run goes the paper's way: the order against the row it compares with, a collapse, a failure."""
    if row.outcome == "collapses":
        loss = ev.final_loss(run)
        if loss is None:
            return "ours: no pretraining loss yet"
        verdict = "collapses ✓" if loss <= COLLAPSE_LOSS else "no collapse ✗"
        return f"ours: {verdict} (final pretraining loss {loss:.3f})"
    ref = BY_KEY[row.versus] if row.versus else None
    size = run.split("-", 1)[0]
    ref_run = f"{size}-{ref.variant if size == row.size else stand_in(ref.variant)}" if ref else ""
    ref_value = ev.value(ref_run, ref.stage, ref.metric) if ref else None
    ref_ours = None if ref is None or ref_value is None else ref_value * ref.unit
    if row.outcome == "fails":
        if ev.stopped(run, "pretrain") or ev.stopped(run, row.stage):
            return "ours: stopped without metrics.json (non-finite loss, or still running) ?"
        if ours is None:
            return ""
        failed = not math.isfinite(ours) or (ev.chance is not None and ours <= FAIL_FACTOR * ev.chance)
        context = [f"{ref.setting} {_num(ref_ours)}"] if ref else []
        context += [f"chance {ev.chance:.3g}"] if ev.chance is not None else []
        return f"ours: {'fails ✓' if failed else 'trains ✗'} ({ours:.2f}; {', '.join(context)})"
    if ref is None or ref.paper is None or row.paper is None or ours is None:
        return ""
    paper = f"paper {paper_number(row.paper)} {_rel(row.paper, ref.paper)} {paper_number(ref.paper)} ({ref.setting})"
    if ref_ours is None:
        return f"{paper} · ours: {ref.setting} {NOT_RUN}"
    same = _rel(row.paper, ref.paper) == _rel(ours, ref_ours)
    return f"{paper} · ours {ours:.2f} {_rel(ours, ref_ours)} {ref_ours:.2f} {'✓' if same else '✗'}"


def provenance_cells(provenance: dict[str, Any]) -> dict[str, str]:
    """The run's checkpoint, params hash and commit (short), hardware and hours, as table cells."""
    commit = provenance.get("git_commit") or ""
    hours = provenance.get("hours")
    return {
        "Checkpoint": (provenance.get("checkpoint_sha256") or "—")[:12],
        "Params": (provenance.get("params_sha256") or "—")[:12],
        "Commit": commit[:12] + ("-dirty" if commit.endswith("-dirty") else ""),
        "Hardware": provenance.get("hardware") or "",
        "Hours": "" if hours is None else f"{hours:.3g}",
    }


def paper_number(x: float) -> str:
    """As the paper writes it: one decimal, two where it gives two (83.75)."""
    return f"{x:.1f}" if round(x, 1) == x else f"{x:.2f}"


def compare(row: PaperRow, ev: Evidence) -> tuple[dict[str, str], str]:
    """One paper row as table cells, and its class: 'notrun' (no value), 'reduced' (direction only) or ''."""
    paper = paper_number(row.paper) if row.paper is not None else f"{row.outcome} ({row.note})"
    cells = {"Table": row.table, "Setting": row.setting, "Model": MODEL_NAMES[row.size], "Paper": paper}
    run = run_for(row, ev)
    if run is None:
        return {**cells, "Ours": NOT_RUN}, "notrun"
    value = ev.value(run, row.stage, row.metric)
    ours = None if value is None else value * row.unit
    cells |= {"Direction": direction(row, run, ours, ev), "Run": run, "Scale": ev.scale(run) or ""}
    if ours is None:
        missing = (
            f"stopped ({row.stage}: no metrics.json)" if ev.stopped(run, row.stage) else f"{NOT_RUN} ({row.stage})"
        )
        return {**cells, "Ours": missing}, "notrun"
    why_not = incomparable(row, run, ev)
    delta = f"n/a: {why_not}" if why_not else "—" if row.paper is None else f"{ours - row.paper:+.2f}"
    cells |= {"Ours": f"{ours:.2f}", "Δ ours − paper": delta, **provenance_cells(ev.provenances[run, row.stage])}
    return cells, "reduced" if why_not else ""


def paper_table(ev: Evidence, tables: tuple[str, ...]) -> tuple[pd.DataFrame, list[str]]:
    """The comparison rows of the paper's `tables` and their classes (see `compare`)."""
    pairs = [compare(row, ev) for row in ROWS if row.table in tables]
    frame = pd.DataFrame([cells for cells, _ in pairs], columns=list(COMPARISON)).fillna("")
    return frame, [cls for _, cls in pairs]


def baselines_table() -> pd.DataFrame:
    columns = ["Method", "IN-1K top-1 ViT-B", "IN-1K top-1 ViT-L", "ADE20K mIoU ViT-B", "ADE20K mIoU ViT-L"]
    rows = [[name, *("–" if v is None else paper_number(v) for v in values)] for name, *values in BASELINES]
    return pd.DataFrame(rows, columns=columns)


def scratch_table(ev: Evidence) -> pd.DataFrame:
    """Each headline metric of a from-scratch baseline (`{stage}-random`) beside the pretrained backbone's."""
    rows = []
    for (run, stage, metric), scratch in sorted(ev.values.items()):
        if stage.endswith("-random") and metric in HEADLINE:
            pretrained = ev.value(run, stage.removesuffix("-random"), metric)
            delta = "—" if pretrained is None else f"{pretrained - scratch:+.4g}"
            rows.append([run, stage.removesuffix("-random"), metric, _num(pretrained), f"{scratch:.4g}", delta])
    return pd.DataFrame(rows, columns=["Run", "Stage", "Metric", "Pretrained", "From scratch", "Δ"])


def metrics_listing(ev: Evidence) -> pd.DataFrame:
    """Every recorded metric with its run's provenance."""
    rows = [
        {"Run": run, "Stage": stage, "Metric": metric, "Value": f"{value:.6g}",
         "Scale": ev.provenances[run, stage]["scale"], **provenance_cells(ev.provenances[run, stage])}
        for (run, stage, metric), value in sorted(ev.values.items())
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["Run", "Stage", "Metric", "Value", "Scale", "Checkpoint", "Params", "Commit",
                                       "Hardware", "Hours"])  # fmt: skip
