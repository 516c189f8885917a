"""The repository stands alone: every repository path a tracked text file cites exists in it.

A citation is a path under one of the repository's own top-level folders (`nepa/...`, `docs/...`, `results/...`)
or a top-level file named bare (`params.yaml`, `dvc.yaml`). Templates count: `{stamp}`, `${kind}` and `*` stand
for any text, so `results/benchmarks/step_throughput_{cuda,cpu}_{stamp}.json` needs one tracked file it matches.
A path that a run writes is not in git, and is allowed when git ignores it (.gitignore: data/, runs/, logs/...),
when dvc.yaml declares it an output (the report), when it is the ablations target's report or when it is a
benchmark's result (the names the scripts record): nothing here lists them by hand. Nothing may cite the paper's
notes or the folder outside the repository they come from.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from nepa.config import load_params
from nepa.pipeline import ABLATIONS_REPORT, fill

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("nepa", "tests", "docs", "benchmarks", "workflow", "envs", "results", ".ci", ".github", ".dvc")
TOP_FILES = ("README.md", "params.yaml", "Snakefile", "dvc.yaml", "Dockerfile", "pyproject.toml", ".gitignore")
# A path is a run of these; `{a,b}` and `${x}` are template parts. Not preceded by a path character, so
# `/abs/nepa/x`, `site-packages/nepa/x` and URLs are not citations of this repository.
TEMPLATE = r"\$?\{[\w.,|-]*\}|\"?\$\w+\"?"  # {stamp}, {cuda,cpu}, ${item.size}, "$variant"
_PART = rf"(?:[\w./*-]|{TEMPLATE})"
CITATION = re.compile(
    rf"(?<![\w./~$-])((?:{'|'.join(map(re.escape, FOLDERS))})/{_PART}*"
    rf"|(?:{'|'.join(map(re.escape, TOP_FILES))})(?![\w.-]))"
)
# The notes and folder beside the repository that users do not have, as patterns (so that this file, too,
# names neither in plain text).
OUTSIDE_NAMES = (r"\.\./shared", r"PAPER\.md")
OUTSIDE = re.compile("|".join(rf"(?<![\w.]){name}\b" for name in OUTSIDE_NAMES))
SELF = Path(__file__).resolve().relative_to(ROOT).as_posix()  # its bad citations are made up, to test the check


def tracked_files() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout: the tracked files are what is checked")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [name for name in listed.stdout.split("\0") if name and name != SELF and (ROOT / name).is_file()]


def text_of(name: str) -> str | None:
    try:
        return (ROOT / name).read_text(encoding="utf-8")
    except UnicodeDecodeError:  # safetensors, png: not text
        return None


def citations(text: str) -> set[str]:
    """The repository paths `text` cites, as globs; regex-escaped dots (`envs/install\\.sh`) read as dots."""
    cited = set()
    for match in CITATION.finditer(text.replace("\\.", ".")):
        path = match.group(1).rstrip(".-")
        cited.add(re.sub(TEMPLATE, "*", path).rstrip("/"))
    return cited


def dvc_outputs() -> list[str]:
    """Every out, metric and plot dvc.yaml declares, as globs (`${item.size}` -> `*`)."""
    outputs = []
    for stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values():
        body = stage.get("do", stage)
        for key in ("outs", "metrics", "plots"):
            for entry in body.get(key, []):
                path = entry if isinstance(entry, str) else next(iter(entry))
                outputs.append(re.sub(r"\$\{[^}]*\}", "*", path))
    return outputs


def ablations_report_outputs() -> list[str]:
    """What `snakemake ablations` writes besides dvc.yaml's outputs (nepa/pipeline.py ABLATIONS_REPORT), and the
    folder it writes them in."""
    outputs = [fill(t, load_params(ROOT / "params.yaml")) for t in ABLATIONS_REPORT.outs + ABLATIONS_REPORT.extra_outs]
    return [*outputs, str(Path(outputs[0]).parent)]


def benchmark_outputs() -> list[str]:
    """What the benchmarks write (harness.write_result: results/benchmarks/{benchmark}_{device}_{stamp}.*), by the
    names they record: a GPU result is cited before a GPU run made it."""
    scripts = (ROOT / "benchmarks").glob("*.py")
    names = {name for script in scripts for name in re.findall(r'\brecord\("(\w+)"', script.read_text())}
    return [f"results/benchmarks/{name}_*" for name in sorted(names)]


def git_ignores(paths: list[str]) -> set[str]:
    """Those of `paths` that git ignores: what a run writes (data/, runs/, .dvc/config.local...)."""
    if not paths:
        return set()
    checked = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin", "-z"],
        cwd=ROOT,
        input="\0".join(paths),
        capture_output=True,
        text=True,
    )
    assert checked.returncode in (0, 1), checked.stderr  # 1: none ignored
    return set(filter(None, checked.stdout.split("\0")))


def unresolved(cited: dict[str, set[str]], files: list[str], runtime: list[str]) -> dict[str, set[str]]:
    """The cited paths (-> citing files) that match no tracked file or folder and are no run-time output."""
    folders = {str(parent) for name in files for parent in Path(name).parents if str(parent) != "."}
    names = set(files) | folders
    basenames = {Path(name).name for name in files}

    def exists(path: str) -> bool:
        if "*" not in path:  # a top-level file named bare may live below: "the Snakefile" is workflow/Snakefile
            return path in names or ("/" not in path and path in basenames)
        return any(fnmatch.fnmatchcase(name, path) for name in names)

    def written_at_run_time(path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, output) or fnmatch.fnmatchcase(path, output + "/*") for output in runtime)

    missing = {path: by for path, by in cited.items() if not exists(path) and not written_at_run_time(path)}
    ignored = git_ignores([path for path in missing if "*" not in path])
    return {path: by for path, by in missing.items() if path not in ignored}


def cited_by_repository(files: list[str]) -> dict[str, set[str]]:
    cited: dict[str, set[str]] = {}
    for name in files:
        text = text_of(name)
        for path in citations(text or ""):
            cited.setdefault(path, set()).add(name)
    return cited


def test_every_cited_path_is_in_the_repository() -> None:
    files = tracked_files()
    missing = unresolved(cited_by_repository(files), files,
                         dvc_outputs() + ablations_report_outputs() + benchmark_outputs())  # fmt: skip
    lines = [f"{path} (cited by {', '.join(sorted(by))})" for path, by in sorted(missing.items())]
    assert not lines, "cited but not in the repository:\n" + "\n".join(lines)


def test_nothing_cites_outside_the_repository() -> None:
    citing = [name for name in tracked_files() if OUTSIDE.search(text_of(name) or "")]
    assert not citing, f"cite what is outside the repository (say it in docs/paper.md instead): {citing}"


def test_the_check_finds_a_bad_reference() -> None:
    """The check can fail: a made-up module, a template no file matches and a missing top-level file are caught;
    a real file, a matching template and a run-time output pass."""
    files = tracked_files()
    text = (
        "see nepa/no_such_module.py, results/benchmarks/nothing_{stamp}.json, docs/gone/ and pyproject.toml; "
        "nepa/models/nepa_vit.py:12, results/benchmarks/step_throughput_{cuda,cpu}_{stamp}.json, "
        "`envs/install\\.sh`, results/report.html, .dvc/config.local, the Snakefile, "
        "https://example.org/nepa/elsewhere.py, /opt/site-packages/nepa/other.py."
    )
    cited = {path: {"example"} for path in citations(text)}
    assert set(unresolved(cited, files, dvc_outputs())) == {
        "nepa/no_such_module.py",
        "results/benchmarks/nothing_*.json",
        "docs/gone",
    }
    assert all(OUTSIDE.search(f"as {name.replace(chr(92), '')}/notes says") for name in OUTSIDE_NAMES)
