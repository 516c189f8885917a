"""The experiment's variants, one record each: the params it changes, the schedule it pretrains on, whose
pretraining it reuses, the paper's rows it reproduces (with the paper's values) and whether `snakemake ablations`
runs it by default.

Everything else is derived from VARIANTS: `--variant NAME`'s params layer and the default `ablation_variants`
(nepa/config.py), which runs each DAG target needs (nepa/plan.py), the report's rows (nepa/report/paper.py);
tests/test_variants.py checks docs/paper.md's variant table against it. docs/howto.md adds one, end to end.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from nepa.presets import Layer

Outcome = Literal["", "fails", "collapses"]


@dataclass(frozen=True)
class PaperRow:
    """A row of the report's comparison tables: one of the paper's, or a researcher's own (no `paper` value and
    no `outcome`: nothing of the paper's to reproduce, ours is shown beside the row it is compared with)."""

    key: str  # unique; what `versus` refers to
    table: str  # "2", "3", "6", "1a".."1e", "App." (nepa/report/paper.py TABLES)
    setting: str
    paper: float | None  # None: the paper saw `outcome` instead of a number (or the row is not the paper's)
    stage: str = "finetune"  # the run's stage folder holding the metric; Table 1 and 2 read the
    metric: str = "val_top1"  # fine-tuned top-1 of the EMA model (finetune.report: ema_final)
    size: str = "base"
    outcome: Outcome = ""
    note: str = ""  # the paper's words for the outcome
    versus: str | None = None  # key of the row the paper compares this one with: the direction to reproduce
    unit: float = 1.0  # our metric x unit is in the paper's unit (mIoU is stored as a fraction)
    variant: str = ""  # the run variant that reproduces the row: set by the Variant that lists it

    @property
    def from_paper(self) -> bool:
        return self.paper is not None or bool(self.outcome)


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: Layer = field(default_factory=dict)  # a params layer over params.yaml (nepa/config.py)
    # The Table 1 sub-table whose pretraining schedule it runs on (nepa/presets.py ablation_schedule, at either
    # scale); None: the recipe's own schedule.
    schedule: str | None = None
    # A fine-tune-only variant changes nothing before fine-tuning: it fine-tunes this variant's pretrained model.
    pretrained_by: str | None = None
    rows: tuple[PaperRow, ...] = ()  # the rows its runs fill, in their tables' order
    in_default_ablations: bool = False  # in params' default `ablation_variants` (what `snakemake ablations` runs)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", tuple(dataclasses.replace(row, variant=self.name) for row in self.rows))


_NO_BUNDLE = {"layerscale": False, "rope": False, "mlp": "gelu", "qk_norm": False}


def _variants(*variants: Variant) -> dict[str, Variant]:
    return {v.name: v for v in variants}


# Order matters twice: the report lists each table's rows in this order, and at embedded scale a variant runs as
# the first one that means the same there (stand_in below).
# fmt: off
VARIANTS: dict[str, Variant] = _variants(
    # the method itself: the headline rows and the appendix's SwiGLU, on the recipe's full schedule
    Variant("nepa", {}, rows=(
        PaperRow("t2-bi-b", "2", "ImageNet-1K top-1, bidirectional fine-tune", 83.8),
        PaperRow("t2-bi-l", "2", "ImageNet-1K top-1, bidirectional fine-tune", 85.3, size="large"),
        PaperRow("t3-b", "3", "ADE20K mIoU, UperNet", 48.3, stage="segment", metric="val_miou", unit=100),
        PaperRow("t3-l", "3", "ADE20K mIoU, UperNet", 54.0, stage="segment", metric="val_miou", size="large",
                 unit=100),
        PaperRow("t6-last", "6", "linear probe, last embedding", 11.3, stage="probe", metric="val_top1_last"),
        PaperRow("t6-mean", "6", "linear probe, mean embedding", 14.1, stage="probe", metric="val_top1_mean",
                 versus="t6-last"),
        PaperRow("app-swiglu", "App.", "SwiGLU MLP", 83.8),
    )),
    # Table 2's causal row: a fine-tune of the full-schedule pretraining
    Variant("ft_causal", {"finetune": {"attention": "causal"}}, pretrained_by="nepa", rows=(
        PaperRow("t2-causal-b", "2", "ImageNet-1K top-1, causal fine-tune", 82.5, versus="t2-bi-b"),
        PaperRow("t2-causal-l", "2", "ImageNet-1K top-1, causal fine-tune", 84.1, size="large", versus="t2-bi-l"),
    )),
    # Table 1: ViT-B, pretraining batch 2048, 50k (1a) or 100k (1b-1e) steps; each sub-table's full NEPA is the
    # baseline run on its schedule (at embedded scale one schedule for all: nepa_50k)
    Variant("nepa_50k", {}, schedule="1a", rows=(
        PaperRow("1a-full", "1a", "full NEPA", 76.8),
    )),
    # 1a: the objective's switches
    Variant("no_shift", {"objective": {"shift": False}}, schedule="1a", in_default_ablations=True, rows=(
        PaperRow("1a-no-shift", "1a", "no AR shift", None, outcome="fails", note="fine-tuning diverges",
                 versus="1a-full"),
    )),
    Variant("no_causal", {"objective": {"causal": False}}, schedule="1a", in_default_ablations=True, rows=(
        PaperRow("1a-no-causal", "1a", "no causal mask", 73.6, versus="1a-full"),
    )),
    Variant("no_stop_grad", {"objective": {"stop_grad": False}}, schedule="1a", in_default_ablations=True, rows=(
        # a collapse shows in the pretraining loss: no fine-tuning of a collapsed model
        PaperRow("1a-no-stop-grad", "1a", "no stop-grad", None, stage="pretrain", metric="final_loss",
                 outcome="collapses", note="loss → −1", versus="1a-full"),
    )),
    # 1b: the stability bundle, one component at a time
    Variant("plain_vit", {"model": _NO_BUNDLE}, schedule="1b", in_default_ablations=True, rows=(
        PaperRow("1b-plain", "1b", "plain ViT", 78.2),
    )),
    Variant("ls", {"model": {**_NO_BUNDLE, "layerscale": True}}, schedule="1b", in_default_ablations=True, rows=(
        PaperRow("1b-ls", "1b", "+LayerScale", 77.4, versus="1b-plain"),
    )),
    Variant("ls_rope", {"model": {**_NO_BUNDLE, "layerscale": True, "rope": True}}, schedule="1b",
            in_default_ablations=True, rows=(
        PaperRow("1b-ls-rope", "1b", "+LS +RoPE", 80.2, versus="1b-ls"),
    )),
    Variant("ls_rope_swiglu", {"model": {**_NO_BUNDLE, "layerscale": True, "rope": True, "mlp": "swiglu"}},
            schedule="1b", in_default_ablations=True, rows=(
        PaperRow("1b-swiglu", "1b", "+LS +RoPE +SwiGLU, no QK-Norm", None, outcome="fails",
                 note="unstable without QK-Norm", versus="1b-ls-rope"),
    )),
    Variant("ls_rope_qknorm", {"model": {**_NO_BUNDLE, "layerscale": True, "rope": True, "qk_norm": True}},
            schedule="1b", in_default_ablations=True, rows=(
        PaperRow("1b-qknorm", "1b", "+LS +RoPE +QK-Norm", 81.1, versus="1b-ls-rope"),
    )),
    # the full NEPA of 1b-1e: one 100k-step run, each sub-table's rows compared with it
    Variant("nepa_100k", {}, schedule="1b", rows=(
        PaperRow("1b-all", "1b", "all four (NEPA)", 81.3, versus="1b-qknorm"),
        PaperRow("1c-0", "1c", "input masking 0%", 78.2),
        PaperRow("1d-frozen", "1d", "patch embedding frozen at fine-tune", 77.4),
        PaperRow("1e-bi", "1e", "bidirectional fine-tune attention", 82.5),
    )),
    # 1c: input-embedding masking
    Variant("mask_40", {"objective": {"mask_ratio": 0.4}}, schedule="1c", in_default_ablations=True, rows=(
        PaperRow("1c-40", "1c", "input masking 40%", 76.4, versus="1c-0"),
    )),
    Variant("mask_60", {"objective": {"mask_ratio": 0.6}}, schedule="1c", in_default_ablations=True, rows=(
        PaperRow("1c-60", "1c", "input masking 60%", 75.7, versus="1c-0"),
    )),
    # 1d and 1e: fine-tuning choices, fine-tunes of the 100k-step pretraining
    Variant("ft_patch_embed_trained", {"finetune": {"freeze_patch_embed": False}}, schedule="1d",
            pretrained_by="nepa_100k", in_default_ablations=True, rows=(
        PaperRow("1d-trained", "1d", "patch embedding trained at fine-tune", 73.1, versus="1d-frozen"),
    )),
    Variant("ft_causal_100k", {"finetune": {"attention": "causal"}}, schedule="1e", pretrained_by="nepa_100k",
            in_default_ablations=True, rows=(
        PaperRow("1e-causal", "1e", "causal fine-tune attention", 81.3, versus="1e-bi"),
    )),
    # appendix: GeLU instead of SwiGLU, on the full schedule
    Variant("gelu", {"model": {"mlp": "gelu"}}, in_default_ablations=True, rows=(
        PaperRow("app-gelu", "App.", "GeLU MLP", 83.6, versus="app-swiglu"),
    )),
)
# fmt: on


def default_ablations() -> tuple[str, ...]:
    """What `snakemake ablations` runs by default: Table 1 and the appendix (their baselines come with them)."""
    return tuple(name for name, v in VARIANTS.items() if v.in_default_ablations)


def pretrained_by(variant: str) -> str:
    """The variant whose pretraining (and export) `variant` fine-tunes: itself unless it is fine-tune-only."""
    return VARIANTS[variant].pretrained_by or variant


def pretraining_source(variant: str, full: bool) -> str:
    """The variant whose pretraining and export a run of `variant` starts from, at full or reduced scale."""
    source = pretrained_by(variant)
    return source if full else stand_in(source)


def stand_in(variant: str) -> str:
    """The variant that runs in `variant`'s place at embedded scale, where Table 1's sub-tables share one schedule
    (presets.EMBEDDED_ABLATION): the first variant with the same change, on a Table 1 schedule or not alike, with
    the same stand-in pretraining (nepa_100k -> nepa_50k; nepa stays itself, on the embedded default's schedule)."""

    def key(name: str) -> tuple[Layer, bool, str | None]:
        source = pretrained_by(name)
        v = VARIANTS[name]
        return v.overrides, v.schedule is not None, None if source == name else stand_in(source)

    return next(name for name in VARIANTS if key(name) == key(variant))
