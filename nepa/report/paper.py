"""The paper's numbers (docs/paper.md: Tables 2, 3, 6, Table 1 and the appendix, baselines) and which run fills each.

Each row is listed by the variant whose run reproduces it at full scale (nepa/variants.py): the stage folder and
the metrics.json key that hold our number, the paper's number (or `outcome`, for what the paper saw fail), the
row it is compared with. The rows are also the experiment plan: nepa/plan.py runs what they name
(tests/test_plan.py).
"""

from __future__ import annotations

from nepa.variants import VARIANTS, PaperRow

HEADLINE_TABLES = ("2", "3", "6")
ABLATION_TABLES = ("1a", "1b", "1c", "1d", "1e", "App.")
TABLES = HEADLINE_TABLES + ABLATION_TABLES
MODEL_NAMES = {"base": "ViT-B", "large": "ViT-L"}


def _table_order(row: PaperRow) -> int:
    if row.table not in TABLES:
        raise ValueError(f"nepa/variants.py: row {row.key}'s table {row.table!r} is none of the paper's {TABLES}")
    return TABLES.index(row.table)


# Every variant's rows, by table; within a table in the order of the variants (nepa/variants.py VARIANTS).
ROWS: tuple[PaperRow, ...] = tuple(sorted((row for v in VARIANTS.values() for row in v.rows), key=_table_order))
BY_KEY = {row.key: row for row in ROWS}

# Context, not reproduced here: (method, ImageNet-1K top-1 B, L, ADE20K mIoU B, L); None where not reported.
BASELINES: tuple[tuple[str, float | None, float | None, float | None, float | None], ...] = (
    ("supervised", None, None, 47.4, 49.9),
    ("MoCo v3", 83.2, 84.1, 47.3, 49.1),
    ("BEiT", 83.4, 85.2, 47.1, 53.3),
    ("DINO", 83.6, None, None, None),
    ("iBOT", None, 84.8, None, None),
    ("MAE", 83.6, 85.6, 48.1, 53.6),
    ("I-JEPA", None, 85.2, None, None),
    ("NEPA (paper)", 83.8, 85.3, 48.3, 54.0),
    ("NEPA, official code's GeLU reproduction", 83.75, 85.40, None, None),
)
