"""A run's provenance: editing params.yaml, as the README says, is recorded as params, not as a dirty tree;
the seed is recorded (issue 20: the report groups runs by what they record)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from nepa.config import load_params
from nepa.provenance import git_commit, write_metrics


def git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True, capture_output=True
    )


def test_params_edits_do_not_make_the_commit_dirty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("params.yaml", "code.py"):
        (tmp_path / name).write_text("x: 1\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "one")
    monkeypatch.chdir(tmp_path / "sub")  # a verb may run below the repository root
    clean = git_commit()
    assert len(clean) == 40
    (tmp_path / "params.yaml").write_text("x: 2\n")
    assert git_commit() == clean
    (tmp_path / "code.py").write_text("x: 2\n")
    assert git_commit() == clean + "-dirty"


def test_the_seed_is_recorded(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("seed: 7\n")
    params = load_params(tmp_path / "params.yaml")
    record = json.loads(write_metrics(tmp_path / "out", "probe", {"m": 1.0}, params).read_text())
    assert record["provenance"]["seed"] == 7
