"""docs/howto.md's "Add a variant", done as a researcher does it: in a scratch copy of the repository, the record
the page shows goes into nepa/variants.py where the page says, and nothing else is edited. The variant is then
in `nepa plan`, in `snakemake -n` (the default target and `ablations`), in the dvc.yaml `python -m nepa.pipeline`
renders, and in the rows of `nepa report`. The scratch copy's code is the one that runs (PYTHONPATH), as an
editable install of that checkout would."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import yaml
from test_workflow import BIN, ROOT, copy_workflow

HOWTO = ROOT / "docs" / "howto.md"


def howto_record() -> tuple[str, str, str]:
    """(the record's code, its variant's name, the variant it goes after) as docs/howto.md gives them."""
    text = HOWTO.read_text()
    section = text[text.index("## Add a variant") :]
    section = section[: section.index("\n## ")]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)[1]
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
    (work / "params.yaml").write_text(
        (ROOT / "params.yaml").read_text().replace("variants: [nepa]", f"variants: [nepa, {name}]")
        + f"ablation_variants: [{name}]\n"
    )
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
