"""One environment everywhere: the Dockerfile, CI and the README install with envs/install.sh, and the
versions named in the Dockerfile, envs/, the Snakefile and the package agree; DeepSpeed's CPU op is had
without a stall or a surprise (nepa.engine.distributed). The image itself is built and run by
tests/test_image.py (slow).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml
from deepspeed.git_version_info import installed_ops

import nepa

ROOT = Path(__file__).resolve().parents[1]
OP = "deepspeed_shm_comm"  # DeepSpeed's CPU shared-memory collectives


def pins(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", path.read_text(), flags=re.MULTILINE))


def test_one_install_script_for_image_ci_and_readme() -> None:
    assert re.search(r"^RUN bash envs/install\.sh", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE)
    ci_command = (ROOT / ".ci/run").read_text().strip().splitlines()[-1]
    assert ci_command.startswith("bash envs/install.sh --test")
    assert f"\n{ci_command}\n" in (ROOT / "README.md").read_text()  # CI runs the README's test command


def test_torch_pins_agree_everywhere_and_the_cpu_one_names_the_cpu_build() -> None:
    cpu, cuda = pins(ROOT / "envs/requirements-cpu.txt"), pins(ROOT / "envs/requirements-cuda.txt")
    constraints = pins(ROOT / "envs/constraints-cpu.txt")
    assert cpu["torchvision"] == cuda["torchvision"] == constraints["torchvision"]
    assert cpu["torch"] == cuda["torch"] and constraints["torch"] == f"{cpu['torch']}+cpu"  # never PyPI's CUDA torch
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("torch>=2.13") for d in project["dependencies"])


def test_cuda_base_matches_the_torch_wheels_cuda() -> None:
    wheel_cuda = re.search(r"# cuda: (\d+\.\d+)", (ROOT / "envs/requirements-cuda.txt").read_text())[1]
    dockerfile = (ROOT / "Dockerfile").read_text()
    base = re.search(r"ARG BASE=nvidia/cuda:(\d+\.\d+)\.\d+-", dockerfile)[1]
    workflow = (ROOT / ".github/workflows/release.yml").read_text()
    assert base == wheel_cuda
    assert f"nvidia/cuda:{base}" in workflow


def test_image_name_and_version_come_from_one_place() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == nepa.__version__
    assert nepa.IMAGE.endswith(f":{nepa.__version__}")
    assert re.search(r"ARG VERSION=" + re.escape(nepa.__version__), (ROOT / "Dockerfile").read_text())
    snakefile = (ROOT / "Snakefile").read_text()
    assert 'container: f"docker://{IMAGE}"' in snakefile and "from nepa import IMAGE" in snakefile
    assert 'runpy.run_path("nepa/__init__.py")["IMAGE"]' in (ROOT / ".github/workflows/release.yml").read_text()


def test_conda_environment_holds_the_pinned_requirements_and_this_checkouts_nepa() -> None:
    """Conda runs an environment file's pip lines from the file's folder: `-e ..` is this checkout. (Conda does not
    run here; pip given the same lines from envs/ installed this checkout's nepa, editable.)"""
    env = yaml.safe_load((ROOT / "envs/environment.yaml").read_text())
    [pip] = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    assert "python=3.11" in env["dependencies"] and pip == ["-r requirements-cuda.txt", "-e .."]


def test_the_dockerfile_assumes_no_free_uid_and_no_writable_image() -> None:
    """ubuntu:24.04 and nvidia/cuda:*-ubuntu24.04 already hold uid 1000 (`ubuntu`), and Apptainer runs the
    caller's uid over a read-only image: the image creates no account and its HOME, where every cache goes,
    is the work folder (tests/test_image.py runs it so, as two uids)."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"\b(useradd|adduser|usermod|chown)\b", dockerfile)
    assert re.search(r"^ENV .*\bHOME=/work\b", dockerfile, flags=re.MULTILINE) and "\nWORKDIR /work\n" in dockerfile


# ---- DeepSpeed's CPU communication op (nepa.engine.distributed) ---------------------------------------


def built_op(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The op's folder as this environment's runs build it (built here if no run has yet)."""
    from nepa.engine import distributed

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(distributed.extensions_root()))  # build_cpu_comm_op sets it
    if installed_ops.get(OP):
        pytest.skip("DeepSpeed's CPU op is prebuilt in this environment: nothing is JIT-built")
    distributed.build_cpu_comm_op()
    return distributed.extensions_root() / OP


def test_the_op_folder_is_one_per_environment_unless_torch_extensions_dir_says(monkeypatch: pytest.MonkeyPatch) -> None:
    from nepa.engine.distributed import extensions_root

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    here = extensions_root()
    monkeypatch.setattr(sys, "prefix", "/elsewhere/.venv")
    assert extensions_root() != here and extensions_root().parent == here.parent
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/scratch/torch_extensions")
    assert extensions_root() == Path("/scratch/torch_extensions")


def test_a_build_held_by_another_process_is_announced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs starting together (the ranks of a job, a DAG's jobs) build the op once; the others say they wait."""
    folder = tmp_path / "extensions" / OP
    shutil.copytree(built_op(monkeypatch), folder)  # as built: once the wait is over, the load is quick
    log = tmp_path / "stderr"
    with open(folder / "nepa.flock", "w") as guard, open(log, "w") as stderr:
        fcntl.flock(guard, fcntl.LOCK_EX)  # another process is building
        build = "from nepa.engine.distributed import build_cpu_comm_op; build_cpu_comm_op()"
        env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(folder.parent)}
        waiting = subprocess.Popen([sys.executable, "-c", build], env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 120
        while "waiting for another process" not in log.read_text():
            assert waiting.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    assert waiting.wait(timeout=120) == 0, log.read_text()  # the flock released: it goes on
    assert log.read_text().count("\n") == 1, log.read_text()


def test_an_unusable_op_folder_is_one_line_and_deepspeed_starts_without_the_op(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """e.g. a home that cannot be written: the op only speeds collectives up, so say why and go on over gloo."""
    import deepspeed

    from nepa.engine.distributed import build_cpu_comm_op

    if installed_ops.get(OP):
        pytest.skip("DeepSpeed's CPU op is prebuilt in this environment: no folder is needed")
    (tmp_path / "file").touch()
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "file" / "extensions"))
    monkeypatch.setitem(deepspeed.ops.__compatible_ops__, OP, True)  # restored for the other tests
    build_cpu_comm_op()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Not a directory; set TORCH_EXTENSIONS_DIR to a writable folder" in err, err
    assert "collectives use plain gloo" in err and deepspeed.ops.__compatible_ops__[OP] is False


def test_deepspeed_gets_the_accelerator_nepa_runs_on() -> None:
    """`import deepspeed` picks one by probing; nepa's device decides (an Apple or Intel GPU is not trained on)."""
    from deepspeed.accelerator import get_accelerator, set_accelerator
    from deepspeed.accelerator.cuda_accelerator import CUDA_Accelerator

    from nepa.engine.distributed import use_accelerator

    probed = get_accelerator()
    try:
        set_accelerator(CUDA_Accelerator())  # as a probe that found another device would have left it
        use_accelerator(cuda=False)
        assert get_accelerator().device_name() == "cpu"
        chosen = get_accelerator()
        use_accelerator(cuda=False)
        assert get_accelerator() is chosen  # already right: left alone
    finally:
        set_accelerator(probed)
