"""nepa/variants.py: each variant one record, consistent in itself, documented in docs/paper.md's variant table,
and named in no other module of the package (everything else derives from the record)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from paper_doc import table
from test_report_seeds import record

from nepa.presets import ABLATION_STEPS
from nepa.report import gather, tables
from nepa.report.paper import ABLATION_TABLES, BY_KEY, ROWS
from nepa.variants import VARIANTS, PaperRow, Variant

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("variant", "overrides", "schedule", "fine-tunes the pretraining of", "rows", "ablations default")
# Variant names that are also other words of the code: the method (and package), an MLP value, a variable.
COMMON_WORDS = {"nepa", "gelu", "ls"}


def documented(v: Variant) -> dict[str, str]:
    """The variant's row of docs/paper.md's table, as it should read."""
    overrides = yaml.safe_dump(v.overrides, default_flow_style=True, sort_keys=False).strip() if v.overrides else "-"
    return {
        "variant": v.name,
        "overrides": overrides,
        "schedule": v.schedule or "full",
        "fine-tunes the pretraining of": v.pretrained_by or "-",
        "rows": ", ".join(row.key for row in v.rows) or "-",
        "ablations default": "yes" if v.in_default_ablations else "-",
    }


def test_docs_variant_table_is_the_registry() -> None:
    expected = [documented(v) for v in VARIANTS.values() if any(row.from_paper for row in v.rows)]
    lines = [f"| {' | '.join(COLUMNS)} |", f"|{'---|' * len(COLUMNS)}"]
    lines += [f"| {' | '.join(row[c] for c in COLUMNS)} |" for row in expected]
    assert table("Variants") == expected, "docs/paper.md's variant table should read:\n" + "\n".join(lines)


def test_the_variant_table_reads_as_the_records_it_documents() -> None:
    """The table's cells parse back to the records: nothing is lost in the rendering the test above compares."""
    for doc in table("Variants"):
        v = VARIANTS[doc["variant"]]
        assert (yaml.safe_load(doc["overrides"]) if doc["overrides"] != "-" else {}) == v.overrides
        assert doc["schedule"] == (v.schedule or "full")


def test_each_record_is_consistent() -> None:
    assert len({row.key for row in ROWS}) == len(ROWS) == sum(len(v.rows) for v in VARIANTS.values())
    for name, v in VARIANTS.items():
        assert v.name == name and all(row.variant == name for row in v.rows)
        assert v.schedule is None or v.schedule in ABLATION_STEPS, name
        if v.pretrained_by:  # it reuses a pretraining that is not itself borrowed, on the same schedule
            source = VARIANTS[v.pretrained_by]
            assert source.pretrained_by is None and set(v.overrides) == {"finetune"}, name
            assert ABLATION_STEPS.get(v.schedule) == ABLATION_STEPS.get(source.schedule), name
        for row in v.rows:
            assert row.versus is None or row.versus in BY_KEY, row.key
            if row.table in ABLATION_STEPS:  # a Table 1 row's run pretrains on that sub-table's steps
                assert ABLATION_STEPS[v.schedule] == ABLATION_STEPS[row.table], row.key
            elif row.table in ABLATION_TABLES:  # the appendix: the full schedule
                assert v.schedule is None, row.key
        if v.in_default_ablations:
            assert any(row.table in ABLATION_TABLES for row in v.rows), name


def test_a_variants_name_is_in_one_module() -> None:
    """Grep finds a variant in nepa/variants.py alone: the plan, the params, the report and the workflow read it
    from there."""
    code = [*(ROOT / "nepa").rglob("*.py"), *(ROOT / "workflow").rglob("*.smk"), ROOT / "Snakefile"]
    texts = {path.relative_to(ROOT).as_posix(): path.read_text() for path in code}
    for name in set(VARIANTS) - COMMON_WORDS:
        word = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")
        assert [path for path, text in texts.items() if word.search(text)] == ["nepa/variants.py"], name


def test_a_researchers_own_row_is_shown_beside_its_compared_row_without_a_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row with no paper value and no outcome is not the paper's: the report says so and gives our number beside
    the compared row's (here 1c's baseline, run at embedded scale as nepa_50k), judging no direction."""
    row = PaperRow("1c-20", "1c", "input masking 20%", None, versus="1c-0")
    monkeypatch.setitem(VARIANTS, "mask_20", Variant("mask_20", {"objective": {"mask_ratio": 0.2}}, "1c", rows=(row,)))
    row = VARIANTS["mask_20"].rows[0]
    assert not row.from_paper and all(r.from_paper for r in ROWS)
    runs = tmp_path / "runs"
    for variant, values in {"mask_20": (60.0, 61.0), "nepa_50k": (62.0, 63.0)}.items():
        for seed, top1 in enumerate(values):
            record(runs / f"tiny-{variant}-s{seed}" / "finetune", "finetune", {"val_top1": top1}, variant, seed, "x")
    cells, _ = tables.ablation_row(row, tables.Evidence(gather.metrics_table(runs), {}, chance=10.0))
    assert cells["Paper"] == "— (not in the paper)" and cells["Runs"] == "tiny-mask_20"
    assert cells["Direction"] == "ours 60.50 < 62.50 (input masking 0%)"
