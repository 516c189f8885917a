"""Training curves from the runs' metrics.csv, over seeds: the pretraining loss (paper Fig. 7) and the
downstream stages' training loss and validation accuracy, pretrained against random init.

A configuration's curve is the mean over its seeds at each logged step with a band from the lowest to the
highest seed (seeds log at the same steps); with one seed it is that seed's line.
Figures are built as matplotlib `Figure` objects without pyplot, so they draw with the Agg canvas whatever the
session's backend (no display on cluster nodes or in CI) and leave no global figure state behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from nepa.config import Size
from nepa.report.gather import RANDOM, RunKey
from nepa.report.spread import seeds

SIZES: tuple[str, ...] = get_args(Size)
DPI = 110
Curves = list[tuple[RunKey, pd.DataFrame]]


def save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


def by_configuration(curves: Curves) -> dict[tuple[str, str, str], list[pd.DataFrame]]:
    """{(size, variant, init): the curves of its seeds}, sizes small to large."""
    grouped: dict[tuple[str, str, str], list[pd.DataFrame]] = {}
    order = sorted(curves, key=lambda kc: (SIZES.index(kc[0].size) if kc[0].size in SIZES else 99, kc[0].variant,
                                           kc[0].init, -1 if kc[0].seed is None else kc[0].seed))  # fmt: skip
    for key, frame in order:
        grouped.setdefault((key.size, key.variant, key.init), []).append(frame)
    return grouped


def seed_band(frames: list[pd.DataFrame], column: str) -> pd.DataFrame:
    """Per step of `column`: mean, lowest and highest over the seeds' curves, and how many seeds logged it."""
    points = pd.concat([f[["step", column]].dropna() for f in frames if column in f], ignore_index=True)
    return points.groupby("step")[column].agg(["mean", "min", "max", "count"]).reset_index()


def draw(ax: Axes, frames: list[pd.DataFrame], column: str, label: str, color: str, style: str = "-",
         marker: str | None = None, hollow: bool = False) -> bool:  # fmt: skip
    """One configuration's mean line over seeds and its min-max band; False if no seed logged `column`.
    hollow: open markers, which tell a curve apart where it is a single point and its line style cannot."""
    band = seed_band(frames, column)
    if not len(band):
        return False
    ax.plot(band["step"], band["mean"], style, color=color, marker=marker, ms=4, lw=1.4,
            mfc="none" if hollow else color, label=f"{label} ({seeds(len(frames))})")  # fmt: skip
    if len(frames) > 1:
        ax.fill_between(band["step"], band["min"], band["max"], color=color, alpha=0.18, lw=0)
    return True


def pretrain_loss(curves: Curves, path: Path) -> Path:
    """One panel per model size, one line (mean over seeds, min-max band) per variant; −1 is where a collapse ends."""
    grouped: dict[str, dict[str, list[pd.DataFrame]]] = {}
    for (size, variant, _), frames in by_configuration(curves).items():
        grouped.setdefault(size, {})[variant] = frames
    fig = Figure(figsize=(6.5 * len(grouped), 4.2))
    axes = fig.subplots(1, len(grouped), squeeze=False)
    for ax, (size, by_variant) in zip(axes[0], grouped.items(), strict=True):
        for i, (variant, frames) in enumerate(by_variant.items()):
            draw(ax, frames, "loss", variant, f"C{i % 10}")
        ax.axhline(-1.0, color="black", ls=":", lw=1, label="minimum −1 (collapse)")
        ax.set(title=f"NEPA pretraining loss, {size} model", xlabel="optimizer step",
               ylabel=r"$-\cos(\hat z_t,\, z_{t+1})$")  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save(fig, path)


def downstream(curves: Curves, path: Path, stage: str, accuracy: tuple[str, ...] = ()) -> Path | None:
    """A downstream stage's training loss per logged step and, where it evaluates during training, its
    validation accuracy columns `accuracy`: pretrained (solid, filled markers) against random init (dashed, open
    markers), one colour per size and variant; None without curves."""
    grouped = by_configuration(curves)
    if not grouped:
        return None
    panels = 1 + bool(accuracy)
    fig = Figure(figsize=(6.5 * panels, 4.2))
    axes = fig.subplots(1, panels, squeeze=False)[0]
    colours = {run: f"C{i % 10}" for i, run in enumerate(dict.fromkeys((s, v) for s, v, _ in grouped))}
    drawn_accuracy = False
    for (size, variant, init), frames in grouped.items():
        label, colour = f"{size}-{variant}, {init} init", colours[size, variant]
        style = "--" if init == RANDOM else "-"
        draw(axes[0], frames, "loss", label, colour, style)
        for column, marker in zip(accuracy, "os^v", strict=False):
            drawn_accuracy |= draw(
                axes[-1], frames, column, f"{label}, {column}", colour, style, marker, hollow=init == RANDOM
            )
    axes[0].set(title=f"{stage}: training loss", xlabel="optimizer step", ylabel="loss")
    if accuracy:
        axes[-1].set(title=f"{stage}: validation top-1 at each evaluation", xlabel="optimizer step", ylabel="top-1 (%)")
        if not drawn_accuracy:
            axes[-1].text(0.5, 0.5, "no evaluation logged", ha="center", transform=axes[-1].transAxes)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save(fig, path)
