"""The training loop: a task's model, loss and batches in; trained weights, EMA, checkpoints, metrics out.

One optimizer step = `accumulation` micro-batches per process (global_batch = micro_batch x world x
accumulation). At each step boundary, in this order: NaN guard, EMA update, preemption check (all ranks
agree), metrics row, checkpoint. `fit()` returns the process exit status:

    0                 done (the last step's checkpoint is written)
    EXIT_REQUEUE 75   a preemption signal arrived; checkpointed, rerun the same command to resume
    EXIT_NONFINITE 3  a loss or gradient norm was NaN/Inf; stopped before writing anything of that step
"""

from __future__ import annotations

import functools
import logging
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from nepa.batch import split_batch
from nepa.config import FinetuneParams, PretrainParams, SegmentParams
from nepa.dvc_lock import recorded
from nepa.engine import rng
from nepa.engine.checkpoint import ELASTIC_STAGES, Checkpoints, TrainState, read_state
from nepa.engine.distributed import DistEnv, several_processes
from nepa.engine.ema import Ema
from nepa.engine.faults import Faults
from nepa.engine.metrics import FIELDS, LossMeter, MetricsLog
from nepa.engine.optim import param_groups
from nepa.engine.schedule import step_counts, warmup_cosine
from nepa.engine.signals import EXIT_REQUEUE, Preemption, shielded_batches
from nepa.errors import UserError
from nepa.layout import CHECKPOINTS, CURVE

EXIT_NONFINITE = 3


@dataclass(frozen=True)
class TrainConfig:
    """What the engine trains with, in its own terms: the stages build it from their params (`from_params`), the
    benchmarks and the engine's tests directly."""

    folder: Path  # the stage's run folder: checkpoints/ and metrics.csv go here
    global_batch: int
    micro_batch: int
    lr: float  # the peak lr itself; the schedule scales it from warm-up to 0, and nothing else does
    betas: tuple[float, float]
    weight_decay: float
    grad_clip: float | None
    ema_decay: float | None
    checkpoint_every: int
    keep_last: int
    log_every: int
    seed: int
    epochs: float = 0.0
    warmup_epochs: float = 0.0
    steps: int | None = None  # the schedule's length in optimizer steps, where a recipe counts them (not epochs)
    warmup_steps: int | None = None
    max_steps: int | None = None
    zero_stage: int = 2
    precision: str = "auto"  # auto: bf16 on GPU, fp32 on CPU
    name: str = "nepa"  # how messages start, e.g. "nepa pretrain"
    card: dict[str, str] = field(default_factory=dict)  # provenance stored in every checkpoint
    # A digest of everything that decides the weights (params, data); a checkpoint with another is refused.
    resume_key: str = ""

    @classmethod
    def from_params(
        cls,
        section: PretrainParams | FinetuneParams | SegmentParams,
        *,
        folder: Path,
        seed: int,
        name: str,
        card: dict[str, str],
        resume_key: str,
    ) -> TrainConfig:
        """A training stage's config: which key of its params section goes where."""
        if isinstance(section, SegmentParams):  # the mmseg recipe: optimizer steps (iterations), no EMA
            length: dict[str, Any] = dict(steps=section.iterations, warmup_steps=section.warmup_iterations)
            ema_decay = None
        else:
            length = dict(epochs=section.epochs, warmup_epochs=section.warmup_epochs, max_steps=section.max_steps)
            ema_decay = section.ema_decay
        return cls(  # by concern: batch, optimizer, schedule and averaging, bookkeeping, identity
            global_batch=section.global_batch, micro_batch=section.micro_batch, zero_stage=section.zero_stage,
            precision=section.precision,
            lr=section.lr, betas=section.betas, weight_decay=section.weight_decay, grad_clip=section.grad_clip,
            ema_decay=ema_decay, **length,
            checkpoint_every=section.checkpoint_every, keep_last=section.keep_last, log_every=section.log_every,
            folder=folder, seed=seed, name=name, card=card, resume_key=resume_key,
        )  # fmt: skip


@dataclass
class Task:
    model: nn.Module
    loss: Callable[[nn.Module, Any], Tensor]  # mean loss of one micro-batch; runs as the engine's forward
    batches: Callable[[int, int], Iterable[Any]]  # (epoch, start_batch) -> this rank's micro-batches
    batches_per_epoch: int  # micro-batches per rank per epoch
    param_groups: list[dict[str, Any]] | None = None  # default: optim.param_groups(model, weight_decay)
    # A group's lr multiplier over the schedule, (group, progress in [0, 1]) -> scale, for lr scales that
    # move during training (the fine-tuning layer-decay ramp), on top of a group's fixed `lr_scale`.
    lr_scale: Callable[[dict[str, Any], float], float] | None = None
    # Called on every rank at each epoch's end and at the last step, before that step's checkpoint, with
    # the EMA (or None); returns numbers for that step's metrics row, under the names in `eval_fields`.
    evaluate: Callable[[Ema | None], dict[str, float]] | None = None
    eval_fields: tuple[str, ...] = ()
    eval_each_epoch: bool = True  # False: at the last step only (an evaluation that costs minutes)


class LossModule(nn.Module):
    """The task's loss as a module's forward. DeepSpeed does its work around `forward` (ZeRO-3 gathers the
    parameters used inside it, autocast, hooks); the loss may call another method (`forward_pretrain`)."""

    def __init__(self, model: nn.Module, loss: Callable[[nn.Module, Any], Tensor]):
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, batch: Any) -> Tensor:
        return self.loss(self.model, batch)


def scaled_factor(
    step: int,
    factor: Callable[[int], float],
    lr_scale: Callable[[dict[str, Any], float], float],
    group: dict[str, Any],
    total_steps: int,
) -> float:
    """One group's lr factor at `step`: the schedule's, times the task's scale for that group at that point."""
    return factor(step) * lr_scale(group, step / total_steps)


def resolve_precision(precision: str) -> str:
    return ("bf16" if torch.cuda.is_available() else "fp32") if precision == "auto" else precision


def deepspeed_config(cfg: TrainConfig, accumulation: int, universal: bool = False) -> dict[str, Any]:
    """`universal`: the checkpoint to resume is DeepSpeed's universal one (written by another world size)."""
    # bf16 is torch autocast over fp32 weights (the official code's HF `bf16=True`), not DeepSpeed's bf16
    # weights: the optimizer, the EMA and the checkpoints all see fp32 weights at every precision.
    return {
        "train_batch_size": cfg.global_batch,
        "train_micro_batch_size_per_gpu": cfg.micro_batch,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": cfg.grad_clip or 0.0,
        "zero_optimization": {"stage": cfg.zero_stage},
        "torch_autocast": {"enabled": resolve_precision(cfg.precision) == "bf16", "dtype": "bfloat16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**62,  # our metrics replace DeepSpeed's periodic prints
        "checkpoint": {"load_universal": universal},
    }


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


class NonFiniteGuard:
    """The NaN guard without a host sync per step: the first step whose loss or gradient norm was not finite
    is kept on the device and read back only where the loop must know (a metrics row, a checkpoint, an
    evaluation), before anything of that step is written: all ranks agree on it there (a collective call)."""

    NONE = 2**62

    def __init__(self, device: torch.device):
        self.first = torch.full((), self.NONE, dtype=torch.int64, device=device)

    def note(self, step: int, loss_sum: Tensor, grad_norm: Tensor | float) -> None:
        """`loss_sum`: the losses since the last read (non-finite from a bad step on); `grad_norm`: this step's."""
        if isinstance(grad_norm, Tensor):
            bad = ~(torch.isfinite(loss_sum) & torch.isfinite(grad_norm))
        else:  # already on the host: no sync to check it
            bad = ~torch.isfinite(loss_sum) | (not math.isfinite(grad_norm))
        torch.minimum(self.first, torch.where(bad, step, self.NONE), out=self.first)

    def first_bad(self) -> int:
        """The first bad step on any rank, 0 if none; a collective call."""
        first = self.first.clone()
        if several_processes():
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        step = int(first.item())
        return 0 if step == self.NONE else step


class Trainer:
    def __init__(self, cfg: TrainConfig, task: Task, env: DistEnv, device: torch.device, faults: Faults | None = None):
        """`faults`: the tests' injected failures (nepa/engine/faults.py); default: the environment's, read here."""
        self.cfg, self.task, self.env, self.device = cfg, task, env, device
        self.faults = Faults.from_environ() if faults is None else faults
        # the verb hands the micro-batch of this world size (nepa.batch.section_for): it must split exactly
        self.accumulation = split_batch(cfg.global_batch, cfg.micro_batch, env.world, pinned=True).accumulation
        self.counts = step_counts(
            cfg.epochs,
            cfg.warmup_epochs,
            cfg.max_steps,
            task.batches_per_epoch,
            self.accumulation,
            cfg.steps,
            cfg.warmup_steps,
        )
        groups = task.param_groups or param_groups(task.model, cfg.weight_decay)
        for group in groups:
            group["lr"] = cfg.lr * group.get("lr_scale", 1.0)
        # CUDA: one fused kernel for every parameter (same update rule); CPU: torch's default, as before
        fused = {"fused": True} if device.type == "cuda" else {}
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, **fused)
        lr_factor = self.lr_factor = functools.partial(
            warmup_cosine, warmup_steps=self.counts.warmup_steps, total_steps=self.counts.total_steps
        )
        if task.lr_scale is not None:
            total = self.counts.total_steps
            lr_factor = [
                functools.partial(
                    scaled_factor, factor=lr_factor, lr_scale=task.lr_scale, group=group, total_steps=total
                )
                for group in groups
            ]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
        self.checkpoints = Checkpoints(cfg.folder / CHECKPOINTS, cfg.keep_last, env, self.faults)
        if env.is_main:
            self._start_over_where_dvc_holds_other_params()
        self.checkpoints.tidy()
        self.resume = self.checkpoints.latest()
        written = read_state(self.resume) if self.resume else None
        universal = written is not None and written.world != env.world and written.zero_stage > 0
        if universal and written.zero_stage not in ELASTIC_STAGES:
            raise UserError(
                f"{self.resume}: written by {written.world} process(es) under ZeRO-{written.zero_stage}, which "
                f"cannot resume on {env.world} yet (ZeRO 1 and 2 can); resume it with {written.world}"
            )
        deepspeed.utils.logger.setLevel(logging.WARNING)
        self.engine, *_ = deepspeed.initialize(
            model=LossModule(task.model, task.loss),
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=deepspeed_config(cfg, self.accumulation, universal),
            dist_init_required=False,
        )
        self.ema = Ema(task.model, cfg.ema_decay) if cfg.ema_decay else None  # after ZeRO-3 partitioned it
        self.metrics: MetricsLog | None = None  # rank 0's, from the start of fit()

    def _start_over_where_dvc_holds_other_params(self) -> None:
        """`dvc exp run -S finetune.base_lr=…` re-runs a stage whose checkpoints (kept: a re-run resumes them)
        are of the old params: they go where dvc.lock records them as they are (DVC's cache holds them); other
        checkpoints of other params the engine refuses in one line (_start)."""
        folder, latest = self.checkpoints.folder, self.checkpoints.latest()
        if latest is None or read_state(latest).resume_key == self.cfg.resume_key or not recorded(folder):
            return
        self._say(f"{folder}: checkpoints of other params, which DVC holds (dvc.lock); starting over")
        shutil.rmtree(folder)

    def _say(self, message: str) -> None:
        if self.env.is_main:  # on a line of its own, not after the progress bar
            tqdm.write(f"{self.cfg.name}: {message}", file=sys.stderr)

    def _start(self) -> TrainState:
        """A fresh state, or the latest checkpoint's with everything restored."""
        latest = self.resume
        if latest is None:
            rng.seed_all(self.cfg.seed + self.env.rank)  # each rank its own stream for masks, drop path...
            return TrainState(
                world=self.env.world,
                micro_batch=self.cfg.micro_batch,
                zero_stage=self.cfg.zero_stage,
                resume_key=self.cfg.resume_key,
                card=dict(self.cfg.card),
            )
        if (key := read_state(latest).resume_key) != self.cfg.resume_key:
            raise UserError(
                f"{latest}: written with other params or data (key {key[:12]}, now {self.cfg.resume_key[:12]}); "
                f"restore them, or remove {self.checkpoints.folder} to start over"
            )
        state = self.checkpoints.load(self.engine, self.ema, latest, self.cfg.seed)
        state.card = dict(self.cfg.card)  # what changed (if anything) does not change the weights
        if state.world == self.env.world:
            self._say(f"resuming from {latest} (step {state.step})")
            return state
        # The same global batches on another world size: step s still takes the permutation's s-th block of
        # global_batch samples (nepa/data/loaders.py); only how many micro-batches make a step changes.
        micro = state.micro_batch or self.cfg.micro_batch  # 0: written before checkpoints recorded it
        before = self.cfg.global_batch // (micro * state.world)
        state.batch = state.batch // before * self.accumulation
        self._say(
            f"resuming from {latest} (step {state.step}) on {self.env.world} process(es), written by "
            f"{state.world}: ZeRO-{state.zero_stage} state resharded, gradient accumulation {before} -> "
            f"{self.accumulation}"
            + (f" (micro-batch {micro} -> {self.cfg.micro_batch})" if micro != self.cfg.micro_batch else "")
            + ", same global batches; "
            + (
                f"ranks {state.world}..{self.env.world - 1} start new random streams"
                if self.env.world > state.world
                else f"the random streams of ranks {self.env.world}..{state.world - 1} end"
            )
        )
        state.world, state.micro_batch = self.env.world, self.cfg.micro_batch
        return state

    def _epoch_batches(self, state: TrainState) -> Iterator[Any]:
        """This rank's micro-batches from the state's data position, to the end of its epoch.

        The loader gets its randomness from (seed, epoch, index); building and reading it must not move
        the global generators the model draws from, or a resumed run (which builds its loader at another
        moment) would draw differently. fork_rng keeps the loader's draws (DataLoader's base seed, any
        in-process augmentation) off them.
        """
        with torch.random.fork_rng(devices=[]):
            iterator = shielded_batches(self.task.batches(state.epoch, state.batch))
        while True:
            with torch.random.fork_rng(devices=[]):
                batch = next(iterator, None)
            if batch is None:
                return
            yield batch

    def _unreduced_grad_norm(self) -> Tensor:
        """Stage 0 with a torch optimizer: DeepSpeed clips but keeps no norm, so take it before its step."""
        return torch.nn.utils.get_total_norm([p.grad for p in self.engine.module.parameters() if p.grad is not None])

    def _stop_nonfinite(self, step: int) -> int:
        latest = self.checkpoints.latest()
        self._say(
            f"stopped at step {step}: non-finite loss or gradient norm; nothing of this step was saved, "
            f"the last good checkpoint is {latest or 'none'} (exit {EXIT_NONFINITE})"
        )
        return EXIT_NONFINITE

    def _fit(self) -> int:
        cfg, counts, engine = self.cfg, self.counts, self.engine
        state = self._start()
        if self.env.is_main:
            self.metrics = MetricsLog(cfg.folder / CURVE, state.step or None, FIELDS + self.task.eval_fields)
        metrics = self.metrics
        meter, guard = LossMeter(self.device), NonFiniteGuard(self.device)
        bar = tqdm(
            total=counts.stop_step,
            initial=state.step,
            disable=not self.env.is_main,
            desc=cfg.name,
            dynamic_ncols=True,
            mininterval=1.0,
        )
        batches: Iterator[Any] | None = None
        stage0 = engine.zero_optimization_stage() == 0
        wall0, t0 = state.wall_s, time.perf_counter()
        t_row, steps_in_row = t0, 0
        with Preemption() as preemption, bar:
            while state.step < counts.stop_step:
                if batches is None:
                    batches = self._epoch_batches(state)
                for _ in range(self.accumulation):
                    loss = self.faults.loss(state.step + 1, engine(to_device(next(batches), self.device)))
                    engine.backward(loss)
                    if stage0 and engine.is_gradient_accumulation_boundary():
                        stage0_norm = self._unreduced_grad_norm()
                    engine.step()
                    meter.add(loss)
                # stage 0: a device tensor; ZeRO 1-3: a float, which DeepSpeed's own overflow check has read back
                grad_norm = stage0_norm if stage0 else engine.get_global_grad_norm()
                lr = cfg.lr * self.lr_factor(state.step)
                state.step += 1
                state.batch += self.accumulation
                if state.batch == counts.steps_per_epoch * self.accumulation:
                    state.epoch, state.batch, batches = state.epoch + 1, 0, None
                guard.note(state.step, meter.total, grad_norm)
                if self.ema is not None:  # of a bad step too: in memory only, never saved (the guard reads first)
                    self.ema.update()
                steps_in_row += 1
                bar.update(1)

                signum = preemption.agreed()
                checkpoint_due = state.step % cfg.checkpoint_every == 0 or state.step == counts.stop_step or signum
                epoch_end = state.batch == 0 and self.task.eval_each_epoch
                eval_due = self.task.evaluate is not None and (epoch_end or state.step == counts.stop_step)
                if state.step % cfg.log_every == 0 or checkpoint_due or eval_due:
                    if bad_step := guard.first_bad():
                        return self._stop_nonfinite(bad_step)
                    mean_loss = meter.pop_mean()
                    now = time.perf_counter()
                    state.wall_s = wall0 + now - t0
                    speed = cfg.global_batch * steps_in_row / (now - t_row)
                    row = dict(
                        step=state.step,
                        epoch=state.step / counts.steps_per_epoch,
                        loss=mean_loss,
                        lr=lr,
                        grad_norm=float(grad_norm),
                        images_per_s=speed,
                        wall_s=state.wall_s,
                    )
                    if eval_due:
                        row |= self.task.evaluate(self.ema)
                        now = time.perf_counter()  # the next row's speed leaves the evaluation out
                    if metrics is not None:
                        metrics.append(row)
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{speed:.0f}")
                    t_row, steps_in_row = now, 0
                self.faults.after_step(state.step)
                if checkpoint_due:
                    path = self.checkpoints.save(engine, self.ema, state)
                if signum:
                    self._say(f"signal {signum} at step {state.step}: checkpointed {path}, exiting {EXIT_REQUEUE}")
                    preemption.hand_over(signum)
                    return EXIT_REQUEUE
        return 0

    def fit(self) -> int:
        """Train to the run's stop step (StepCounts.stop_step); the exit status (module doc)."""
        try:
            return self._fit()
        finally:
            if self.metrics is not None:
                self.metrics.close()
