"""Our numbers beside the paper's: one row per paper row, from every seed of the configuration that fills it.

A row's configuration is (model size, variant, stage, init); its number is the mean ± SD over the seeds that
ran it (nepa/report/spread.py), and a direction is marked only where a gap is beyond that seed noise. A value
compares with the paper's only from a full-scale run of the paper's model on the paper's schedule.
Reduced-scale runs (`scale: embedded`: a tiny model on Fashion-MNIST) stand in for the ViT-B rows and compare
in direction only: the order of two rows the paper compares, a collapse, a failure.

"Collapses" and "fails" are judged by criteria that full NEPA's own runs do not meet, and the reference
run's values are printed beside ours so that a reader can check:
  collapses  every seed ends pretraining at a loss ≤ COLLAPSE_LOSS *and* its exported input embeddings (the
             targets) are near-identical: mean pairwise cosine ≥ COLLAPSE_SIMILARITY (nepa/report/maps.py)
  fails      the run stopped on a non-finite loss (diverged), or its number is below the row it is compared
             with by more than the seed noise; for no AR shift the report also tests the objective for
             triviality (pretraining loss ≤ TRIVIAL_LOSS at the first logged step)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from nepa.layout import run_name
from nepa.presets import ABLATION_STEPS
from nepa.report.gather import PRETRAINED, PROVENANCE, RANDOM, RunKey
from nepa.report.paper import BASELINES, BY_KEY, MODEL_NAMES, ROWS, PaperRow
from nepa.report.spread import Spread, gap, seeds, verdict
from nepa.variants import VARIANTS, pretrained_by, stand_in

COLLAPSE_LOSS = -0.99  # the loss's minimum is -1: this close to it, the predictions copy the targets
# ... and the targets themselves are (nearly) one vector: nothing left to predict. The line only has to tell one
# vector from distinct targets (full NEPA's sit at 0.13-0.19, no AR shift's at 0.15, embedded scale); at 0.99 it sat on
# the collapsed runs' own float noise (0.990-0.994), at 0.9 (mean angle ~26 deg) it is far from both sides.
COLLAPSE_SIMILARITY = 0.9
TRIVIAL_LOSS = -0.99  # reached by the first logged step: the objective asks for nothing to be learned
STAND_INS = ("tiny", "small")  # sizes whose reduced-scale runs stand in for the paper's ViT-B rows
HEADLINE = {"val_top1": 1.0, "val_top1_last": 1.0, "val_top1_mean": 1.0, "val_miou": 100.0}  # metric -> unit (%)
NOT_RUN = "not run"
NOT_IN_PAPER = "— (not in the paper)"  # a researcher's own row (nepa/variants.py PaperRow.from_paper)
COMPARISON = ("Table", "Setting", "Model", "Paper", "Ours", "Δ ours − paper", "Direction", "Runs", "Seeds", "Scale",
              "Checkpoint", "Params", "Commit", "Hardware", "Hours")  # fmt: skip
ABLATION = ("Table", "Setting", "Paper", "Ours: fine-tune top-1", "Ours: probe top-1 (last · mean)",
            "Ours: pretraining loss (final)", "Compared with", "Direction", "Runs", "Seeds", "Scale",
            "Hours (pretrain · fine-tune · probe)", "Commit", "Hardware")  # fmt: skip


@dataclass
class Evidence:
    """What the runs say: metrics.json values by run identity, metrics.csv curves, the chance level and the
    target similarity of each exported pretraining run."""

    metrics: pd.DataFrame  # gather.metrics_table
    curves: dict[str, list[tuple[RunKey, pd.DataFrame]]]  # stage -> (run, its metrics.csv)
    chance: float | None  # top-1 of guessing, in percent (100 / classes of the prepared data); None: unknown
    similarity: dict[RunKey, float] = field(default_factory=dict)  # pretraining run -> its targets' similarity
    groups: dict[tuple[str, str, str, str], pd.DataFrame] = field(init=False)

    def __post_init__(self) -> None:
        keys = ["size", "variant", "stage", "init"]
        self.groups = {tuple(k): g for k, g in self.metrics.groupby(keys, sort=True)} if len(self.metrics) else {}

    def runs(self, size: str, variant: str, stage: str, init: str = PRETRAINED) -> pd.DataFrame:
        """Every metric row of the runs of one configuration (all seeds)."""
        init = "" if stage == "pretrain" else init
        return self.groups.get((size, variant, stage, init), self.metrics.iloc[:0])

    def spread(self, size: str, variant: str, stage: str, metric: str, init: str = PRETRAINED) -> Spread | None:
        rows = self.runs(size, variant, stage, init)
        rows = rows[rows["metric"] == metric].sort_values("seed")
        if not len(rows):
            return None
        return Spread(tuple(rows["value"]), tuple(None if pd.isna(s) else int(s) for s in rows["seed"]))

    def provenance(self, size: str, variant: str, stage: str, init: str = PRETRAINED) -> list[dict[str, Any]]:
        """One provenance per run (seed) of the configuration."""
        rows = self.runs(size, variant, stage, init).drop_duplicates("source")
        return [{k: None if pd.isna(r[k]) else r[k] for k in (*PROVENANCE, "seed")} for _, r in rows.iterrows()]

    def has(self, size: str, variant: str) -> bool:
        """Any run (finished or not) of this size and variant."""
        finished = ((self.metrics["size"] == size) & (self.metrics["variant"] == variant)).any()
        return bool(finished) or any(
            k.size == size and k.variant == variant for c in self.curves.values() for k, _ in c
        )

    def scale(self, size: str, variant: str) -> str | None:
        rows = self.metrics[(self.metrics["size"] == size) & (self.metrics["variant"] == variant)]
        return None if not len(rows) else rows["scale"].iloc[0]

    def stopped(self, size: str, variant: str, stage: str) -> bool:
        """A curve without metrics.json: the stage stopped (a non-finite loss exits 3) or is still running."""
        curves = [k for k, _ in self.curves.get(stage, []) if (k.size, k.variant) == (size, variant)]
        return bool(curves) and not len(self.runs(size, variant, stage))

    def _pretrain_curves(self, size: str, variant: str) -> list[pd.DataFrame]:
        return [c for k, c in self.curves.get("pretrain", []) if (k.size, k.variant) == (size, variant)]

    def first_loss(self, size: str, variant: str) -> Spread | None:
        """The pretraining loss at the first logged step, over seeds."""
        firsts = [float(c["loss"].iloc[0]) for c in self._pretrain_curves(size, variant)]
        return Spread(tuple(firsts)) if firsts else None

    def final_loss(self, size: str, variant: str) -> Spread | None:
        done = self.spread(size, variant, "pretrain", "final_loss")
        lasts = [float(c["loss"].iloc[-1]) for c in self._pretrain_curves(size, variant)]
        return done or (Spread(tuple(lasts)) if lasts else None)

    def pretrain_steps(self, size: str, variant: str) -> float | None:
        steps = self.spread(size, variant, "pretrain", "steps")
        return None if steps is None else steps.mean

    def target_similarity(self, size: str, variant: str) -> Spread | None:
        found = [v for k, v in sorted(self.similarity.items(), key=str) if (k.size, k.variant) == (size, variant)]
        return Spread(tuple(found)) if found else None


def size_for(row: PaperRow, ev: Evidence) -> str | None:
    """The size whose runs fill the row: its own, or for a ViT-B row a reduced-scale run of its variant's stand-in."""
    candidates = [row.size, *(STAND_INS if row.size == "base" else ())]
    return next((size for size in candidates if ev.has(size, variant_at(row.variant, size, row))), None)


def variant_at(variant: str, size: str, row: PaperRow) -> str:
    """The variant whose runs stand for `variant` in `row` at `size`: itself at the row's own size, else its
    reduced-scale stand-in (nepa/variants.py stand_in)."""
    return variant if size == row.size else stand_in(variant)


def incomparable(row: PaperRow, size: str, ev: Evidence) -> str:
    """Why our value does not compare with the paper's in value ('' when it does)."""
    scale = ev.scale(size, variant_at(row.variant, size, row))
    if scale != "full":
        return f"reduced scale ({scale or 'unknown'}, {size} model)"
    if size != row.size:
        return f"{size} model"
    steps, expected = ev.pretrain_steps(size, pretrained_by(row.variant)), ABLATION_STEPS.get(row.table)
    if expected is not None and steps != expected:
        return f"pretrained {steps:g} steps, the paper {expected}"
    if expected is None and (table := VARIANTS[row.variant].schedule):  # a Table 1 variant gets its schedule
        return f"pretrained on Table {table}'s schedule"
    return ""


def paper_number(x: float) -> str:
    """As the paper writes it: one decimal, two where it gives two (83.75)."""
    return f"{x:.1f}" if round(x, 1) == x else f"{x:.2f}"


def paper_cell(row: PaperRow) -> str:
    """What the paper says of the row: its number, what it saw instead, or that the row is not the paper's."""
    if row.paper is not None:
        return paper_number(row.paper)
    return f"{row.outcome} ({row.note})" if row.outcome else NOT_IN_PAPER


def ours(row: PaperRow, size: str, ev: Evidence, at: PaperRow | None = None) -> Spread | None:
    """The row's metric over the seeds of `size` and the row's variant (stood in for as in row `at`), in the
    paper's unit."""
    found = ev.spread(size, variant_at(row.variant, size, at or row), row.stage, row.metric)
    return None if found is None else Spread(tuple(v * row.unit for v in found.values), found.seeds)


def pretraining(variant: str, size: str, row: PaperRow) -> str:
    """The variant whose pretraining run (and export) `variant`'s runs in `row` at `size` started from."""
    return pretrained_by(variant_at(variant, size, row))


def _collapse(row: PaperRow, size: str, ref: PaperRow | None, ev: Evidence) -> str:
    variant = pretraining(row.variant, size, row)
    loss, similarity = ev.final_loss(size, variant), ev.target_similarity(size, variant)
    if loss is None:
        return "ours: no pretraining loss yet"
    collapsed = max(loss.values) <= COLLAPSE_LOSS and similarity is not None
    collapsed = collapsed and min(similarity.values) >= COLLAPSE_SIMILARITY
    text = f"final loss {loss.text(4)}, target similarity {'—' if similarity is None else similarity.text(3)}"
    ref_variant = None if ref is None else pretraining(ref.variant, size, row)
    if ref_variant is not None and (ref_loss := ev.final_loss(size, ref_variant)) is not None:
        ref_similarity = ev.target_similarity(size, ref_variant)
        text += (f"; {ref.setting}: {ref_loss.text(4)}, "
                 f"{'—' if ref_similarity is None else ref_similarity.text(3)}")  # fmt: skip
    criterion = f"every seed loss ≤ {COLLAPSE_LOSS} and similarity ≥ {COLLAPSE_SIMILARITY}"
    return f"ours: {'collapses ✓' if collapsed else 'no collapse ✗'} ({text}; criterion: {criterion})"


def _fails(row: PaperRow, size: str, ref: PaperRow | None, ev: Evidence) -> str:
    variant = variant_at(row.variant, size, row)
    if ev.stopped(size, pretrained_by(variant), "pretrain") or ev.stopped(size, variant, row.stage):
        return "ours: diverges ✓ (stopped on a non-finite loss, no metrics.json; or still running)"
    notes = []
    first = ev.first_loss(size, pretrained_by(variant))
    if first is not None and max(first.values) <= TRIVIAL_LOSS:
        ref_first = ev.first_loss(size, pretraining(ref.variant, size, row)) if ref else None
        beside = f"; {ref.setting}: {ref_first.text(3)}" if ref and ref_first else ""
        notes.append(f"trivial objective ✓ (loss at the first logged step {first.text(4)}{beside})")
    mine, theirs = ours(row, size, ev), ours(ref, size, ev, row) if ref else None
    if mine is not None and theirs is not None:
        worse = verdict(gap(mine, theirs), "<")
        notes.append(f"{row.stage} {mine.mean:.2f} vs {ref.setting} {theirs.mean:.2f}: worse {worse}; "
                     "no divergence at this scale")  # fmt: skip
    elif ref is not None:
        notes.append(f"{ref.setting}: {NOT_RUN}")
    return "ours: " + "; ".join(notes) if notes else ""


def expected_order(row: PaperRow, ref: PaperRow | None) -> str | None:
    """The paper's order of `row` against `ref`: '<', '>' or '='; '<' for a row that fails; None without one."""
    if ref is None:
        return None
    if row.outcome == "fails":
        return "<"
    if ref.paper is None or row.paper is None:
        return None
    return "<" if row.paper < ref.paper else ">" if row.paper > ref.paper else "="


def probe_direction(row: PaperRow, size: str, ev: Evidence) -> str:
    """The row's linear probe (last embedding) against the compared row's, judged against seed noise: at
    embedded scale the steadier signal of what a pretraining learned. The paper gives no probe for Table 1: the
    order expected is its fine-tune's (worse, for a row that fails). '' where the two rows share a pretraining
    or the row collapses (judged on its pretraining instead)."""
    ref = BY_KEY[row.versus] if row.versus else None
    expected = expected_order(row, ref)
    if ref is None or expected is None or row.outcome == "collapses":
        return ""
    sources = [pretraining(r.variant, size, row) for r in (row, ref)]
    if sources[0] == sources[1]:
        return ""
    mine, theirs = (ev.spread(size, source, "probe", "val_top1_last") for source in sources)
    if mine is None or theirs is None:
        return ""
    observed = gap(mine, theirs)
    return f"probe {mine.mean:.2f} {observed.sign} {theirs.mean:.2f} ({ref.setting}) {verdict(observed, expected)}"


def direction(row: PaperRow, size: str, ev: Evidence) -> str:
    """Whether our runs go the paper's way, judged against seed noise; see the module doc for the criteria."""
    ref = BY_KEY[row.versus] if row.versus else None
    if row.outcome == "collapses":
        return _collapse(row, size, ref, ev)
    if row.outcome == "fails":
        return _fails(row, size, ref, ev)
    mine = ours(row, size, ev)
    if ref is not None and mine is not None and not row.from_paper:  # ours beside its compared row, no verdict
        theirs = ours(ref, size, ev, row)
        beside = NOT_RUN if theirs is None else f"{gap(mine, theirs).sign} {theirs.mean:.2f}"
        return f"ours {mine.mean:.2f} {beside} ({ref.setting})"
    paper_sign = expected_order(row, ref)
    if ref is None or paper_sign is None or mine is None:
        return ""
    paper = f"paper {paper_number(row.paper)} {paper_sign} {paper_number(ref.paper)} ({ref.setting})"
    theirs = ours(ref, size, ev, row)
    if theirs is None:
        return f"{paper} · ours: {ref.setting} {NOT_RUN}"
    observed = gap(mine, theirs)
    return f"{paper} · ours {mine.mean:.2f} {observed.sign} {theirs.mean:.2f} {verdict(observed, paper_sign)}"


def _short(values: list[Any], width: int = 12) -> str:
    """Distinct values, shortened, in order: one cell for the runs of every seed."""
    distinct = dict.fromkeys((str(v)[:width] + ("-dirty" if str(v).endswith("-dirty") else "")) for v in values if v)
    return " ".join(distinct) or "—"


def _hours(provenances: list[dict[str, Any]]) -> str:
    hours = [p["hours"] for p in provenances if p.get("hours") is not None]
    if not hours:
        return ""
    return f"{sum(hours) / len(hours):.3g}" + (f" (mean of {len(hours)})" if len(hours) > 1 else "")


def provenance_cells(provenances: list[dict[str, Any]]) -> dict[str, str]:
    """The runs' checkpoints, params hashes and commits (short, distinct), hardware and mean hours, as cells."""
    return {
        "Checkpoint": _short([p.get("checkpoint_sha256") for p in provenances]),
        "Params": _short([p.get("params_sha256") for p in provenances]),
        "Commit": _short([p.get("git_commit") for p in provenances]),
        "Hardware": " · ".join(dict.fromkeys(p["hardware"] for p in provenances if p.get("hardware"))),
        "Hours": _hours(provenances),
    }


def _seeds(spread: Spread | None) -> str:
    return "" if spread is None else ", ".join("?" if s is None else str(s) for s in spread.seeds)


def compare(row: PaperRow, ev: Evidence) -> tuple[dict[str, str], str]:
    """One paper row as table cells, and its class: 'notrun' (no value), 'reduced' (direction only) or ''."""
    cells = {"Table": row.table, "Setting": row.setting, "Model": MODEL_NAMES[row.size], "Paper": paper_cell(row)}
    size = size_for(row, ev)
    if size is None:
        return {**cells, "Ours": NOT_RUN}, "notrun"
    mine, variant = ours(row, size, ev), variant_at(row.variant, size, row)
    cells |= {"Direction": direction(row, size, ev), "Runs": run_name(size, variant),
              "Scale": ev.scale(size, variant) or ""}  # fmt: skip
    if mine is None:
        stopped = ev.stopped(size, variant, row.stage)
        missing = f"stopped ({row.stage}: no metrics.json)" if stopped else f"{NOT_RUN} ({row.stage})"
        return {**cells, "Ours": missing}, "notrun"
    why_not = incomparable(row, size, ev)
    delta = f"n/a: {why_not}" if why_not else "—" if row.paper is None else f"{mine.mean - row.paper:+.2f}"
    provenances = ev.provenance(size, variant, row.stage)
    cells |= {"Ours": mine.text(), "Δ ours − paper": delta, "Seeds": _seeds(mine), **provenance_cells(provenances)}
    return cells, "reduced" if why_not else ""


def paper_table(ev: Evidence, tables: tuple[str, ...]) -> tuple[pd.DataFrame, list[str]]:
    """The comparison rows of the paper's `tables` and their classes (see `compare`)."""
    pairs = [compare(row, ev) for row in ROWS if row.table in tables]
    frame = pd.DataFrame([cells for cells, _ in pairs], columns=list(COMPARISON)).fillna("")
    return frame, [cls for _, cls in pairs]


def ablation_row(row: PaperRow, ev: Evidence) -> tuple[dict[str, str], str]:
    """A Table 1 row with every stage of its runs: fine-tune, probe and pretraining loss, each stage's hours."""
    cells, cls = compare(row, ev)
    size = size_for(row, ev)
    out = {k: cells.get(k, "") for k in ("Table", "Setting", "Paper", "Direction", "Runs", "Seeds", "Scale",
                                          "Commit", "Hardware")}  # fmt: skip
    ref = BY_KEY[row.versus] if row.versus else None
    ref_variant = None if ref is None else ref.variant if size is None else variant_at(ref.variant, size, row)
    out["Compared with"] = "" if ref is None else f"{ref.setting} ({ref_variant})"
    if size is None:
        return {**out, "Ours: fine-tune top-1": NOT_RUN}, "notrun"
    variant = variant_at(row.variant, size, row)
    source = pretrained_by(variant)  # a fine-tune-only variant's probe and pretraining are its source's
    finetune = ev.spread(size, variant, "finetune", "val_top1")
    last, mean = (ev.spread(size, source, "probe", f"val_top1_{p}") for p in ("last", "mean"))
    loss = ev.final_loss(size, source)
    out["Ours: fine-tune top-1"] = NOT_RUN if finetune is None else finetune.text()
    probe = NOT_RUN if last is None or mean is None else f"{last.short()} · {mean.short()} ({seeds(last.n)})"
    out["Ours: probe top-1 (last · mean)"] = probe
    out["Ours: pretraining loss (final)"] = NOT_RUN if loss is None else loss.text(4)
    hours = [_hours(ev.provenance(size, v, stage)) or "—"
             for v, stage in ((source, "pretrain"), (variant, "finetune"), (source, "probe"))]  # fmt: skip
    out["Hours (pretrain · fine-tune · probe)"] = " · ".join(hours)
    out["Direction"] = " · ".join(filter(None, (out["Direction"], probe_direction(row, size, ev))))
    return out, cls if finetune is not None or loss is not None else "notrun"


def ablation_table(ev: Evidence, tables: tuple[str, ...]) -> tuple[pd.DataFrame, list[str]]:
    pairs = [ablation_row(row, ev) for row in ROWS if row.table in tables]
    frame = pd.DataFrame([cells for cells, _ in pairs], columns=list(ABLATION)).fillna("")
    return frame, [cls for _, cls in pairs]


def baselines_table() -> pd.DataFrame:
    columns = ["Method", "IN-1K top-1 ViT-B", "IN-1K top-1 ViT-L", "ADE20K mIoU ViT-B", "ADE20K mIoU ViT-L"]
    rows = [[name, *("–" if v is None else paper_number(v) for v in values)] for name, *values in BASELINES]
    return pd.DataFrame(rows, columns=columns)


def scratch_table(ev: Evidence) -> pd.DataFrame:
    """Each headline metric of the from-scratch baselines (init random) beside the pretrained backbone's, over
    seeds, and whether pretraining wins beyond seed noise."""
    rows = []
    for size, variant, stage, init in ev.groups:
        if init != RANDOM:
            continue
        for metric, unit in HEADLINE.items():
            scratch = ev.spread(size, variant, stage, metric, RANDOM)
            pretrained = ev.spread(size, variant, stage, metric)
            if scratch is None:
                continue
            scratch = Spread(tuple(v * unit for v in scratch.values), scratch.seeds)
            pretrained = None if pretrained is None else Spread(tuple(v * unit for v in pretrained.values),
                                                                pretrained.seeds)  # fmt: skip
            observed = None if pretrained is None else gap(pretrained, scratch)
            rows.append([
                run_name(size, variant), stage, metric, pretrained.text() if pretrained else NOT_RUN, scratch.text(),
                "—" if observed is None else f"{observed.difference:+.2f}",
                "—" if observed is None else verdict(observed, ">"),
                " · ".join(_hours(ev.provenance(size, variant, stage, i)) or "—" for i in (PRETRAINED, RANDOM)),
            ])  # fmt: skip
    columns = ["Runs", "Stage", "Metric (%)", "Pretrained (NEPA)", "Random init", "Δ", "Pretrained better",
               "Hours (pretrained · random)"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def metrics_listing(ev: Evidence) -> pd.DataFrame:
    """Every recorded metric with its run's identity and provenance."""
    m = ev.metrics
    rows = [
        {"Run": r.run, "Seed": "?" if pd.isna(r.seed) else int(r.seed), "Init": r.init, "Metric": r.metric,
         "Value": f"{r.value:.6g}", "Scale": r.scale,
         **provenance_cells([{k: getattr(r, k) for k in PROVENANCE}])}
        for r in m.sort_values(["run", "metric"]).itertuples()
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["Run", "Seed", "Init", "Metric", "Value", "Scale", "Checkpoint", "Params",
                                       "Commit", "Hardware", "Hours"])  # fmt: skip
