"""Segmentation's evaluation shows its progress: sliding windows at 512 px take minutes (issue 15, point 7)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nepa.config import SegmentParams
from nepa.eval.segment import evaluate


@pytest.mark.parametrize("progress", [True, False])
def test_slide_evaluation_shows_a_progress_bar_on_the_main_rank(capfd: pytest.CaptureFixture, progress: bool) -> None:
    s = SegmentParams(eval_mode="slide", crop=16, eval_stride=8)
    model = nn.Conv2d(3, 4, 1)
    batches = [(torch.rand(1, 3, 16, 24), torch.randint(0, 5, (1, 16, 24))) for _ in range(3)]
    confusion = evaluate(model, batches, s, 4, torch.device("cpu"), progress=progress)
    err = capfd.readouterr().err
    assert int(confusion.sum()) > 0
    assert ("nepa segment: evaluation (slide)" in err and "3/3" in err) == progress
