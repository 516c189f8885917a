"""docs/howto.md, done as a researcher does it, in a scratch copy of the repository whose code is the one that runs
(PYTHONPATH, as an editable install of that checkout would):
- "Add a variant": the record the page shows goes into nepa/variants.py where the page says, and nothing else is
  edited; the variant is then in `nepa plan`, in `snakemake -n` (the default target and `ablations`), in the
  dvc.yaml `python -m nepa.pipeline` renders, and in the rows of `nepa report`;
- "Add a dataset form": the page's lister and its line of recognise() go into nepa/data/imagenet_forms.py; `nepa
  prepare imagenet` then reads the new form and labels every image as the folder tree's shards do."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import yaml
from test_data import SMALL, prepared  # noqa: F401 (a fixture)
from test_workflow import BIN, ROOT, copy_workflow, set_params

HOWTO = ROOT / "docs" / "howto.md"


def howto_section(heading: str) -> str:
    text = HOWTO.read_text()
    section = text[text.index(f"## {heading}") :]
    return section[: section.index("\n## ")]


def code_blocks(section: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


def howto_record() -> tuple[str, str, str]:
    """(the record's code, its variant's name, the variant it goes after) as docs/howto.md gives them."""
    section = howto_section("Add a variant")
    code = code_blocks(section)[0]
    name = re.search(r'Variant\(\s*"(\w+)"', code)[1]
    after = re.search(r"Add this record to `VARIANTS` in `nepa/variants.py`, after `(\w+)`", " ".join(section.split()))
    return code, name, after[1]


def with_record(source: str, code: str, after: str) -> str:
    """nepa/variants.py's text with `code` inserted after the entry of variant `after` in VARIANTS."""
    tree = ast.parse(source)
    registry = next(n for n in tree.body if isinstance(n, ast.AnnAssign) and n.target.id == "VARIANTS")
    entry = next(arg for arg in registry.value.args if arg.args[0].value == after)
    lines = source.splitlines(keepends=True)
    record = textwrap.indent(code.rstrip("\n"), "    ") + ",\n"  # an entry of the VARIANTS(...) call
    return "".join(lines[: entry.end_lineno]) + record + "".join(lines[entry.end_lineno :])


def run(*command: str, cwd: Path, expect: int = 0) -> str:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(cwd), "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == expect, f"{' '.join(command)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def test_a_variant_added_in_one_place_reaches_the_plan_both_dags_and_the_report(tmp_path: Path) -> None:
    code, name, after = howto_record()
    work = copy_workflow(tmp_path / "repo")
    shutil.copy(ROOT / "params.yaml", work / "params.yaml")
    set_params(work / "params.yaml", f"variants=[nepa,{name}]", f"ablation_variants=[{name}]")
    run("git", "init", "-q", cwd=work)
    refused = run("nepa", "params", "--variant", name, cwd=work, expect=2)  # this copy's code: not there yet
    assert f"variant {name!r} is not one of" in refused

    variants = work / "nepa" / "variants.py"
    variants.write_text(with_record(variants.read_text(), code, after))
    row = re.search(r'PaperRow\("([\w-]+)", "(\w+)", "([^"]+)"', code)
    key, sub_table, setting = row[1], row[2], row[3]

    plan = run("nepa", "plan", cwd=work)
    assert re.search(rf"^pretrain tiny-{name} .*\b{key}\b", plan, re.MULTILINE), plan
    assert re.search(rf"^finetune tiny-{name} +all,ablations ", plan, re.MULTILINE), plan
    for target in ((), ("ablations",)):
        dry = run("snakemake", "-n", "--forceall", "--cores", "1", *target, cwd=work)
        assert f"variant={name}" in dry and f"runs/tiny-{name}/pretrain" in dry, dry[-3000:]
    run(sys.executable, "-m", "nepa.pipeline", cwd=work)
    stages = yaml.safe_load((work / "dvc.yaml").read_text())["stages"]
    for stage in ("pretrain", "export", "finetune", "probe", "segment"):
        assert f"tiny-{name}" in stages[stage]["foreach"], stage
    assert f"runs/tiny-{name}/finetune/metrics.json" in stages["report"]["deps"]

    run("nepa", "report", cwd=work)
    ablations = pd.read_csv(work / "results" / "report" / "paper_ablations.csv")
    [ours] = ablations[ablations["Setting"] == setting].to_dict("records")
    assert (ours["Table"], ours["Paper"]) == (sub_table, "— (not in the paper)")
    assert ours["Compared with"].startswith("input masking 0%")
    assert setting in (work / "results" / "report.md").read_text()


def with_form(source: str, lister: str, recognition: str) -> str:
    """nepa/data/imagenet_forms.py's text with `lister` after scan_folder and `recognition` first in recognise()'s
    folder branch."""
    tree = ast.parse(source)
    functions = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    after = functions["scan_folder"].end_lineno
    before = functions["recognise"].body[1].body[0].lineno - 1  # [0] is its docstring, [1] `if src.is_dir():`
    lines = source.splitlines(keepends=True)
    return "".join([*lines[:after], "\n\n", lister, *lines[after:before], recognition, *lines[before:]])


def rows(shards: Path) -> dict[str, int]:
    """key -> label of every row of a prepared ImageNet split folder."""
    tables = [pq.read_table(p, columns=["key", "label"]) for p in sorted(shards.glob("*.parquet"))]
    return {k: label for t in tables for k, label in zip(t["key"].to_pylist(), t["label"].to_pylist(), strict=True)}


def test_a_dataset_form_added_in_one_module_labels_as_the_tree_does(
    prepared: Path,  # noqa: F811 (the fixture imported from test_data)
    tmp_path: Path,
) -> None:
    lister, recognition = code_blocks(howto_section("Add a dataset form"))[:2]
    work = tmp_path / "repo"
    shutil.copytree(ROOT / "nepa", work / "nepa", ignore=shutil.ignore_patterns("__pycache__"))
    forms = work / "nepa" / "data" / "imagenet_forms.py"
    forms.write_text(with_form(forms.read_text(), lister, recognition))
    tree = prepared / "data" / "raw" / "imagenet"  # the embedded ImageFolder tree, and its shards beside
    flat = tmp_path / "flat"
    for split in ("train", "val"):  # the form: no class folders, each file named <wnid>_...
        (flat / split).mkdir(parents=True)
        for image in (tree / split).rglob("*.JPEG"):
            wnid = image.parent.name
            os.link(image, flat / split / (image.name if image.name.startswith(wnid) else f"{wnid}_{image.name}"))
    (work / "params.yaml").write_text("seed: 0\n")
    sets = [x for s in [*SMALL, f"data.root={work / 'data'}"] for x in ("--set", s)]
    said = run("nepa", "prepare", "imagenet", "--src", str(flat), *sets, cwd=work)
    assert f"{flat}: flat folders (train/, val/ of <wnid>_<n>.JPEG)" in said

    ours, theirs = (work / "data/shards/imagenet", prepared / "data/shards/imagenet")
    classes = [[c["id"] for c in json.loads((s / "manifest.json").read_text())["classes"]] for s in (ours, theirs)]
    assert classes[0] == classes[1]
    assert rows(ours / "train") == rows(theirs / "train")  # the same files, keys and labels
    unprefixed = {}  # val/<wnid>/<wnid>_<name> -> val/<wnid>/<name>, the tree's key
    for key, label in rows(ours / "val").items():
        folder, _, name = key.rpartition("/")
        unprefixed[f"{folder}/{name.split('_', 1)[1]}"] = label
    assert unprefixed == rows(theirs / "val") and unprefixed
