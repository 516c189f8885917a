"""The pipeline's stages, once: dvc.yaml is rendered from this table, and the rules written out in
workflow/rules/*.smk are checked against it (tests/test_workflow.py: the same jobs, commands, inputs and
outputs, for the default target, at scale full and with runs per seed).

Each stage is one `nepa` verb. Paths are templates over {data} (params data.root), {runs}, {results}, the
datasets' sources and, for per-model stages, {run} (nepa/layout.py: {size}-{variant}, and the seed where runs
are per seed). Which runs a target runs is the experiment plan's (nepa/plan.py): both tools run its jobs, a
fine-tune-only variant's downstream stages start from the export of the run it reuses ({source_run}).
`python -m nepa.pipeline` writes dvc.yaml (the default target's runs and plots, for the params at hand),
.dvc/config and the params schema.

What re-runs a stage, in both tools: its command, its params sections and its input files. The code is not
an input of either: a change to the nepa package re-runs nothing by itself (a stage can cost GPU-days; every
metrics.json records the git commit it ran at); `snakemake -R STAGE` or `dvc repro -f STAGE` re-runs one.
Snakemake's `--config` values reach the stages that read them (workflow_params below). A stage that ran outside
DVC records itself in dvc.lock (nepa/dvc_lock.py). Logs: Snakemake sends each verb's stdout and stderr to the
stage's `log` file under logs/ (and shows it when the stage fails); `dvc repro` shows them on the terminal.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nepa import layout
from nepa.config import PRESET, Params, flat, load_params
from nepa.errors import UserError
from nepa.files import atomic_write_text
from nepa.plan import Job, plan_jobs
from nepa.variants import pretraining_source


@dataclass(frozen=True)
class Stage:
    name: str
    cmd: str  # the nepa verb and its arguments
    deps: tuple[str, ...]  # paths read (besides params)
    outs: tuple[str, ...]  # paths written, versioned by DVC (folders end without a slash)
    params: tuple[str, ...]  # params.yaml sections the stage reads
    # numbers only (scores.json): `dvc metrics`, `dvc exp show`. In the DVC cache like every output under runs/
    # (which git ignores): so DVC finds each experiment's numbers and curves, not only the workspace's.
    metrics: tuple[str, ...] = ()
    curves: tuple[str, ...] = ()  # metrics.csv: the dvc.yaml plots (PLOTS) draw their columns
    per_model: bool = False  # one instance per (size, variant)
    extra_outs: tuple[str, ...] = field(default=())  # small files kept in git, not the DVC cache: the report's
    # Outputs a re-run does not delete before it runs: the checkpoints and curve it continues (resume after an
    # interruption), and a training stage's numbers, which a re-run the engine refuses (checkpoints of other
    # params) leaves as they were. DVC: persist: true; Snakemake: update() (kept by a failed job too).
    persist: tuple[str, ...] = ()


def model_stage(verb: str, deps: tuple[str, ...], params: tuple[str, ...], trains: bool = True) -> Stage:
    """A stage of one (size, variant): one that trains (on the engine) resumes its checkpoints, and its curve
    with them; each writes its numbers with their provenance (metrics.json), the numbers alone (scores.json) and
    its curve (metrics.csv)."""
    folder = layout.stage_dir("{runs}", "{run}", verb)
    trained = (f"{folder}/{layout.CHECKPOINTS}",) if trains else ()
    curve, numbers = f"{folder}/{layout.CURVE}", (f"{folder}/{layout.METRICS}", f"{folder}/{layout.SCORES}")
    return Stage(
        verb,
        f"nepa {verb} --size {{size}} --variant {{variant}}{{seedarg}}",
        deps=deps,
        outs=(*trained, numbers[0]),
        persist=(*trained, curve, *numbers) if trains else (),
        params=params,
        metrics=numbers[1:],
        curves=(curve,),
        per_model=True,
    )


EXPORT = layout.stage_dir("{runs}", "{run}", layout.EXPORT)
SOURCE_EXPORT = layout.stage_dir("{runs}", "{source_run}", layout.EXPORT)  # the export a downstream stage reads
IMAGENET, ADE20K = layout.shards_dir("{data}", "imagenet"), layout.shards_dir("{data}", "ade20k")
STAGES: tuple[Stage, ...] = (
    Stage(  # the embedded default only: at scale full the sources are the real datasets'
        "prepare_embedded",
        "nepa prepare embedded",
        deps=(),
        outs=(layout.raw_dir("{data}"),),
        params=("seed", "data"),
    ),
    *(
        Stage(
            f"prepare_{dataset}",
            f"nepa prepare {dataset}",
            deps=(f"{{{dataset}_src}}",),  # the embedded raw layouts, or data.{dataset}_src at scale full
            outs=(layout.shards_dir("{data}", dataset),),
            params=("scale", "data"),
            persist=(layout.shards_dir("{data}", dataset),),  # an interrupted prepare writes only the missing shards
        )
        for dataset in ("imagenet", "ade20k")
    ),
    # the metrics: the final loss, the collapse check
    model_stage("pretrain", (IMAGENET,), ("recipe", "scale", "seed", "model", "objective", "pretrain")),
    Stage(
        "export",
        "nepa export --size {size} --variant {variant}{seedarg}",
        deps=(layout.stage_dir("{runs}", "{run}", f"pretrain/{layout.CHECKPOINTS}"),),
        outs=(EXPORT,),
        params=("model",),
        per_model=True,
    ),
    model_stage("finetune", (SOURCE_EXPORT, IMAGENET), ("recipe", "scale", "seed", "finetune")),
    model_stage("probe", (SOURCE_EXPORT, IMAGENET), ("seed", "probe"), trains=False),
    model_stage("segment", (SOURCE_EXPORT, ADE20K), ("recipe", "scale", "seed", "segment")),
)
REPORT_FILES = ("{results}/report.md", "{results}/report.html")
REPORT = Stage(
    "report",
    "nepa report",
    deps=(),  # every per-model metrics file and curve: filled in by report_inputs()
    outs=(layout.report_dir("{results}"),),
    params=("recipe", "scale", "sizes", "variants"),
    extra_outs=REPORT_FILES,
)
# `snakemake ablations` ends with the same verb over the same runs/ folder, written beside the default target's
# report rather than over it. DVC runs only the default target: not in dvc.yaml.
ABLATIONS_REPORT = Stage(
    "report_ablations",
    "nepa report --set results={results}/ablations",
    deps=(),  # the ablations target's metrics files and curves: filled in by target_inputs()
    outs=(layout.report_dir("{results}/ablations"),),
    params=REPORT.params,
    extra_outs=tuple(f.replace("{results}", "{results}/ablations") for f in REPORT_FILES),
)
# What `dvc plots show` draws: (title, stage, x, the curve's columns), over every run of the default target.
PLOTS = (
    ("pretraining loss", "pretrain", "step", ("loss",)),
    ("pretraining learning rate", "pretrain", "step", ("lr",)),
    ("fine-tuning loss", "finetune", "step", ("loss",)),
    ("fine-tuning top-1 (%)", "finetune", "epoch", ("val_top1_online", "val_top1_ema")),
    ("linear probe top-1 (%)", "probe", "epoch", ("val_top1_last", "val_top1_mean")),
    ("segmentation loss", "segment", "step", ("loss",)),
    ("segmentation mIoU", "segment", "step", ("val_miou",)),
)


def stage(name: str) -> Stage:
    return next(s for s in (*STAGES, REPORT, ABLATIONS_REPORT) if s.name == name)


def stages_of(params: Params) -> tuple[Stage, ...]:
    """The stages of the params' DAG: at scale full no embedded data."""
    return tuple(s for s in (*STAGES, REPORT) if params.scale == "embedded" or s.name != "prepare_embedded")


def fill(template: str, params: Params, size: str = "", variant: str = "", seed: object = "", source: str = "") -> str:
    """A template's path or command, for a run's values or for DVC's placeholders of them. The source run (a
    fine-tune-only variant's baseline) follows from a concrete variant where not given."""
    full = params.scale == "full"
    raw = layout.raw_dir(params.data.root)
    seed_of_run = seed if params.seeded else None
    source = source or (pretraining_source(variant, full) if "{source_run}" in template else "")
    return template.format(
        data=params.data.root,
        runs=params.runs,
        results=params.results,
        size=size,
        variant=variant,
        run=layout.run_name(size, variant, seed_of_run),
        source_run=layout.run_name(size, source, seed_of_run),
        imagenet_src=params.data.imagenet_src if full else raw,
        ade20k_src=params.data.ade20k_src if full else raw,
        seedarg=f" --set seed={seed}" if params.seeded else "",
    )


def job_paths(job: Job, params: Params) -> list[str]:
    """What a job of the plan leaves that the report reads or a target asks for: metrics, curves, the export."""
    s = stage(job.stage)
    kept = [t for t in (*s.outs, *s.curves) if not t.endswith(f"/{layout.CHECKPOINTS}")]
    return [fill(t, params, job.size, job.variant, job.seed) for t in kept]


def target_inputs(params: Params, target: str) -> list[str]:
    """The outputs a target (the plan's `all` or `ablations`) asks for: every run's metrics, curves and export."""
    return [path for job in plan_jobs(params, (target,)) if job.size for path in job_paths(job, params)]


def report_inputs(params: Params) -> list[str]:
    """The metrics, curves and exported models `nepa report` reads: the default target's, with the validation
    images of the maps."""
    return [*target_inputs(params, "all"), fill("{data}/shards/imagenet", params)]


def verb_files(verb: str) -> str:
    """What a stage verb reads and writes, for its --help: the stage table's paths, named by the params keys
    they follow."""
    shown = dict(data="{data.root}", runs="{runs}", results="{results}", size="{size}", variant="{variant}",
                 run="{size}-{variant}", source_run="{size}-{variant}", seedarg="",
                 imagenet_src="{data.root}/raw (scale full: data.imagenet_src)",
                 ade20k_src="{data.root}/raw (scale full: data.ade20k_src)")  # fmt: skip
    lines, ours = [], [s for s in (*STAGES, REPORT) if s.cmd.split()[1] == verb]
    for s in ours:
        reads = [d.format(**shown) for d in s.deps] or (["every run's metrics.json and metrics.csv under {runs}"]
                                                         if s is REPORT else [])  # fmt: skip
        resumed = [o for o in s.persist if not o.endswith((layout.METRICS, layout.SCORES))]  # not only kept
        writes = [o.format(**shown) + (" (a re-run resumes)" if o in resumed else "")
                  for o in (*s.outs, *s.extra_outs, *s.metrics, *s.curves)]  # fmt: skip
        lines += [f"{s.cmd.format(**shown)}:"] if verb == "prepare" else []
        lines += [f"  reads   {path}" for path in reads] + [f"  writes  {path}" for path in writes]
    seeds = "; a run per seed (params seeds) is {size}-{variant}-s{seed}" if any(s.per_model for s in ours) else ""
    return f"files (names from params{seeds}):\n" + "\n".join(lines) if lines else ""


# ---- dvc.yaml ------------------------------------------------------------------------------------


def _dvc_path(template: str, params: Params) -> str:
    """A template as dvc.yaml says it: rendered for the params at hand, a run's values from its foreach item."""
    return fill(template, params, "${item.size}", "${item.variant}", "${item.seed}", source="${item.source}")


def dvc_runs(s: Stage, params: Params) -> dict[str, dict[str, Any]]:
    """A per-model stage's runs in the default target, by run name (DVC's stage names: pretrain@tiny-nepa)."""
    full = params.scale == "full"
    return {
        job.run: dict(size=job.size, variant=job.variant, seed=job.seed, source=pretraining_source(job.variant, full))
        for job in plan_jobs(params, ("all",))
        if job.stage == s.name
    }


def dvc_stage(s: Stage, params: Params) -> dict[str, Any]:
    body: dict[str, Any] = {"cmd": _dvc_path(s.cmd, params)}
    deps = [_dvc_path(d, params) for d in s.deps]
    if s is REPORT:
        deps = report_inputs(params)  # DVC cannot expand a foreach into a list: rendered for the params at hand
    if deps:
        body["deps"] = deps
    body["params"] = list(s.params)
    if s.outs or s.extra_outs:
        outs: list[Any] = [
            {_dvc_path(o, params): {"persist": True}} if o in s.persist else _dvc_path(o, params)
            for o in (*s.outs, *s.curves)
        ]
        body["outs"] = outs + [{_dvc_path(o, params): {"cache": False}} for o in s.extra_outs]
    if s.metrics:
        body["metrics"] = [{_dvc_path(m, params): {"persist": True}} if m in s.persist else _dvc_path(m, params)
                           for m in s.metrics]  # fmt: skip
    return {"foreach": dvc_runs(s, params), "do": body} if s.per_model else body


def dvc_plots(params: Params) -> list[dict[str, Any]]:
    """dvc.yaml's plots: each of PLOTS over the curve of every run of the default target that has the stage."""
    plots = []
    for title, name, x, columns in PLOTS:
        curves = [fill(t, params, job.size, job.variant, job.seed) for job in plan_jobs(params, ("all",))
                  if job.stage == name for t in stage(name).curves]  # fmt: skip
        if curves:
            y = {curve: list(columns) if len(columns) > 1 else columns[0] for curve in curves}
            plots.append({title: {"template": "linear", "x": x, "y": y, "x_label": x, "y_label": ", ".join(columns)}})
    return plots


def dvc_yaml(params: Params) -> str:
    """dvc.yaml of the default target (a stage without runs in it is left out), and its plots."""
    stages = {s.name: dvc_stage(s, params) for s in stages_of(params) if not s.per_model or dvc_runs(s, params)}
    header = "# Rendered from nepa/pipeline.py by `python -m nepa.pipeline` - edit that, not this.\n"
    return header + yaml.safe_dump({"stages": stages, "plots": dvc_plots(params)}, sort_keys=False, width=120)


def params_schema() -> str:
    """JSON schema of params.yaml (workflow/schemas/; editors read it from params.yaml's first line), from the
    pydantic model: every key also takes PRESET."""
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **Params.model_json_schema()}
    for model in (schema, *schema["$defs"].values()):
        for name, key in model.get("properties", {}).items():
            if "$ref" not in key:  # a key, not a section
                model["properties"][name] = {"anyOf": [key, {"const": PRESET}], "title": key.get("title", name)}
    return json.dumps(schema, indent=2) + "\n"


# ---- Snakemake's --config -------------------------------------------------------------------------------------

# Keys every stage verb reads besides its params sections: where its files are (the run folders name the seed
# where runs are per seed).
RUN_WIDE = ("runs", "results", "data", "seeds", "ablation_seeds")
# --config values the rules pass outside Snakemake's rerun triggers: where a stage runs, not what it computes
# (a switch to the slurm profile re-runs nothing).
ROUTED = ("launcher",)
REFUSED = {
    "variant": "the workflow runs `variants` (e.g. --config 'variants=[nepa]'); `variant` is a verb's default",
    "dvc_remote": "`dvc push` reads its remote from .dvc/config, which follows params.yaml: set it there",
}


def _assignments(config: Mapping[str, Any]) -> list[str]:
    """Snakemake's config as `section.key=value` assignments, the values as YAML (Snakemake reads a nested
    --config value's scalars as strings, which --set parses as YAML again: 'pretrain={base_lr: 1e-3}' is 0.001)."""
    return [f"{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in flat(config).items()]


def workflow_params(path: str | Path, config: Mapping[str, Any]) -> tuple[Params, list[str]]:
    """The workflow's params: `path` (params.yaml) with Snakemake's config (--config, --configfile, a profile's
    configfile) over it, and those values as assignments; a value no rule could honour is refused (UserError)."""
    for key in config:
        if key in REFUSED:
            raise UserError(f"--config {key}: not a workflow setting: {REFUSED[key]}")
    assignments = _assignments(config)
    return load_params(path, assignments, overrides_from="--config"), assignments


def stage_overrides(assignments: list[str], name: str) -> str:
    """The --set arguments of a stage's command: the --config values of its params sections and RUN_WIDE."""
    sections = (*stage(name).params, *RUN_WIDE)
    return "".join(f" --set {shlex.quote(a)}" for a in assignments if _section(a) in sections)


def routed_overrides(assignments: list[str]) -> str:
    """The --set arguments of ROUTED --config values, for every stage."""
    return "".join(f" --set {shlex.quote(a)}" for a in assignments if _section(a) in ROUTED)


def _section(assignment: str) -> str:
    return assignment.partition("=")[0].split(".")[0]


def dvc_url(remote: str) -> str:
    """params' dvc_remote as .dvc/config says it: DVC reads a relative path from the .dvc folder, while
    params give it from the repository root (the default, ../nepa-dvc-storage, is beside the clone)."""
    return remote if "://" in remote or Path(remote).is_absolute() else posixpath.join("..", remote)


def dvc_config(params: Params) -> str:
    """.dvc/config: analytics off, the remote from params."""
    return (
        "# Rendered from params.yaml (dvc_remote) by every nepa command: edit that, or keep your own settings in\n"
        "# .dvc/config.local (`dvc remote modify --local nepa ...`).\n"
        "[core]\n    analytics = false\n    remote = nepa\n"
        f"['remote \"nepa\"']\n    url = {dvc_url(params.dvc_remote)}\n"
    )


def remote_problem(root: Path, remote: str) -> str | None:
    """Why `dvc push` cannot store in a local remote folder, or None (URLs are DVC's to check)."""
    if "://" in remote:
        return None
    path = root / remote
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:  # DVC creates the missing folders at push: try it (root may write where nothing can be created)
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".nepa-probe-"))
    except OSError as e:
        return f"{existing} is not writable: {e.strerror}"
    return None


def follow_dvc_remote(root: Path, params: Params) -> None:
    """Keep the DVC project at `root` pushing to params' dvc_remote: DVC reads .dvc/config, never params.yaml,
    so every nepa command that reads params (and the Snakefile) brings it up to date; an unusable local
    remote is one line on stderr, as it is no reason to stop a stage."""
    config = root / ".dvc" / "config"
    if not config.parent.is_dir():
        return  # params outside a DVC project (a run folder, a test)
    text = dvc_config(params)
    if not config.is_file() or config.read_text() != text:
        atomic_write_text(config, text)  # stages may start together: each writes its own temporary file
        print(f"nepa: {config}: DVC remote set to {params.dvc_remote} (params dvc_remote)", file=sys.stderr)
    if problem := remote_problem(root, params.dvc_remote):
        print(
            f"nepa: params dvc_remote {params.dvc_remote!r} is not usable ({problem}): `dvc push` will fail; "
            "set dvc_remote to a folder you can write or a DVC remote URL",
            file=sys.stderr,
        )


RENDERED = {
    "dvc.yaml": dvc_yaml,
    ".dvc/config": dvc_config,
    "workflow/schemas/params.schema.json": lambda _: params_schema(),
}


def source_digest(package: Path) -> str:
    """sha256 over a package folder's files (names and bytes), without Python's byte-code caches."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def installed_code_problem(workflow_code: Path) -> str | None:
    """Why the rules' `nepa` runs other code than `workflow_code` (the nepa package the Snakefile imported), or
    None. Snakemake imports nepa from the Snakefile's folder to resolve params and decide what re-runs, while a
    rule's shell command runs the `nepa` on PATH: in a checkout that shares another checkout's editable install,
    stages would silently run code the DAG was not planned with. Same files in another folder (a copy, an image
    built from the same commit) are the same code."""
    script = shutil.which("nepa")
    if script is None:
        return None  # the rule's shell says so itself when it runs
    first_line = Path(script).read_bytes().split(b"\n", 1)[0]
    python = shlex.split(first_line[2:].decode()) if first_line.startswith(b"#!") else [sys.executable]
    # -P: the search path the script gets (PYTHONPATH and site-packages, not the working folder)
    where = "import importlib.util as u; print(u.find_spec('nepa').submodule_search_locations[0])"
    found = subprocess.run([*python, "-P", "-c", where], capture_output=True, text=True)
    installed = Path(found.stdout.strip())
    if found.returncode or installed.resolve() == workflow_code.resolve():
        return None
    if source_digest(installed) == source_digest(workflow_code):
        return None
    return (
        f"the rules' `nepa` ({script}) runs the code in {installed}, not this workflow's {workflow_code}, and "
        f"the two differ: install this checkout (bash envs/install.sh) or run Snakemake in {installed.parent}"
    )


def render(root: Path, params: Params) -> dict[Path, str]:
    """The generated files and their contents."""
    return {root / name: make(params) for name, make in RENDERED.items()}


if __name__ == "__main__":
    from nepa.config import load_params

    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    for path, text in render(root, load_params(root / "params.yaml")).items():
        path.write_text(text)
        print(f"wrote {path}")
