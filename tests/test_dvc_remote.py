"""`dvc push` stores where params.yaml's dvc_remote says, with real DVC: nepa commands keep .dvc/config on it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from test_workflow import BIN, run

ROOT = Path(__file__).resolve().parents[1]


def clone(tmp_path: Path) -> Path:
    """The repository's params.yaml and DVC setup in a fresh git repository, with one file under DVC."""
    work = tmp_path / "clone"
    (work / ".dvc").mkdir(parents=True)
    for name in ("params.yaml", ".dvc/config", ".dvc/.gitignore"):
        shutil.copy(ROOT / name, work / name)
    run("git", "init", "-q", cwd=work)
    (work / "data.txt").write_text("a prepared shard, say\n")
    run("dvc", "add", "-q", "data.txt", cwd=work)
    return work


def unchecked(work: Path, *command: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=300)


def nepa(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return unchecked(work, sys.executable, "-m", "nepa.cli", *args)


def set_remote(work: Path, remote: str) -> None:
    params = work / "params.yaml"
    params.write_text(params.read_text().replace("dvc_remote: ../nepa-dvc-storage", f"dvc_remote: {remote}"))


def stored(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_push_goes_where_params_say(tmp_path: Path) -> None:
    work = clone(tmp_path)
    # the default, ../nepa-dvc-storage, is beside the clone (DVC reads relative paths from .dvc/)
    run("dvc", "push", "-q", cwd=work)
    assert stored(tmp_path / "nepa-dvc-storage") and not (work / "nepa-dvc-storage").exists()
    # a changed dvc_remote: the next nepa command (any that reads params) points DVC at it
    set_remote(work, "../elsewhere")
    out = nepa(work, "params")
    assert out.returncode == 0
    assert f"nepa: {Path('.dvc/config')}: DVC remote set to ../elsewhere (params dvc_remote)" in out.stderr
    run("dvc", "push", "-q", cwd=work)
    assert stored(tmp_path / "elsewhere") and not (work / "elsewhere").exists()
    assert nepa(work, "params").stderr == ""  # once current, nothing to say


def test_unusable_remote_is_one_line(tmp_path: Path) -> None:
    work = clone(tmp_path)
    (tmp_path / "blocker").write_text("a file where the remote's folder would be\n")
    set_remote(work, "../blocker/storage")
    out = nepa(work, "params")
    assert out.returncode == 0  # the stages can still run; only `dvc push` cannot
    assert out.stderr.splitlines()[-1] == (
        "nepa: params dvc_remote '../blocker/storage' is not usable (../blocker is a file, not a folder): "
        "`dvc push` will fail; set dvc_remote to a folder you can write or a DVC remote URL"
    )
    assert unchecked(work, "dvc", "push").returncode != 0  # what the line warns of


def test_a_remote_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    """A folder nothing can be created in (here /proc, which refuses even root): the same one line, before
    `dvc push` fails with DVC's own error."""
    work = clone(tmp_path)
    set_remote(work, "/proc/nepa-storage")
    out = nepa(work, "params")
    assert out.returncode == 0
    assert out.stderr.splitlines()[-1].startswith(
        "nepa: params dvc_remote '/proc/nepa-storage' is not usable (/proc is not writable: "
    )
    assert unchecked(work, "dvc", "push").returncode != 0
