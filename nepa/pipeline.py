"""The pipeline's stages, once: the Snakefile's rules and dvc.yaml are both rendered from this table.

Each stage is one `nepa` verb. Paths are templates over {data} (params data.root), {runs}, {results}
and, for per-model stages, {size} and {variant}. `python -m nepa.pipeline` writes dvc.yaml
(and the params schema);
tests/test_workflow.py checks that it is current and that Snakemake and DVC build the same DAG.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nepa.config import Params

RUN = "{runs}/{size}-{variant}"


@dataclass(frozen=True)
class Stage:
    name: str
    cmd: str  # the nepa verb and its arguments
    deps: tuple[str, ...]  # paths read (besides the nepa package and params)
    outs: tuple[str, ...]  # paths written, versioned by DVC (folders end without a slash)
    params: tuple[str, ...]  # params.yaml sections the stage reads
    metrics: tuple[str, ...] = ()
    plots: tuple[str, ...] = ()
    per_model: bool = False  # one instance per (size, variant)
    extra_outs: tuple[str, ...] = field(default=())  # small files kept in git, not the DVC cache
    # Outputs a re-run continues instead of replacing (checkpoints: resume after an interruption).
    # DVC: persist: true; Snakemake: update(). The engine itself refuses checkpoints of other params.
    persist: tuple[str, ...] = ()
    # Outputs `snakemake --report` shows: (template, file patterns inside it; () for a file).
    shown: tuple[tuple[str, tuple[str, ...]], ...] = ()


STAGES: tuple[Stage, ...] = (
    Stage(
        "prepare_embedded",
        "nepa prepare embedded",
        deps=(),
        outs=("{data}/raw",),
        params=("seed", "data"),
    ),
    *(
        Stage(
            f"prepare_{dataset}",
            f"nepa prepare {dataset}",
            deps=("{data}/raw",),
            outs=(f"{{data}}/shards/{dataset}",),
            params=("scale", "data"),
            persist=(f"{{data}}/shards/{dataset}",),  # an interrupted prepare writes only the missing shards
        )
        for dataset in ("imagenet", "ade20k")
    ),
    Stage(
        "pretrain",
        "nepa pretrain --size {size} --variant {variant}",
        deps=("{data}/shards/imagenet",),
        outs=(RUN + "/pretrain/checkpoints",),
        persist=(RUN + "/pretrain/checkpoints",),
        params=("recipe", "scale", "seed", "model", "objective", "pretrain"),
        metrics=(RUN + "/pretrain/metrics.json",),  # the final loss: the collapse check
        plots=(RUN + "/pretrain/metrics.csv",),
        per_model=True,
    ),
    Stage(
        "export",
        "nepa export --size {size} --variant {variant}",
        deps=(RUN + "/pretrain/checkpoints",),
        outs=(RUN + "/export",),
        params=("model",),
        per_model=True,
    ),
    Stage(
        "finetune",
        "nepa finetune --size {size} --variant {variant}",
        deps=(RUN + "/export", "{data}/shards/imagenet"),
        outs=(RUN + "/finetune/checkpoints",),
        persist=(RUN + "/finetune/checkpoints",),
        params=("recipe", "scale", "seed", "finetune"),
        metrics=(RUN + "/finetune/metrics.json",),
        plots=(RUN + "/finetune/metrics.csv",),
        per_model=True,
    ),
    Stage(
        "probe",
        "nepa probe --size {size} --variant {variant}",
        deps=(RUN + "/export", "{data}/shards/imagenet"),
        outs=(),
        params=("seed", "probe"),
        metrics=(RUN + "/probe/metrics.json",),
        per_model=True,
    ),
    Stage(
        "segment",
        "nepa segment --size {size} --variant {variant}",
        deps=(RUN + "/export", "{data}/shards/ade20k"),
        outs=(RUN + "/segment/checkpoints",),
        persist=(RUN + "/segment/checkpoints",),
        params=("recipe", "scale", "seed", "segment"),
        metrics=(RUN + "/segment/metrics.json",),
        plots=(RUN + "/segment/metrics.csv",),
        per_model=True,
    ),
)
REPORT = Stage(
    "report",
    "nepa report",
    deps=(),  # every per-model metrics file and curve: filled in by report_inputs()
    outs=("{results}/report",),
    params=("recipe", "scale", "sizes", "variants"),
    extra_outs=("{results}/report.md", "{results}/report.html"),
    shown=(("{results}/report", ("{name}.png", "{name}.csv")), ("{results}/report.html", ())),
)
DOWNSTREAM = ("finetune", "probe", "segment")  # what a variant's row in the report needs


def stage(name: str) -> Stage:
    return next(s for s in (*STAGES, REPORT) if s.name == name)


def fill(template: str, params: Params, **wildcards: str) -> str:
    return template.format(data=params.data.root, runs=params.runs, results=params.results, **wildcards)


def report_inputs(params: Params) -> list[str]:
    """The metrics and curves `nepa report` reads, for every configured size and variant."""
    paths = []
    for size in params.sizes:
        for variant in params.variants:
            for s in STAGES:
                if s.per_model and (s.name in DOWNSTREAM or s.plots):
                    paths += [fill(p, params, size=size, variant=variant) for p in (*s.metrics, *s.plots)]
            paths.append(fill(RUN + "/export", params, size=size, variant=variant))  # the maps' models
    return [*paths, fill("{data}/shards/imagenet", params)]  # the maps' validation images


# ---- dvc.yaml ------------------------------------------------------------------------------------


def _dvc_path(template: str) -> str:
    return template.format(
        data="${data.root}", runs="${runs}", results="${results}", size="${item.size}", variant="${item.variant}"
    )


def dvc_stage(s: Stage, params: Params) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if s.per_model:
        body["matrix"] = {"size": "${sizes}", "variant": "${variants}"}
    body["cmd"] = _dvc_path(s.cmd)
    deps = [_dvc_path(d) for d in s.deps]
    if s is REPORT:
        deps = report_inputs(params)  # DVC cannot expand a matrix into a list: rendered for the params at hand
    body["deps"] = ["nepa", *deps]
    body["params"] = list(s.params)
    if s.outs or s.extra_outs:
        outs: list[Any] = [{_dvc_path(o): {"persist": True}} if o in s.persist else _dvc_path(o) for o in s.outs]
        body["outs"] = outs + [{_dvc_path(o): {"cache": False}} for o in s.extra_outs]
    if s.metrics:
        body["metrics"] = [{_dvc_path(m): {"cache": False}} for m in s.metrics]
    if s.plots:
        body["plots"] = [{_dvc_path(p): {"cache": False, "x": "step"}} for p in s.plots]
    return body


def dvc_yaml(params: Params) -> str:
    stages = {s.name: dvc_stage(s, params) for s in (*STAGES, REPORT)}
    header = "# Rendered from nepa/pipeline.py by `python -m nepa.pipeline` - edit that, not this.\n"
    return header + yaml.safe_dump({"stages": stages}, sort_keys=False, width=120)


def params_schema() -> str:
    """JSON schema of params.yaml for Snakemake's `validate` (workflow/schemas/), from the pydantic model."""
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **Params.model_json_schema()}
    return json.dumps(schema, indent=2) + "\n"


def dvc_config(params: Params) -> str:
    """.dvc/config: analytics off, the remote from params."""
    return f"[core]\n    analytics = false\n    remote = nepa\n['remote \"nepa\"']\n    url = {params.dvc_remote}\n"


RENDERED = {
    "dvc.yaml": dvc_yaml,
    ".dvc/config": dvc_config,
    "workflow/schemas/params.schema.json": lambda _: params_schema(),
}


def render(root: Path, params: Params) -> dict[Path, str]:
    """The generated files and their contents."""
    return {root / name: make(params) for name, make in RENDERED.items()}


if __name__ == "__main__":
    from nepa.config import load_params

    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    for path, text in render(root, load_params(root / "params.yaml")).items():
        path.write_text(text)
        print(f"wrote {path}")
