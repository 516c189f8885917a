# What the rules share: params.yaml with Snakemake's config over it (--config, a profile's configfile), the
# run layout of nepa/layout.py in Snakemake's wildcards, and what the rules take from params: the --set
# arguments of the --config values each stage reads, its threads and resources. Which runs a target asks for is
# the experiment plan's (nepa/plan.py).

import json
import sys
from pathlib import Path

import nepa
from nepa import layout
from nepa.config import SIZES, load_params
from nepa.errors import UserError
from nepa.pipeline import (
    follow_dvc_remote,
    installed_code_problem,
    report_inputs,
    routed_overrides,
    stage,
    stage_overrides,
    target_inputs,
    workflow_params,
)
from nepa.presets import EMBEDDED_ABLATION_THREADS
from nepa.variants import VARIANTS, pretraining_source

try:  # not Snakemake's configfile/validate: a bad file or value is one line naming the file and line, or --config
    PARAMS, CONFIG_SETS = workflow_params("params.yaml", config)
except UserError as e:
    print(f"nepa: {e}", file=sys.stderr)
    sys.exit(2)
follow_dvc_remote(Path("."), PARAMS)  # `dvc push` after this workflow stores where params say
# Rules run the `nepa` on PATH; where they run in the image or a conda env (--sdm), that env holds its own.
code = Path(nepa.__file__).parent
if not workflow.deployment_settings.deployment_method and (problem := installed_code_problem(code)):
    print(f"nepa: {problem}", file=sys.stderr)
    sys.exit(2)

FULL = PARAMS.scale == "full"
DATA, RUNS, RESULTS = PARAMS.data.root, PARAMS.runs, PARAMS.results
IMAGENET_SRC = PARAMS.data.imagenet_src if FULL else layout.raw_dir(DATA)
ADE20K_SRC = PARAMS.data.ade20k_src if FULL else layout.raw_dir(DATA)
# A run's folder name and its stage folders: {size}-{variant}, and -s{seed} where runs are per seed
RUN = layout.run_name("{size}", "{variant}", "{seed}" if PARAMS.seeded else None)
PRETRAIN, EXPORT = layout.stage_dir(RUNS, RUN, "pretrain"), layout.stage_dir(RUNS, RUN, layout.EXPORT)
FINETUNE, PROBE, SEGMENT = (layout.stage_dir(RUNS, RUN, verb) for verb in layout.DOWNSTREAM)
REPORT_OUTPUTS = [layout.report_dir(RESULTS), f"{RESULTS}/report.md", f"{RESULTS}/report.html"]
# --config values of launcher.*: every stage gets them, outside the rerun triggers (resources)
LAUNCHER = routed_overrides(CONFIG_SETS)


def source_export(wildcards):
    """The export a downstream stage starts from: its run's own, or a fine-tune-only variant's baseline's."""
    source = pretraining_source(wildcards.variant, FULL)
    seed = wildcards.seed if PARAMS.seeded else None
    return layout.stage_dir(RUNS, layout.run_name(wildcards.size, source, seed), layout.EXPORT)


def seed_argument(wildcards):
    """A run per seed passes its seed to the verb."""
    return f" --set seed={wildcards.seed}" if PARAMS.seeded else ""


def overrides(name):
    """The --set arguments of the --config values the stage reads (its params sections, where files are)."""
    return stage_overrides(CONFIG_SETS, name)


def settings(name):
    """The resolved params sections a stage reads, as a param of its rule; a change (params.yaml, --config)
    re-runs it."""

    def resolve(wildcards):
        assignments = [*CONFIG_SETS, *(f"{key}={wildcards[key]}" for key in ("variant", "seed") if key in wildcards)]
        p = load_params("params.yaml", assignments, size=wildcards.get("size"), overrides_from="--config")
        return json.dumps({k: p.model_dump(mode="json")[k] for k in stage(name).params}, sort_keys=True)

    return resolve


def stage_threads():
    """Local runs: a stage takes every core, but at embedded scale a run on Table 1's schedule takes
    EMBEDDED_ABLATION_THREADS, so that two run side by side (nepa/presets.py). On SLURM the rule only waits for
    its job, on one thread."""
    if PARAMS.launcher.kind == "submitit":
        return 1
    if FULL:
        return workflow.cores

    def threads(wildcards):
        on_table_1 = "variant" in wildcards.keys() and VARIANTS[wildcards.variant].schedule
        return EMBEDDED_ABLATION_THREADS if on_table_1 else workflow.cores

    return threads


def stage_resources(verb):
    """A stage's resources from params (launcher.stages over launcher.slurm), for scheduling and display, and
    `launcher`: the --set arguments of --config's launcher values."""
    slurm = PARAMS.launcher.resources(verb)
    return dict(
        mem_mb=slurm.mem_gb * 1024,
        runtime=slurm.time_min,
        gpus=slurm.gpus_per_node * slurm.nodes,
        launcher=LAUNCHER,
    )


wildcard_constraints:
    size="|".join(SIZES),
    variant="[a-z0-9_]+",
    seed="[0-9]+",
