"""The engine's parts, each on its own: batch arithmetic, schedule, weight-decay groups, launch environments,
generator states, EMA, metrics rows after a resume, preemption handlers, checkpoint leftovers.

Whole runs (DeepSpeed, several processes, kills, signals) are in tests/test_engine_runs.py.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from nepa.batch import split_batch
from nepa.config import PretrainParams, load_params
from nepa.engine import distributed, rng
from nepa.engine.checkpoint import LATEST, PARTIAL, STATE_FILE, Checkpoints, resume_key, tag
from nepa.engine.distributed import DistEnv
from nepa.engine.ema import Ema
from nepa.engine.metrics import MetricsLog
from nepa.engine.optim import no_decay_names, param_groups
from nepa.engine.pretrain import build_model, images_loss
from nepa.engine.schedule import step_counts, warmup_cosine
from nepa.engine.signals import EXIT_REQUEUE, Preemption, shield_workers
from nepa.engine.trainer import EXIT_NONFINITE
from nepa.errors import EXIT_USAGE, UserError
from nepa.models import create
from nepa.models.weights import atomic_save_safetensors
from nepa.stopping import preemption_held
from nepa.variants import VARIANTS


def test_global_batch_must_be_whole_micro_batches() -> None:
    assert split_batch(256, 64, 2, pinned=True).accumulation == 2  # the engine's: the verb's micro-batch, exactly
    with pytest.raises(UserError, match=r"micro_batch 48 \(pinned in params\) x 2 processes does not divide"):
        split_batch(256, 48, 2, pinned=True)
    paper = PretrainParams(base_lr=3e-4, global_batch=4096, micro_batch=128)
    assert paper.lr == pytest.approx(4.8e-3)  # the paper's 4096-batch lr


def test_step_counts_and_warmup_cosine() -> None:
    p = step_counts(epochs=2.5, warmup_epochs=0.5, max_steps=None, batches_per_epoch=41, accumulation=4)
    assert (p.steps_per_epoch, p.total_steps, p.warmup_steps, p.stop_step) == (10, 25, 5, 25)
    assert step_counts(2.5, 0.5, 7, 41, 4).stop_step == 7  # max_steps stops early; the schedule keeps its length
    factors = [warmup_cosine(s, 5, 25) for s in range(25)]
    assert factors[:5] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert all(a >= b for a, b in itertools.pairwise(factors[4:])) and factors[-1] < 0.01
    assert warmup_cosine(25, 5, 25) == 0.0
    with pytest.raises(UserError, match="the global batch is larger than the training data"):
        step_counts(1, 0, None, batches_per_epoch=3, accumulation=4)


def test_no_weight_decay_on_biases_norms_layerscale_and_tokens() -> None:
    model = create("nepa_tiny_patch4_32", depth=2, mask_token=True)
    skip = no_decay_names(model)
    assert {"cls_token", "mask_token", "patch_embed.bias", "norm.weight", "blocks.0.ls1.gamma"} <= skip
    assert {"blocks.0.norm1.bias", "blocks.0.attn.qkv.bias"} <= skip
    assert not skip & {"patch_embed.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight"}
    decay, no_decay = param_groups(model, 0.05)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.05, 0.0)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert all(p.ndim > 1 for p in decay["params"])


def test_rank_and_world_from_each_launcher() -> None:
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}
    assert distributed.from_environ(torchrun) == DistEnv(3, 4, 1)  # a launcher inside a SLURM job wins
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}
    assert distributed.from_environ(slurm) == DistEnv(5, 8, 1)
    assert distributed.from_environ({}) == DistEnv(0, 1, 0)


def test_several_processes_need_master_addr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("SLURM_JOB_NODELIST", raising=False)
    with pytest.raises(UserError, match="MASTER_ADDR is not set and this is no SLURM job step"):
        distributed.init(DistEnv(1, 2, 1))


def test_generator_states_round_trip_through_safetensors(tmp_path: Path) -> None:
    rng.seed_all(7)
    _ = random.random(), np.random.normal(), torch.rand(3)  # move every generator, numpy's gauss cache too
    tensors, meta = rng.capture()
    atomic_save_safetensors(tensors, tmp_path / "rng.safetensors", meta)
    expected = random.random(), np.random.normal(), torch.rand(3)
    rng.seed_all(99)
    with safe_open(str(tmp_path / "rng.safetensors"), framework="pt") as f:
        meta = f.metadata()
    rng.restore(load_file(tmp_path / "rng.safetensors"), meta)
    got = random.random(), np.random.normal(), torch.rand(3)
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_ema_follows_the_weights() -> None:
    model = torch.nn.Linear(3, 2)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ema = Ema(model, decay=0.75)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update()
    ema.update()
    avg = ema.state_dict()
    for name, value in start.items():  # two steps towards w+1: 1 - 0.75^2 of the way
        assert torch.allclose(avg[name], value + 1 - 0.75**2)
    ema.load_state_dict(start)
    assert all(torch.equal(ema.state_dict()[k], v) for k, v in start.items())


def test_metrics_rows_after_the_checkpoint_are_dropped_on_resume(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    log = MetricsLog(path, None)
    for step in range(1, 8):
        log.append(dict(step=step, epoch=0.1, loss=-step, lr=1e-3, grad_norm=1.0, images_per_s=10, wall_s=step))
    MetricsLog(path, resume_step=5).append(dict(step=6, epoch=0, loss=-60, lr=0, grad_norm=0, images_per_s=0, wall_s=0))
    rows = pd.read_csv(path)
    assert rows["step"].tolist() == [1, 2, 3, 4, 5, 6] and rows["loss"].iloc[-1] == -60
    assert b"\r" not in path.read_bytes()  # one line ending, before and after the resume
    MetricsLog(path, None)  # a fresh run starts a new file
    assert pd.read_csv(path).empty


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2])
def test_preemption_records_then_hands_over_to_the_previous_handler(sig: signal.Signals) -> None:
    seen = []
    previous = signal.signal(sig, lambda signum, frame: seen.append(signum))  # e.g. submitit's requeue handler
    try:
        with Preemption() as preemption:
            os.kill(os.getpid(), sig)
            assert preemption.agreed() == sig and seen == []  # recorded only: the step finishes first
            preemption.hand_over(sig)
            assert seen == [sig]
        os.kill(os.getpid(), sig)  # our handler is gone again
        assert seen == [sig, sig]
    finally:
        signal.signal(sig, previous)


def test_exit_statuses_tell_the_outcomes_apart() -> None:
    # 1 is Python's uncaught exception; a requeue must not be taken for success (0) or for a failure
    assert len({0, 1, EXIT_USAGE, EXIT_NONFINITE, EXIT_REQUEUE}) == 5 and EXIT_REQUEUE == 75


def test_tidy_removes_what_a_killed_save_left(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    for step in (3, 6, 9):
        (folder / tag(step)).mkdir(parents=True)
        (folder / tag(step) / STATE_FILE).write_text("{}")
    (folder / PARTIAL / tag(12)).mkdir(parents=True)
    (folder / LATEST).write_text(tag(6) + "\n")  # step 9 was renamed into place, `latest` not yet updated
    checkpoints = Checkpoints(folder, keep_last=2, env=DistEnv())
    checkpoints.tidy()
    assert sorted(p.name for p in folder.iterdir()) == [LATEST, tag(3), tag(6)]
    assert checkpoints.latest() == folder / tag(6)
    (folder / LATEST).write_text(tag(9) + "\n")
    with pytest.raises(UserError, match="not a complete checkpoint"):
        checkpoints.latest()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_pretraining_honours_every_variant(variant: str, tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    params = load_params(tmp_path / "params.yaml", (f"variant={variant}",))
    model = build_model(params)
    assert (model.mask_token is not None) == (params.objective.mask_ratio > 0)
    assert model.cfg.layerscale_init == (1e-5 if params.model.layerscale else None)
    assert (model.cfg.rope, model.cfg.qk_norm, model.cfg.mlp_gated) == (
        params.model.rope,
        params.model.qk_norm,
        params.model.mlp == "swiglu",
    )
    loss = images_loss(model, (torch.rand(2, 3, 32, 32) * 2 - 1, torch.zeros(2, dtype=torch.long)), params.objective)
    loss.backward()
    assert torch.isfinite(loss) and model.patch_embed.weight.grad is not None
    if params.objective.mask_ratio > 0:
        assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0


class _Dispositions(torch.utils.data.Dataset):
    """What a worker sees: how it takes the three signals, and whether the loader's own worker_init_fn ran."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> str:
        names = {signal.SIG_DFL: "default", signal.SIG_IGN: "ignored"}
        signals = [
            names.get(signal.getsignal(sig), "handled") for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
        ]
        return " ".join([*signals, "init" if os.environ.get("WORKER_INIT_RAN") else "no-init"])


# SIGTERM is handled: ignored until the training process exits (test_a_process_that_exits_holding_shielded_workers_ends)
SHIELDED = "handled ignored ignored init"


def _worker_init(worker_id: int) -> None:
    os.environ["WORKER_INIT_RAN"] = "1"


def test_dataloader_workers_outlive_a_preemption_signal() -> None:
    """SLURM signals the workers too; torch's would die of SIGTERM and take the run down before it checkpoints."""
    loader = torch.utils.data.DataLoader(_Dispositions(), num_workers=1, worker_init_fn=_worker_init)
    shield_workers(loader)
    assert list(loader) == [[SHIELDED]]


def test_a_worker_signalled_as_it_starts_survives() -> None:
    """The signal can come between a worker's fork and its worker_init_fn: preemption_held holds it until the
    worker ignores it (this process's own handler gets its copy when the block ends)."""
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
    try:
        loader = torch.utils.data.DataLoader(_Dispositions(), num_workers=2, worker_init_fn=_worker_init)
        shield_workers(loader)
        with preemption_held():
            iterator = iter(loader)
            for worker in iterator._workers:  # at once: most have not reached their worker_init_fn yet
                os.kill(worker.pid, signal.SIGTERM)
            # to this thread: sent to the process, any thread that does not hold it may take it (torch's OpenMP
            # threads do not), and its handler then runs at a moment no assert can wait for
            signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
            assert not received
        assert received == [signal.SIGUSR1]
        assert list(iterator) == [[SHIELDED]]
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_a_process_that_exits_holding_shielded_workers_ends() -> None:
    """An uncaught error keeps the training loop's frames, and so its loader's iterator, alive until exit, where
    multiprocessing ends the workers with SIGTERM and waits for them: shielded workers must end then, quietly.
    The loader is the engine's (nepa.data.loaders.Batches, whose iterator wraps torch's)."""
    script = textwrap.dedent(
        """
        from nepa.data.loaders import Batches
        from nepa.engine.signals import shielded_batches

        batches = shielded_batches(Batches(range(64), finish=lambda batch: batch, num_workers=2))
        next(batches)
        raise RuntimeError("a bug in the step")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stderr.rstrip().endswith("RuntimeError: a bug in the step"), out.stderr


def test_resume_key_ignores_only_operational_params(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("seed: 0\n")

    def key(*sets: str, data: str = "manifest-digest") -> str:
        params = load_params(tmp_path / "params.yaml", sets)
        return resume_key(params, ("model", "objective", "pretrain"), data)

    base = key()
    assert key("pretrain.max_steps=5", "pretrain.log_every=1", "finetune.epochs=3") == base
    changed = [key("seed=1"), key("pretrain.base_lr=0.1"), key("model.rope=false"), key("variant=no_stop_grad")]
    assert base not in changed and key(data="other") != base
