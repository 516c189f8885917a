"""The report's downstream figure tells pretrained from random init where a curve is a single evaluation."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from matplotlib.figure import Figure

from nepa.report import figures
from nepa.report.gather import PRETRAINED, RANDOM, RunKey


def test_random_init_has_open_markers_where_pretrained_has_filled(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[Figure] = []
    monkeypatch.setattr(figures, "save", lambda fig, path: drawn.append(fig) or path)
    one_evaluation = pd.DataFrame({"step": [10, 20], "loss": [2.0, 1.5], "val_top1": [None, 60.0]})
    curves = [(RunKey("tiny", "nepa", seed, init, "finetune"), one_evaluation) for init in (PRETRAINED, RANDOM)
              for seed in (0, 1)]  # fmt: skip
    figures.downstream(curves, Path("unused.png"), "finetune", accuracy=("val_top1",))
    accuracy_lines = drawn[0].axes[-1].get_lines()
    faces = {line.get_label().split(",")[1].strip(): line.get_markerfacecolor() for line in accuracy_lines}
    assert faces[f"{RANDOM} init"] == "none"
    assert faces[f"{PRETRAINED} init"] != "none"
    # the same colour for one size and variant: the markers are what tells the two apart
    assert len({line.get_color() for line in accuracy_lines}) == 1
