"""Evaluations show their progress on the main rank: segmentation's sliding windows at 512 px take minutes (issue
15, point 7), and the fine-tune's two evaluations of 10,000 images ~20 s each on 2 cores."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nepa.config import SegmentParams
from nepa.eval.classify import accuracy
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


@pytest.mark.parametrize("progress", ["nepa finetune: evaluation (ema weights)", None])
def test_accuracy_shows_a_progress_bar_when_named(capfd: pytest.CaptureFixture, progress: str | None) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 10))
    batches = [(torch.rand(2, 3, 2, 2), torch.randint(0, 10, (2,))) for _ in range(3)]
    scores = accuracy(model, batches, torch.device("cpu"), progress=progress)
    err = capfd.readouterr().err
    assert 0 <= scores["top1"] <= scores["top5"] <= 100
    assert (f"{progress}:" in err and "/3" in err) if progress else err == ""
