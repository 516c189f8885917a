"""The paper's numbers (docs/paper.md: Tables 2, 3, 6, Table 1 and the appendix, baselines) and which run fills each.

A row names the variant (nepa/presets.py ABLATIONS) whose run reproduces it at full scale, the stage folder and
the metrics.json key that holds our number. Rows the paper reports as failures carry `outcome` instead of a
number. The rows are also the experiment plan: nepa/plan.py runs what they name (tests/test_plan.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Outcome = Literal["", "fails", "collapses"]
HEADLINE_TABLES = ("2", "3", "6")
ABLATION_TABLES = ("1a", "1b", "1c", "1d", "1e", "App.")
MODEL_NAMES = {"base": "ViT-B", "large": "ViT-L"}


@dataclass(frozen=True)
class PaperRow:
    key: str  # unique; what `versus` refers to
    table: str  # "2", "3", "6", "1a".."1e", "App."
    setting: str
    variant: str  # the run variant that reproduces the row
    paper: float | None  # None: the paper saw `outcome` instead of a number
    stage: str = "finetune"  # the run's stage folder holding the metric; Table 1 and 2 read the
    metric: str = "val_top1"  # fine-tuned top-1 of the EMA model (finetune.report: ema_final)
    size: str = "base"
    outcome: Outcome = ""
    note: str = ""  # the paper's words for the outcome
    versus: str | None = None  # key of the row the paper compares this one with: the direction to reproduce
    unit: float = 1.0  # our metric x unit is in the paper's unit (mIoU is stored as a fraction)


# fmt: off
ROWS: tuple[PaperRow, ...] = (
    PaperRow("t2-bi-b", "2", "ImageNet-1K top-1, bidirectional fine-tune", "nepa", 83.8),
    PaperRow("t2-bi-l", "2", "ImageNet-1K top-1, bidirectional fine-tune", "nepa", 85.3, size="large"),
    PaperRow("t2-causal-b", "2", "ImageNet-1K top-1, causal fine-tune", "ft_causal", 82.5, versus="t2-bi-b"),
    PaperRow("t2-causal-l", "2", "ImageNet-1K top-1, causal fine-tune", "ft_causal", 84.1, size="large",
             versus="t2-bi-l"),
    PaperRow("t3-b", "3", "ADE20K mIoU, UperNet", "nepa", 48.3, "segment", "val_miou", unit=100),
    PaperRow("t3-l", "3", "ADE20K mIoU, UperNet", "nepa", 54.0, "segment", "val_miou", "large", unit=100),
    PaperRow("t6-last", "6", "linear probe, last embedding", "nepa", 11.3, "probe", "val_top1_last"),
    PaperRow("t6-mean", "6", "linear probe, mean embedding", "nepa", 14.1, "probe", "val_top1_mean",
             versus="t6-last"),
    # Table 1: ViT-B, pretraining batch 2048, 50k (1a) or 100k (1b-1e) steps; each sub-table's full NEPA is the
    # baseline run on its schedule (nepa_50k, nepa_100k)
    PaperRow("1a-full", "1a", "full NEPA", "nepa_50k", 76.8),
    PaperRow("1a-no-shift", "1a", "no AR shift", "no_shift", None, outcome="fails", note="fine-tuning diverges",
             versus="1a-full"),
    PaperRow("1a-no-causal", "1a", "no causal mask", "no_causal", 73.6, versus="1a-full"),
    # a collapse shows in the pretraining loss: no fine-tuning of a collapsed model
    PaperRow("1a-no-stop-grad", "1a", "no stop-grad", "no_stop_grad", None, "pretrain", "final_loss",
             outcome="collapses", note="loss → −1", versus="1a-full"),
    PaperRow("1b-plain", "1b", "plain ViT", "plain_vit", 78.2),
    PaperRow("1b-ls", "1b", "+LayerScale", "ls", 77.4, versus="1b-plain"),
    PaperRow("1b-ls-rope", "1b", "+LS +RoPE", "ls_rope", 80.2, versus="1b-ls"),
    PaperRow("1b-swiglu", "1b", "+LS +RoPE +SwiGLU, no QK-Norm", "ls_rope_swiglu", None, outcome="fails",
             note="unstable without QK-Norm", versus="1b-ls-rope"),
    PaperRow("1b-qknorm", "1b", "+LS +RoPE +QK-Norm", "ls_rope_qknorm", 81.1, versus="1b-ls-rope"),
    PaperRow("1b-all", "1b", "all four (NEPA)", "nepa_100k", 81.3, versus="1b-qknorm"),
    PaperRow("1c-0", "1c", "input masking 0%", "nepa_100k", 78.2),
    PaperRow("1c-40", "1c", "input masking 40%", "mask_40", 76.4, versus="1c-0"),
    PaperRow("1c-60", "1c", "input masking 60%", "mask_60", 75.7, versus="1c-0"),
    PaperRow("1d-frozen", "1d", "patch embedding frozen at fine-tune", "nepa_100k", 77.4),
    PaperRow("1d-trained", "1d", "patch embedding trained at fine-tune", "ft_patch_embed_trained", 73.1,
             versus="1d-frozen"),
    PaperRow("1e-bi", "1e", "bidirectional fine-tune attention", "nepa_100k", 82.5),
    PaperRow("1e-causal", "1e", "causal fine-tune attention", "ft_causal_100k", 81.3, versus="1e-bi"),
    # appendix: ViT-B on the full schedule
    PaperRow("app-swiglu", "App.", "SwiGLU MLP", "nepa", 83.8),
    PaperRow("app-gelu", "App.", "GeLU MLP", "gelu", 83.6, versus="app-swiglu"),
)
# fmt: on
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
