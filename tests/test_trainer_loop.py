"""The training loop, in this process on a small model: it reads nothing back from the device between log steps
(a per-step `float(grad_norm)` stalls a GPU's queue), its rows reach TensorBoard as they reach metrics.csv, and
its fault hooks are fixed before it starts.

How it is seen on a CPU-only machine: a torch function mode watches every call that copies a tensor's value to
the host (`item`, `tolist`, `__float__`/`__int__`/`__bool__`, `cpu`, `numpy`); each is charged to the innermost
caller outside torch, and tagged with the optimizer step the engine is at. On a GPU these are exactly the calls
that wait for the device. (`to` is left out: where every tensor is on the CPU it cannot be told from the
host-to-device moves of batches, which do not wait.) nepa's own calls may happen only at log steps (and the last step);
DeepSpeed's are counted apart and reported: its ZeRO 1/2/3 step reads its overflow flag back at every step
(deepspeed/runtime/zero/stage_1_and_2.py, `has_overflow`), which nepa cannot change.
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

import nepa
from nepa.engine import distributed
from nepa.engine.checkpoint import latest_checkpoint, tag
from nepa.engine.faults import Faults
from nepa.engine.metrics import TENSORBOARD
from nepa.engine.trainer import EXIT_NONFINITE, Task, TrainConfig, Trainer

READS = {Tensor.item, Tensor.tolist, Tensor.__float__, Tensor.__int__, Tensor.__bool__, Tensor.cpu, Tensor.numpy}
NEPA, TORCH = str(Path(nepa.__file__).parent), str(Path(torch.__file__).parent)
LOG_EVERY, STEPS = 4, 10


class HostReads(TorchFunctionMode):
    """Counts device-to-host reads by (who, step): who is "nepa" or "other" (DeepSpeed, ...)."""

    def __init__(self, step: Callable[[], int]) -> None:
        super().__init__()
        self.step = step
        self.seen: collections.Counter[tuple[str, int]] = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in READS:
            frame = sys._getframe(1)
            while frame.f_code.co_filename.startswith(TORCH):
                frame = frame.f_back
            self.seen["nepa" if frame.f_code.co_filename.startswith(NEPA) else "other", self.step()] += 1
        return func(*args, **kwargs)


@pytest.fixture(scope="module")
def device() -> Iterator[torch.device]:
    """A process group of one, in this process, for the module (DeepSpeed keeps its groups: one init only)."""
    yield distributed.init(distributed.from_environ({}))
    distributed.shutdown()


def small_run(folder: Path, **settings: Any) -> tuple[Task, TrainConfig]:
    """A small MLP regression of STEPS steps of two micro-batches (its task and config; `settings` over it)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
    data = [(torch.randn(4, 8), torch.randn(4, 8)) for _ in range(2 * STEPS)]
    task = Task(
        model=model,
        loss=lambda m, batch: F.mse_loss(m(batch[0]), batch[1]),
        batches=lambda epoch, start: data[start:],
        batches_per_epoch=len(data),
    )
    cfg = dict(
        folder=folder, epochs=1, warmup_epochs=0.2, global_batch=8, micro_batch=4, lr=3.125e-3, betas=(0.9, 0.95),
        weight_decay=0.05, grad_clip=1.0, ema_decay=0.9, checkpoint_every=1000, keep_last=1, log_every=LOG_EVERY,
        seed=0,
    )  # fmt: skip
    return task, TrainConfig(**(cfg | settings))


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_no_host_read_between_log_steps_and_rows_reach_tensorboard(
    tmp_path: Path, device: torch.device, zero_stage: int
) -> None:
    task, cfg = small_run(tmp_path, zero_stage=zero_stage)
    trainer = Trainer(cfg, task, distributed.from_environ({}), device)
    with HostReads(lambda: trainer.engine.global_steps) as reads:
        assert trainer.fit() == 0
    read_at = {step for (who, step), _ in reads.seen.items() if who == "nepa"}
    allowed = {0, *range(LOG_EVERY, STEPS + 1, LOG_EVERY), STEPS}  # start, log steps, the last step
    assert read_at <= allowed, sorted(read_at - allowed)
    rows = pd.read_csv(tmp_path / "metrics.csv")
    events = EventAccumulator(str(tmp_path / TENSORBOARD))
    events.Reload()
    for name in ("loss", "lr", "grad_norm", "images_per_s"):
        scalars = events.Scalars(name)
        assert [e.step for e in scalars] == rows["step"].tolist() == [4, 8, 10]
        assert [e.value for e in scalars] == pytest.approx(rows[name].tolist(), rel=1e-6)
    between = [s for s in range(1, STEPS) if s not in allowed]
    deepspeed_per_step = sum(n for (who, step), n in reads.seen.items() if who == "other" and step in between)
    print(
        f"ZeRO-{zero_stage}: DeepSpeed's own host reads per step between log steps: "
        f"{deepspeed_per_step / len(between):.1f}"
    )


def test_faults_are_read_once_at_start_up_and_the_nan_guard_stops_the_run(
    tmp_path: Path, device: torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tests' fault hooks are fixed when the Trainer is built (nepa/engine/faults.py), not looked up in the
    loop: a variable removed after that still fires. The NaN of step 5 stops the run there (EXIT_NONFINITE) with
    the checkpoint of step 4 intact and no row of step 5; a harness may hand the Trainer its faults instead."""
    assert Faults.from_environ({"NEPA_EXIT_AT_STEP": "4", "OTHER": "1"}) == Faults(exit_at_step=4)
    monkeypatch.setenv("NEPA_INJECT_NAN_AT_STEP", "5")
    task, cfg = small_run(tmp_path / "env", checkpoint_every=2, log_every=1)
    trainer = Trainer(cfg, task, distributed.from_environ({}), device)
    monkeypatch.delenv("NEPA_INJECT_NAN_AT_STEP")
    assert trainer.fit() == EXIT_NONFINITE
    assert latest_checkpoint(cfg.folder / "checkpoints").name == tag(4)
    assert pd.read_csv(cfg.folder / "metrics.csv")["step"].tolist() == [1, 2, 3, 4]

    task, cfg = small_run(tmp_path / "installed", checkpoint_every=2, log_every=1)
    installed = Trainer(cfg, task, distributed.from_environ({}), device, faults=Faults(nan_at_step=3))
    assert installed.fit() == EXIT_NONFINITE
    assert pd.read_csv(cfg.folder / "metrics.csv")["step"].tolist() == [1, 2]
