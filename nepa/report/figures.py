"""Training curves from the runs' metrics.csv: the pretraining loss (paper Fig. 7) and fine-tuning accuracy.

Figures are built as matplotlib `Figure` objects without pyplot, so they draw with the Agg canvas whatever the
session's backend (no display on cluster nodes or in CI) and leave no global figure state behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pandas as pd
from matplotlib.figure import Figure

from nepa.config import Size

SIZES: tuple[str, ...] = get_args(Size)
DPI = 110


def save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


def _by_size(curves: dict[str, pd.DataFrame]) -> dict[str, dict[str, pd.DataFrame]]:
    """{size: {variant: curve}} from {"size-variant": curve}, sizes small to large."""
    grouped: dict[str, dict[str, pd.DataFrame]] = {}
    for run in sorted(curves, key=lambda r: (SIZES.index(r.split("-", 1)[0]), r)):
        size, variant = run.split("-", 1)
        grouped.setdefault(size, {})[variant] = curves[run]
    return grouped


def pretrain_loss(curves: dict[str, pd.DataFrame], path: Path) -> Path:
    """One panel per model size, one line per variant; the loss's minimum −1 is where a collapse ends."""
    grouped = _by_size(curves)
    fig = Figure(figsize=(6.5 * len(grouped), 4.2))
    axes = fig.subplots(1, len(grouped), squeeze=False)
    for ax, (size, by_variant) in zip(axes[0], grouped.items(), strict=True):
        for variant, curve in by_variant.items():
            ax.plot(curve["step"], curve["loss"], label=variant, lw=1.4)
        ax.axhline(-1.0, color="black", ls=":", lw=1, label="minimum −1 (collapse)")
        ax.set(title=f"NEPA pretraining loss, {size} model", xlabel="optimizer step",
               ylabel=r"$-\cos(\hat z_t,\, z_{t+1})$")  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save(fig, path)


def finetune_accuracy(curves: dict[str, pd.DataFrame], path: Path) -> Path | None:
    """Validation top-1 of the online (solid) and EMA (dashed) weights per epoch; None if no curve has them."""
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.subplots()
    drawn = False
    for i, (run, curve) in enumerate(sorted(curves.items())):
        for weights, style in (("online", "-"), ("ema", "--")):
            column = f"val_top1_{weights}"
            if column in curve:
                points = curve.dropna(subset=[column])  # accuracies are filled in the rows of epoch ends only
                ax.plot(points["epoch"], points[column], style, marker="o", ms=3, color=f"C{i}",
                        label=f"{run} {weights}")  # fmt: skip
                drawn = drawn or len(points) > 0
    if not drawn:
        return None
    ax.set(title="Fine-tuning: validation top-1", xlabel="epoch", ylabel="top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)
