"""Whole pretraining runs through the CLI, on real DeepSpeed (CPU, gloo) and real embedded Fashion-MNIST
shards: ZeRO stages, 1 vs 2 processes, kills and resumes, signals, the NaN guard, export.

Each run is a subprocess (`python -m nepa.cli pretrain`), as a launcher would start it; kill points come from
the engine's fault hooks (nepa/engine/faults.py). Runs are tiny (nepa_tiny_patch4_32, 8-image micro-batches,
a 256-image train split): seconds each on 2 CPU cores.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import timm
import torch
from safetensors.torch import load_file

from nepa.cli import main as nepa_main
from nepa.engine import distributed
from nepa.engine.checkpoint import EMA_FILE, PARTIAL, latest_checkpoint, online_weights, read_state, tag
from nepa.engine.faults import EXIT_INJECTED
from nepa.engine.signals import EXIT_REQUEUE
from nepa.engine.trainer import EXIT_NONFINITE
from nepa.official import read_official

DATA = ["data.embedded_images=[256,64]", "data.embedded_scenes=[4,2]", "data.images_per_shard=128"]
# 256 images / 8 per micro-batch = 32 micro-batches, 2 per step on one process: 16 steps in the epoch.
RUN = [
    "pretrain.global_batch=16",
    "pretrain.micro_batch=8",
    "pretrain.epochs=1",
    "pretrain.warmup_epochs=0.1",
    "pretrain.base_lr=0.02",
    "pretrain.log_every=1",
    "pretrain.checkpoint_every=3",
    "pretrain.num_workers=0",
    "pretrain.max_steps=9",
]
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module")
def root(fashion_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with params.yaml and prepared embedded ImageNet shards."""
    root = tmp_path_factory.mktemp("engine")
    (root / "params.yaml").write_text("seed: 0\n")
    sets = [x for s in [*DATA, f"data.root={root / 'data'}"] for x in ("--set", s)]
    for dataset in ("embedded", "imagenet"):
        assert nepa_main(["prepare", dataset, "--params", str(root / "params.yaml"), *sets]) == 0
    return root


def environment(**extra: str) -> dict[str, str]:
    """This process's environment without launcher, SLURM or fault-hook variables, one thread per process."""
    keep = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith(("SLURM_", "NEPA_"))}
    return {**keep, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", **extra}


def arguments(root: Path, runs: Path, verb: str, *sets: str, args: tuple[str, ...] = ()) -> list[str]:
    every = [*DATA, f"data.root={root / 'data'}", f"runs={runs}", *RUN, *sets]
    return [verb, "--params", str(root / "params.yaml"), *args, *(x for s in every for x in ("--set", s))]


def command(root: Path, runs: Path, verb: str, *sets: str, args: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "nepa.cli", *arguments(root, runs, verb, *sets, args=args)]


def nepa(root: Path, runs: Path, verb: str, *sets: str, args: tuple[str, ...] = (), **env: str):
    return subprocess.run(
        command(root, runs, verb, *sets, args=args), env=environment(**env), capture_output=True, text=True, timeout=600
    )


def start(root: Path, runs: Path, *sets: str, log: Path, **env: str) -> subprocess.Popen:
    """A background run in its own process group, output to `log` (a file: a full pipe would stall it)."""
    runs.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        return subprocess.Popen(
            command(root, runs, "pretrain", *sets),
            env=environment(**env),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )


def two_processes(root: Path, runs: Path, *sets: str, on_start=None, **env: str) -> list[tuple[int, str]]:
    """The run as two SLURM-style tasks (SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID + MASTER_ADDR): (status, output)."""
    port = str(29500 + os.getpid() % 1000)
    logs = [runs / f"rank{r}.log" for r in range(2)]
    procs = [
        start(
            root,
            runs,
            *sets,
            log=logs[r],
            SLURM_PROCID=str(r),
            SLURM_NTASKS="2",
            SLURM_LOCALID=str(r),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            **env,
        )
        for r in range(2)
    ]
    if on_start:
        on_start(procs)
    return [(p.wait(timeout=600), log.read_text()) for p, log in zip(procs, logs, strict=True)]


def folder(runs: Path, run: str = "tiny-nepa") -> Path:
    return runs / run / "pretrain"


def final(runs: Path, run: str = "tiny-nepa") -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(online, EMA) weights of the latest checkpoint."""
    latest = latest_checkpoint(folder(runs, run) / "checkpoints")
    return online_weights(latest), load_file(latest / EMA_FILE)


def identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def losses(runs: Path, run: str = "tiny-nepa") -> pd.Series:
    rows = pd.read_csv(folder(runs, run) / "metrics.csv")
    assert rows["step"].is_unique and rows["step"].is_monotonic_increasing
    return rows.set_index("step")["loss"]


def wait_for_rows(path: Path, rows: int, proc: subprocess.Popen) -> None:
    while not (path.is_file() and len(pd.read_csv(path)) >= rows):
        assert proc.poll() is None, f"the run ended early ({proc.returncode})"
        time.sleep(0.2)


def test_pretrain_then_export_loads_in_timm(root: Path, tmp_path: Path) -> None:
    """The default suite's one real run: two steps with input masking (the mask token), then both exports."""
    done = nepa(root, tmp_path, "pretrain", "pretrain.max_steps=2", "variant=mask_40")
    assert done.returncode == 0, done.stderr
    assert "DeepSpeed" not in done.stdout + done.stderr  # no third-party line on a clean run (accelerator, op build)
    assert (folder(tmp_path, "tiny-mask_40") / "metrics.json").is_file()
    assert nepa_main(arguments(root, tmp_path, "export", "variant=mask_40")) == 0  # no process group: in here
    export = tmp_path / "tiny-mask_40" / "export"
    umask = os.umask(0o022)
    os.umask(umask)
    for path in (export / "model.safetensors", latest_checkpoint(folder(tmp_path, "tiny-mask_40") / "checkpoints")):
        assert path.stat().st_mode & 0o666 == 0o666 & ~umask  # a lab's group reads them (not mkstemp's 0600)
    model = timm.create_model("nepa_tiny_patch4_32", pretrained=str(export / "model.safetensors"))
    assert model.mask_token is not None
    online, ema = final(tmp_path, "tiny-mask_40")
    assert all(torch.equal(model.state_dict()[k], ema[k]) for k in ema)
    assert not identical(online, ema)
    card = (export / "README.md").read_text()
    assert "- weights: ema" in card and "- step: 2" in card and "params_sha256" in card and "manifest sha256" in card
    official = ("--weights", "online", "--format", "official")
    assert nepa_main(arguments(root, tmp_path, "export", "variant=mask_40", args=official)) == 0
    state, _ = read_official(export / "official")  # the official model has no mask token: dropped
    assert identical(state, {k: v for k, v in online.items() if k != "mask_token"})


def test_a_build_lock_left_by_a_killed_run_does_not_hang_the_next(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch guards the JIT build of DeepSpeed's CPU op with a plain `lock` file: a run killed mid-build leaves
    it behind, and DeepSpeed alone then waits on it forever (a CI run hung so). The next run clears it."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(distributed.extensions_root()))  # build_cpu_comm_op sets it
    distributed.build_cpu_comm_op()  # as this environment's runs build it (a no-op once built)
    built = distributed.extensions_root() / "deepspeed_shm_comm"
    extensions = tmp_path / "torch_extensions"
    shutil.copytree(built, extensions / built.name)  # the op as built, so that its load is a no-op build
    (extensions / built.name / "lock").touch()
    done = subprocess.run(
        command(root, tmp_path, "pretrain", "pretrain.max_steps=1"),
        capture_output=True,
        text=True,
        env=environment(TORCH_EXTENSIONS_DIR=str(extensions)),
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert "left by an interrupted DeepSpeed op build" in done.stderr
    assert not (extensions / built.name / "lock").exists()


@pytest.mark.slow
def test_without_a_compiler_two_processes_train_over_plain_gloo(root: Path, tmp_path: Path) -> None:
    """The CPU image has no C++ compiler, so DeepSpeed's CPU op cannot build there: runs go on without it. The
    missing compiler is played by `false` standing in for cc/c++/gcc/g++ (the host has a real one)."""
    no_compiler = tmp_path / "bin"
    no_compiler.mkdir()
    for name in ("cc", "c++", "gcc", "g++"):
        (no_compiler / name).symlink_to(shutil.which("false"))
    env = {
        "PATH": f"{no_compiler}:{os.environ['PATH']}",
        "CXX": str(no_compiler / "c++"),
        "TORCH_EXTENSIONS_DIR": str(tmp_path / "torch_extensions"),
    }
    for status, output in two_processes(root, tmp_path / "runs", "pretrain.max_steps=2", **env):
        assert status == 0, output
        assert "collectives use plain gloo" in output
    assert len(losses(tmp_path / "runs")) == 2


@pytest.fixture(scope="module")
def untrained(root: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.Series:
    """The losses of the same 16 steps at lr 0: the same batches and draws, the initial weights."""
    runs = tmp_path_factory.mktemp("untrained")
    assert nepa(root, runs, "pretrain", "pretrain.base_lr=0.0", "pretrain.max_steps=16").returncode == 0
    return losses(runs)


@pytest.mark.slow
@pytest.mark.parametrize("stage, precision", [(0, "fp32"), (1, "fp32"), (2, "fp32"), (3, "fp32"), (3, "bf16")])
def test_each_zero_stage_trains(root: Path, tmp_path: Path, stage: int, precision: str, untrained: pd.Series) -> None:
    """The loss falls under every ZeRO stage, and under bf16 autocast (CPU autocast here, as on GPU)."""
    sets = (f"pretrain.zero_stage={stage}", f"pretrain.precision={precision}", "pretrain.max_steps=16")
    done = nepa(root, tmp_path, "pretrain", *sets)
    assert done.returncode == 0, done.stderr
    gain = losses(tmp_path) - untrained  # step by step on the same batches: batch-to-batch noise cancels
    assert len(gain) == 16 and gain.iloc[-8:].mean() < -0.02, gain.tolist()


@pytest.mark.slow
def test_kill_and_resume_ends_bit_identical(root: Path, tmp_path: Path) -> None:
    """Killed right after a checkpoint, during a checkpoint write, and between checkpoints, then resumed."""
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert nepa(root, reference, "pretrain").returncode == 0
    checkpoints = folder(killed) / "checkpoints"
    for hook, step, latest in (
        ("NEPA_EXIT_AT_STEP", 4, 3),
        ("NEPA_EXIT_IN_CHECKPOINT", 6, 3),
        ("NEPA_EXIT_AT_STEP", 8, 6),
    ):
        run = nepa(root, killed, "pretrain", **{hook: str(step)})
        assert run.returncode == EXIT_INJECTED, run.stderr
        assert latest_checkpoint(checkpoints) == checkpoints / tag(latest)
        if hook == "NEPA_EXIT_IN_CHECKPOINT":  # half-written, never named by `latest`
            assert (checkpoints / PARTIAL / tag(step)).is_dir() and not (checkpoints / tag(step)).exists()
    resumed = nepa(root, killed, "pretrain")
    assert resumed.returncode == 0 and "resuming from" in resumed.stderr, resumed.stderr
    assert not (checkpoints / PARTIAL / tag(6)).exists()
    assert read_state(latest_checkpoint(checkpoints)).step == 9
    (online, ema), (online_ref, ema_ref) = final(killed), final(reference)
    assert identical(online, online_ref) and identical(ema, ema_ref)
    assert losses(killed).equals(losses(reference))  # and the curve continues without duplicate rows


@pytest.mark.slow
def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(root: Path, tmp_path: Path) -> None:
    run = nepa(root, tmp_path, "pretrain", NEPA_INJECT_NAN_AT_STEP="5")
    assert run.returncode == EXIT_NONFINITE
    lines = [line for line in run.stderr.splitlines() if line.startswith("nepa pretrain: stopped")]
    assert len(lines) == 1 and "step 5" in lines[0] and tag(3) in lines[0], run.stderr
    checkpoints = folder(tmp_path) / "checkpoints"
    assert latest_checkpoint(checkpoints) == checkpoints / tag(3) and not (checkpoints / tag(5)).exists()
    assert losses(tmp_path).index.max() == 4  # the NaN step wrote nothing
    assert nepa(root, tmp_path, "export").returncode == 0
    model = timm.create_model("nepa_tiny_patch4_32", pretrained=str(tmp_path / "tiny-nepa/export/model.safetensors"))
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2])
def test_preemption_signal_checkpoints_and_exits_for_requeue(root: Path, tmp_path: Path, sig: signal.Signals) -> None:
    """As SLURM does, the signal goes to every process of the run, its DataLoader workers too."""
    proc = start(root, tmp_path, "pretrain.max_steps=16", "pretrain.num_workers=2", log=tmp_path / "log")
    wait_for_rows(folder(tmp_path) / "metrics.csv", 2, proc)
    os.killpg(proc.pid, sig)
    status, output = proc.wait(timeout=300), (tmp_path / "log").read_text()
    assert status == EXIT_REQUEUE, output
    step = int(losses(tmp_path).index.max())
    assert 2 <= step < 16 and f"signal {int(sig)} at step {step}" in output
    assert latest_checkpoint(folder(tmp_path) / "checkpoints").name == tag(step)


@pytest.mark.slow
def test_two_processes_match_one_and_resume_exactly_after_a_signal(root: Path, tmp_path: Path) -> None:
    """ZeRO-3 on two processes: the same global batches as one process give the same losses (to rounding) and
    EMA (gathered from each rank's partition); a signal to rank 0 alone stops both ranks at one step with a
    checkpoint, and the resumed run ends bit-identical to an uninterrupted two-process run."""
    same = ["pretrain.zero_stage=3", "model.rope_rescale=null"]  # no per-forward draws: 2x8 vs 1x(8+8) images
    one, two, stopped = tmp_path / "one", tmp_path / "two", tmp_path / "stopped"
    assert nepa(root, one, "pretrain", *same).returncode == 0
    assert [status for status, _ in two_processes(root, two, *same)] == [0, 0]
    assert torch.allclose(torch.tensor(losses(two).values), torch.tensor(losses(one).values), atol=1e-4)
    (online_1, ema_1), (online_2, ema_2) = final(one), final(two)
    assert all(torch.allclose(online_1[k], online_2[k], atol=1e-4) for k in online_1)
    assert all(torch.allclose(ema_1[k], ema_2[k], atol=1e-5) for k in ema_1)

    def signal_rank0(procs: list[subprocess.Popen]) -> None:
        wait_for_rows(folder(stopped) / "metrics.csv", 4, procs[0])
        procs[0].send_signal(signal.SIGUSR2)

    first = two_processes(root, stopped, *same, on_start=signal_rank0)
    assert [status for status, _ in first] == [EXIT_REQUEUE, EXIT_REQUEUE], first[0][1]
    assert [status for status, _ in two_processes(root, stopped, *same)] == [0, 0]
    (online_s, ema_s) = final(stopped)
    assert identical(online_s, online_2) and identical(ema_s, ema_2)
    assert losses(stopped).equals(losses(two))


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_single_node_launchers(root: Path, tmp_path: Path, launcher: str) -> None:
    """`torchrun --nproc_per_node 2` and `deepspeed --num_gpus 2` (on CPU: two gloo processes) run the verb."""
    bin_dir = Path(sys.executable).parent
    port = str(29600 + os.getpid() % 1000)
    start_ = {
        "torchrun": [bin_dir / "torchrun", "--nproc_per_node", "2", "--master_port", port, "-m"],
        "deepspeed": [bin_dir / "deepspeed", "--num_gpus", "2", "--master_port", port, "--no_local_rank", "--module"],
    }[launcher]
    args = arguments(root, tmp_path, "pretrain", "pretrain.max_steps=2")
    done = subprocess.run(
        [*map(str, start_), "nepa.cli", *args], env=environment(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    state = read_state(latest_checkpoint(folder(tmp_path) / "checkpoints"))
    assert (state.step, state.world) == (2, 2)


@pytest.mark.slow
def test_grad_checkpointing_switched_on_at_a_resume_continues_the_same_run(root: Path, tmp_path: Path) -> None:
    """pretrain.grad_checkpointing is OPERATIONAL (it changes memory, not a number): a run stopped at step 3 and
    resumed with it on ends with the weights, EMA and losses of the run that never had it."""
    whole, switched = tmp_path / "whole", tmp_path / "switched"
    assert (done := nepa(root, whole, "pretrain", "pretrain.max_steps=6")).returncode == 0, done.stderr
    assert (done := nepa(root, switched, "pretrain", "pretrain.max_steps=3")).returncode == 0, done.stderr
    done = nepa(root, switched, "pretrain", "pretrain.max_steps=6", "pretrain.grad_checkpointing=true")
    assert done.returncode == 0 and "resuming from" in done.stderr, done.stderr
    (online_a, ema_a), (online_b, ema_b) = final(whole), final(switched)
    assert identical(online_a, online_b) and identical(ema_a, ema_b)
    assert losses(whole).equals(losses(switched))
