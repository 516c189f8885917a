"""nepa/presets.py, nepa/report/paper.py and the estimate's cost assumption against docs/paper.md's tables."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from paper_doc import DOC, table

from nepa.config import Params, load_params
from nepa.cost import ASSUMED_COST
from nepa.models import MODEL_SIZES
from nepa.presets import ABLATION_BATCH, ABLATION_STEPS, PRETRAIN_COMMON, PRETRAIN_EPOCHS
from nepa.report.paper import ABLATION_TABLES, BASELINES, HEADLINE_TABLES, ROWS

RECIPE_TABLES = ("Pretraining", "ImageNet fine-tuning", "ADE20K semantic segmentation", "Linear probe")
PRESETS = [("paper", "base"), ("paper", "large"), ("official", "base"), ("official", "large")]
SIZE_COLUMNS = {"base": "ViT-B", "large": "ViT-L"}


def cell(text: str) -> Any:
    """A table value as YAML ('-': none)."""
    return None if text == "-" else yaml.safe_load(text)


def number(text: str) -> float | None:
    return None if text == "-" else float(text)


def full(tmp_path: Path, recipe: str, size: str) -> Params:
    path = tmp_path / "params.yaml"
    path.write_text(f"recipe: {recipe}\nscale: full\ndata: {{imagenet_src: /imagenet}}\n")
    return load_params(path, size=size)


def resolved(params: Params, key: str) -> Any:
    value: Any = params.model_dump(mode="json")
    for part in key.split("."):
        value = value[part]
    return value


@pytest.mark.parametrize(("recipe", "size"), PRESETS)
def test_recipe_tables_are_the_presets(tmp_path: Path, recipe: str, size: str) -> None:
    params = full(tmp_path, recipe, size)
    column = f"{recipe} {SIZE_COLUMNS[size][-1]}"
    checked = 0
    for name in RECIPE_TABLES:
        for row in table(name):
            expected, actual = cell(row[column]), resolved(params, row["key"])
            assert actual == (pytest.approx(expected) if isinstance(expected, float) else expected), (
                row["key"],
                column,
            )
            checked += 1
    assert checked >= 40


def test_model_sizes_are_the_documented_ones() -> None:
    for row in table("Model sizes"):
        fields = MODEL_SIZES[f"nepa_{row['size']}_patch14_224"]
        documented = tuple(int(row[k]) for k in ("width", "depth", "heads", "MLP", "patch"))
        assert (fields["embed_dim"], fields["depth"], fields["num_heads"], fields["mlp_hidden_dim"], 14) == documented
        assert (224 // int(row["patch"])) ** 2 == int(row["tokens"])


def _row_key(key: str, size: str) -> str:
    """docs/paper.md names a headline row once for both sizes; nepa/report/paper.py once per size."""
    keys = {row.key: row for row in ROWS}
    suffixed = f"{key}-{SIZE_COLUMNS[size][-1].lower()}"
    return suffixed if suffixed in keys else key


def test_headline_numbers_are_the_report_rows() -> None:
    rows = {row.key: row for row in ROWS}
    seen = set()
    for doc in table("Results to reproduce"):
        for size, column in SIZE_COLUMNS.items():
            if doc[column] == "-":
                continue
            row = rows[_row_key(doc["row"], size)]
            seen.add(row.key)
            assert (row.table, row.setting, row.size, row.paper) == (
                doc["table"],
                doc["setting"],
                size,
                number(doc[column]),
            )
    assert seen == {row.key for row in ROWS if row.table in HEADLINE_TABLES}


def test_ablation_numbers_schedules_and_comparisons_are_the_report_rows() -> None:
    rows = {row.key: row for row in ROWS}
    docs = table("Ablations")
    assert [d["row"] for d in docs] == [row.key for row in ROWS if row.table in ABLATION_TABLES]
    for doc in docs:
        row = rows[doc["row"]]
        assert (row.table, row.paper, row.size) == (doc["table"], number(doc["top-1"]), "base")
        assert row.versus == cell(doc["versus"])
        assert (row.outcome or "-") == doc["outcome"].split(":")[0]
        if doc["steps"] == "full":  # the appendix: the full ViT-B schedule of the pretraining table
            assert row.table not in ABLATION_STEPS and PRETRAIN_EPOCHS["paper", "base"] == 1600
            assert int(doc["batch"]) == PRETRAIN_COMMON["global_batch"]
        else:
            assert (ABLATION_STEPS[row.table], ABLATION_BATCH) == (int(doc["steps"]), int(doc["batch"]))


def test_baselines_are_the_documented_ones() -> None:
    documented = [
        (d["method"], *(number(d[k]) for k in ("ImageNet B", "ImageNet L", "ADE20K B", "ADE20K L")))
        for d in table("Baselines")
    ]
    assert documented == [b for b in BASELINES if not b[0].startswith("NEPA")]


def test_the_estimates_assumed_cost_is_the_papers() -> None:
    text = " ".join(DOC.read_text().split())
    found = re.search(
        r"8 × H100, about (\d+) days for ViT-B \((\d+) epochs\) and about (\d+) days for ViT-L "
        r"\((\d+) epochs\)",
        text,
    )
    assert found, "docs/paper.md states the paper's pretraining cost"
    b_days, b_epochs, l_days, l_epochs = map(int, found.groups())
    assert ASSUMED_COST["base"] == {"epochs": b_epochs, "days": b_days, "gpus": 8}
    assert ASSUMED_COST["large"] == {"epochs": l_epochs, "days": l_days, "gpus": 8}


def test_every_documented_decision_key_is_a_param() -> None:
    keys = [row["params key"] for row in table("Decisions") if row["params key"] != "-"]
    assert len(keys) >= 7
    for key in keys:
        resolved(Params(), key)
