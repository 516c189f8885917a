"""Training metrics: a device-side loss sum read once per logged row, metrics.csv, and TensorBoard.

metrics.csv has one row every `log_every` optimizer steps (and at checkpoints and evaluations): the
pretraining loss curve of the paper's Fig. 7, fine-tuning's top-1 at each epoch's end, segmentation's final
mIoU, which `dvc plots` and the report draw (the probe writes one row per epoch through the same class). A
resumed run first drops the rows the killed run wrote after its checkpoint, so the file continues without
duplicates.

The same rows go to TensorBoard event files in tensorboard/ beside it, flushed at every row, so that
`tensorboard --logdir runs` shows every stage of every run live (each number under its column's name).
TensorBoard rather than DVCLive: `dvc plots` already reads metrics.csv, and DVCLive's live view needs VS Code
or DVC Studio, where TensorBoard is what MAE's and HF Trainer's users watch. A resumed run purges the events
of the killed run after its checkpoint (SummaryWriter's purge_step), as metrics.csv drops its rows.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from nepa.engine.distributed import several_processes
from nepa.files import atomic_path, named

TENSORBOARD = "tensorboard"  # the event files' folder, beside metrics.csv
FIELDS = ("step", "epoch", "loss", "lr", "grad_norm", "images_per_s", "wall_s")


class LossMeter:
    """Sums micro-batch losses without leaving the device, so that a step needs no host sync for them."""

    def __init__(self, device: torch.device):
        self.total = torch.zeros((), device=device, dtype=torch.float64)
        self.count = 0

    def add(self, loss: Tensor) -> None:
        self.total += loss.detach()
        self.count += 1

    def pop_mean(self) -> float:
        """Mean over all ranks since the last call, and reset; a collective call (every rank)."""
        both = torch.stack([self.total, torch.tensor(float(self.count), device=self.total.device, dtype=torch.float64)])
        if several_processes():
            dist.all_reduce(both)
        self.total.zero_()
        self.count = 0
        total, count = both.tolist()
        return total / max(count, 1.0)


class MetricsLog:
    """Appends rows to a CSV (rank 0 only); `resume_step` None starts a new file."""

    def __init__(self, path: Path, resume_step: int | None, fields: tuple[str, ...] = FIELDS):
        self.path, self.fields = path, fields
        path.parent.mkdir(parents=True, exist_ok=True)
        # events of later steps from an earlier attempt are hidden, as the rows of metrics.csv are dropped
        self.board = SummaryWriter(str(path.parent / TENSORBOARD), purge_step=(resume_step or 0) + 1)
        if resume_step is None or not path.is_file():
            pd.DataFrame(columns=list(fields)).to_csv(path, index=False)
            return
        rows = pd.read_csv(path)
        with atomic_path(path) as tmp:
            rows[rows["step"] <= resume_step].to_csv(tmp, index=False)

    def append(self, row: dict[str, float | int]) -> None:
        try:
            with open(self.path, "a", newline="") as f:
                # "\n" as pandas writes the header and a resume's kept rows (csv's default is "\r\n")
                csv.DictWriter(f, fieldnames=self.fields, lineterminator="\n").writerow(row)
        except OSError as e:
            raise named(e, self.path) from None
        for name, value in row.items():
            if name != "step":
                self.board.add_scalar(name, value, global_step=int(row["step"]))
        self.board.flush()

    def close(self) -> None:
        self.board.close()
