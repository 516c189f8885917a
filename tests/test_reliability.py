"""Nothing lost on any failure: a failed prepare, a full disk, file permissions, bad sizes, a model file that
does not fit, a signal during start-up. Each drives the real verb and checks the one line it prints, its exit
status, and that what was there before is still there and readable."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_engine_runs as engine_runs
import torch
import torch.utils.cpp_extension
from test_data import _truncate, _wrong_mask_size, copy_of, nepa, prepared  # noqa: F401 (a fixture)
from test_engine_runs import root  # noqa: F401 (a fixture)

from nepa.data.loaders import read_split, verify_split
from nepa.engine.checkpoint import latest_checkpoint, read_state
from nepa.errors import EXIT_USAGE
from nepa.models import create, save_model_file
from nepa.stopping import EXIT_REQUEUE

SHARDS = "data/shards"


def state_of(work: Path, dataset: str) -> dict[str, bytes]:
    """Every file of a dataset's prepared folder, by path: the previous complete state."""
    folder = work / SHARDS / dataset
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def readable(work: Path, dataset: str) -> None:
    """What the loaders check before a run: the manifest, and every shard against its sha256."""
    manifest = json.loads((work / SHARDS / dataset / "manifest.json").read_text())
    for split in manifest["splits"]:
        read_split(work / SHARDS / dataset / split)
        verify_split(work / SHARDS / dataset / split)


def said(stderr: str) -> list[str]:
    """The verb's own lines (not its progress bars); there must be one, and no traceback."""
    lines = [line for line in stderr.splitlines() if line.startswith("nepa ") and "%|" not in line]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines


@pytest.mark.parametrize(("dataset", "damage"), [("imagenet", _truncate), ("ade20k", _wrong_mask_size)])
def test_a_failed_prepare_leaves_the_previous_shards_readable(
    prepared: Path,  # noqa: F811 (the fixture imported from test_data)
    tmp_path: Path,
    capsys,
    dataset: str,
    damage,
) -> None:
    """Sources change (a newer file, so shards must be rewritten) and one of them is bad: the run stops with
    its one line, and the manifest and shards of the previous run are still there, matching each other."""
    work = copy_of(prepared, tmp_path)
    before = state_of(work, dataset)
    raw = work / "data/raw" / ("imagenet" if dataset == "imagenet" else "ADEChallengeData2016")
    for image in sorted(raw.rglob("*"))[::7]:  # many shards to rewrite, most of them good
        if image.is_file():
            os.utime(image)
    bad = damage(work / "data/raw")
    capsys.readouterr()
    assert nepa(work, "prepare", dataset) == EXIT_USAGE
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"nepa prepare: error: {bad}: ")
    after = state_of(work, dataset)
    assert {k: v for k, v in after.items() if not k.startswith(".staging/")} == before
    readable(work, dataset)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"a tmpfs cannot be mounted here (root needed): {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(folder: Path) -> Path:
    """Leave no free byte on `folder`'s file system."""
    filler = folder / "filler"
    with contextlib.suppress(OSError), open(filler, "wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 4096)
    return filler


def test_a_full_disk_is_one_line_and_loses_nothing(prepared: Path, tmp_path: Path, capsys) -> None:  # noqa: F811
    """A real ENOSPC: the shards live on a 4 MiB tmpfs (this test mounts one, as root), filled up before the
    shards must be rewritten. The verb names the file it could not write; the previous shards, manifest
    included, are untouched; with room again the same command finishes."""
    work = tmp_path
    shutil.copytree(prepared / "data/raw", work / "data/raw")
    with tmpfs(work / SHARDS, "4m"):
        assert nepa(work, "prepare", "imagenet") == 0
        before = state_of(work, "imagenet")
        for image in sorted((work / "data/raw/imagenet/train").rglob("*.JPEG"))[::5]:
            os.utime(image)
        filler = fill(work / SHARDS)
        capsys.readouterr()
        assert nepa(work, "prepare", "imagenet") == EXIT_USAGE
        err = said(capsys.readouterr().err)
        assert err[0].startswith(f"nepa prepare: error: {work / SHARDS / 'imagenet'}/")
        assert "No space left on device; free space there" in err[0], err[0]
        filler.unlink()
        assert not [p for p in (work / SHARDS).rglob("*") if ".tmp" in p.name]  # no half-written file
        assert {k: v for k, v in state_of(work, "imagenet").items() if not k.startswith(".staging/")} == before
        readable(work, "imagenet")
        assert nepa(work, "prepare", "imagenet") == 0
        readable(work, "imagenet")
        assert not (work / SHARDS / "imagenet/.staging").exists()


def test_a_read_only_file_system_is_one_line(prepared: Path, tmp_path: Path, capsys) -> None:  # noqa: F811
    """EROFS where a stage writes (root may write anywhere else, so no EACCES to be had without a second user)."""
    work = tmp_path
    shutil.copytree(prepared / "data/raw", work / "data/raw")
    with tmpfs(work / SHARDS, "1m,ro"):
        capsys.readouterr()
        assert nepa(work, "prepare", "imagenet") == EXIT_USAGE
        err = said(capsys.readouterr().err)
    assert err[0].startswith(f"nepa prepare: error: {work / SHARDS / 'imagenet'}"), err
    assert "Read-only file system; make it writable" in err[0]


# ---- the engine's verbs, on the tiny pretraining data of tests/test_engine_runs.py -------------


def test_a_global_batch_larger_than_the_data_is_one_line(root: Path, tmp_path: Path) -> None:  # noqa: F811
    done = engine_runs.nepa(root, tmp_path, "pretrain", "pretrain.global_batch=512")  # 256 images
    assert done.returncode == EXIT_USAGE
    assert said(done.stderr) == [
        "nepa pretrain: error: the global batch is larger than the training data: one optimizer step takes 64 "
        "micro-batch(es) per process, an epoch has 32; lower global_batch or prepare more data"
    ]


def test_a_model_file_with_a_wrong_shaped_tensor_names_it(root: Path, tmp_path: Path) -> None:  # noqa: F811
    model = create("nepa_tiny_patch4_32")
    state = model.state_dict()
    hidden, width = state["blocks.2.mlp.fc1.weight"].shape
    state["blocks.2.mlp.fc1.weight"] = torch.zeros(700, width)  # the header still says `hidden` units
    path = save_model_file(state, model.cfg, tmp_path / "model.safetensors")
    done = engine_runs.nepa(root, tmp_path, "finetune", args=("--init", str(path)))
    assert done.returncode == EXIT_USAGE
    assert said(done.stderr) == [
        f"nepa finetune: error: {path}: tensor blocks.2.mlp.fc1.weight is [700, {width}] in the file, but the "
        f"model its header describes has [{hidden}, {width}]; the file is damaged or was edited: export it again "
        "(`nepa export`, `nepa import-official`)"
    ]


def holds(pid: int, name: str) -> bool:
    """Whether process `pid` has a file called `name` open."""
    with contextlib.suppress(OSError):
        return any(os.readlink(f"/proc/{pid}/fd/{fd}").endswith(name) for fd in os.listdir(f"/proc/{pid}/fd"))
    return False


def test_a_signal_during_start_up_stops_like_a_preemption(root: Path, tmp_path: Path) -> None:  # noqa: F811
    """SIGTERM while the verb waits for another process's build of DeepSpeed's CPU op (the start-up that can
    last minutes): one line, exit 75, nothing written; the same command then runs."""
    built = Path(torch.utils.cpp_extension._get_build_directory("deepspeed_shm_comm", verbose=False))
    extensions = tmp_path / "torch_extensions"
    shutil.copytree(built, extensions / built.name)
    env = {"TORCH_EXTENSIONS_DIR": str(extensions)}
    runs = tmp_path / "runs"
    with open(extensions / built.name / "nepa.flock", "w") as other_build:
        fcntl.flock(other_build, fcntl.LOCK_EX)
        proc = engine_runs.start(root, runs, "pretrain.max_steps=1", log=tmp_path / "log", **env)
        deadline = time.monotonic() + 120
        while not holds(proc.pid, "nepa.flock"):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "log").read_text()
            time.sleep(0.1)
        time.sleep(0.5)  # in its flock() call by now
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == EXIT_REQUEUE
    output = (tmp_path / "log").read_text()
    assert said(output) == [
        "nepa pretrain: stopped by signal 15 before training; nothing written is half-done, run the same command "
        "again to continue (exit 75)"
    ]
    assert not (runs / "tiny-nepa/pretrain/checkpoints").exists()
    done = engine_runs.nepa(root, runs, "pretrain", "pretrain.max_steps=1", **env)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_keeps_the_last_one(root: Path, tmp_path: Path) -> None:  # noqa: F811
    """The run folder on a 16 MiB tmpfs, sized for the embedded tiny model: the checkpoint of step 3 (weights,
    AdamW moments, EMA) fits, the one of step 6 does not. One line naming the checkpoint, exit 2, `latest` still
    step 3; with room the same command resumes from it and finishes. Then an export to a full disk: one line,
    no file left."""
    with tmpfs(tmp_path / "runs", "16m") as runs:
        done = engine_runs.nepa(root, runs, "pretrain")
        assert done.returncode == EXIT_USAGE, done.stderr
        checkpoints = runs / "tiny-nepa/pretrain/checkpoints"
        [line] = said(done.stderr)
        assert line.startswith(f"nepa pretrain: error: {checkpoints / '.partial/step_00000006'}: No space left"), line
        assert latest_checkpoint(checkpoints) == checkpoints / "step_00000003"
        subprocess.run(["mount", "-o", "remount,size=256m", str(runs)], check=True)
        done = engine_runs.nepa(root, runs, "pretrain")
        assert done.returncode == 0 and "resuming from" in done.stderr, done.stderr
        assert read_state(latest_checkpoint(checkpoints)).step == 9
        with tmpfs(tmp_path / "full", "64k") as full:  # the export's model file does not fit
            done = engine_runs.nepa(root, runs, "export", args=("--out", str(full)))
            assert done.returncode == EXIT_USAGE
            assert said(done.stderr) == [
                f"nepa export: error: {full / 'model.safetensors'}: No space left on device; free space there (or "
                "point data.root / runs elsewhere) and re-run: work already finished is kept"
            ]
            assert not list(full.iterdir())
