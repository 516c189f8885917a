"""timm's own model test battery (test_models.py in the installed timm's sdist) on nepa_tiny and nepa_small.

The sdist is fetched by pip at test time (PyPI, as CI installs everything; never copied into this repository).
Its tests/ and pytest config run in a subprocess against the installed timm, with a conftest that registers the
nepa models, selected by name (`-k`) as timm's CI selects its own. Where timm sorts its own models into lists,
ours are added to the same lists (DECLARATIONS, each with its reason); nothing else is excluded: every selected
test must pass.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import timm

MODELS = ("nepa_tiny_patch4_32", "nepa_small_patch14_224")
# test_models.py's lists -> the pattern added, and why (timm puts its own models there for the same reasons)
DECLARATIONS = {
    "NON_STD_FILTERS": (
        "nepa_*",
        "a ViT: forward_features gives a token sequence (B, 1+N, D), not an NCHW map; timm lists its ViTs ('vit_*') "
        "here, whose config test checks what a token model has instead",
    ),
    "FEAT_INTER_FILTERS": (
        "models",
        "the timm module our names are registered from (nepa.models): opts them into timm's forward_intermediates, "
        "features_only and pruning tests, as timm lists its modules that implement them",
    ),
    "EXCLUDE_JIT_FILTERS": (
        "nepa_*",
        "TorchScript (deprecated in PyTorch 2 in favour of torch.export, which works: tests/test_model.py): "
        "scripting would need the readable model rewritten (no config object, no module arguments, List-typed "
        "taps); timm excludes its own unscriptable models (hiera, naflex, ...) in this list",
    ),
}
# Each must have run for both models and passed: the battery cannot pass by selecting nothing.
REQUIRED = {
    "test_model_forward",
    "test_model_backward",
    "test_model_default_cfgs_non_std",
    "test_model_forward_intermediates_features",
    "test_model_forward_intermediates",
    "test_prune_intermediate_layers_contract",
    "test_model_forward_fx",
    "test_model_backward_fx",
}


def declare(source: str) -> str:
    """test_models.py with each DECLARATIONS pattern first in its list; a list not found fails loudly."""
    for name, (pattern, _) in DECLARATIONS.items():
        anchor = f"\n{name} = ["
        assert source.count(anchor) == 1, f"timm {timm.__version__}'s test_models.py has no single `{name} = [`"
        source = source.replace(anchor, f"{anchor}{pattern!r}, ")
    return source


@pytest.fixture(scope="module")
def battery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """timm's tests/ and pytest config from its sdist, declared and with a conftest registering nepa's models."""
    folder = tmp_path_factory.mktemp("timm-sdist")
    spec = f"timm=={timm.__version__}"
    fetched = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", spec, "-d", str(folder)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert fetched.returncode == 0, f"pip could not fetch the {spec} sdist (PyPI unreachable?): {fetched.stderr}"
    (sdist,) = folder.glob("timm-*.tar.gz")
    root = folder / "timm"
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        members = [m for m in tar.getmembers() if m.name.startswith((f"{top}/tests/", f"{top}/pyproject.toml"))]
        tar.extractall(folder, members=members, filter="data")  # not timm/: the tests run the installed timm
    (folder / top).rename(root)
    tests = root / "tests"
    (tests / "test_models.py").write_text(declare((tests / "test_models.py").read_text()))
    with (tests / "conftest.py").open("a") as conftest:
        conftest.write("\nimport nepa.models  # noqa: E402,F401  (registers the nepa names with timm)\n")
    return root


def outcomes(report: Path) -> dict[str, str]:
    """test id -> passed | failed | skipped, from pytest's JUnit XML."""
    out = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        kinds = {child.tag for child in case} & {"failure", "error", "skipped"}
        out[f"{case.get('name')}"] = "failed" if kinds & {"failure", "error"} else "skipped" if kinds else "passed"
    return out


def test_timm_model_battery_passes_for_nepa_tiny_and_small(battery: Path) -> None:
    report = battery / "report.xml"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "test_models.py", "-k", " or ".join(MODELS), "-p", "no:cacheprovider",
         "-q", f"--junitxml={report}"],
        cwd=battery / "tests", capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    results = outcomes(report)
    failed = sorted(name for name, kind in results.items() if kind == "failed")
    passed = [name for name, kind in results.items() if kind == "passed"]
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr[-2000:]
    print(f"timm {timm.__version__} battery on {', '.join(MODELS)}: {summary}")
    assert not failed, f"{len(failed)} of timm's tests failed: {failed}\n{run.stdout[-8000:]}"
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    for model in MODELS:
        ran = {name.split("[")[0] for name in passed if model in name}
        assert ran >= REQUIRED, f"{model}: not run or not passed: {sorted(REQUIRED - ran)}"
