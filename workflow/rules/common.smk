# Turn nepa/pipeline.py's stage table into rule parts: paths with {size}/{variant} (and {seed}, where runs are
# per seed) wildcards, commands with {wildcards.*} and their output sent to the stage's log, resources from
# params. Which runs the targets ask for is the experiment plan's (nepa/plan.py, through pipeline.target_inputs).
import json

from nepa.config import SIZES
from nepa.presets import EMBEDDED_ABLATION_THREADS
from nepa.variants import VARIANTS
from nepa.pipeline import fill, report_inputs, stage, target_inputs

WILDCARDS = dict(size="{size}", variant="{variant}", seed="{seed}")


def stage_inputs(name):
    """A function of the job's wildcards: a fine-tune-only variant reads the export of the run it reuses."""

    def inputs(wildcards):
        values = {key: wildcards.get(key, "") for key in WILDCARDS}
        return [fill(t, PARAMS, **values) for t in stage(name).deps]

    return inputs


def stage_outputs(name):
    s = stage(name)
    shown = dict(s.shown)

    def output(template, folder):
        path = fill(template, PARAMS, **WILDCARDS)
        out = directory(path) if folder else path
        out = update(out) if template in s.persist else out
        if template in shown:  # what `snakemake --report` shows
            out = report(out, patterns=list(shown[template]), category="NEPA report")
        return out

    return [output(t, True) for t in s.outs] + [output(t, False) for t in s.metrics + s.plots + s.extra_outs]


def stage_shell(name):
    command = fill(stage(name).cmd, PARAMS, size="{wildcards.size}", variant="{wildcards.variant}",
                   seed="{wildcards.seed}")
    return command + " > {log} 2>&1"


def stage_log(name):
    return fill(stage(name).log, PARAMS, **WILDCARDS)


def stage_params(name):
    """The resolved params sections a stage reads, as Snakemake params: a change re-runs the stage."""

    def resolve(wildcards):
        p = load_params("params.yaml", size=wildcards.get("size"), overrides=_variant(wildcards))
        return json.dumps({k: p.model_dump(mode="json")[k] for k in stage(name).params}, sort_keys=True)

    return resolve


def _variant(wildcards):
    return tuple(f"{key}={wildcards[key]}" for key in ("variant", "seed") if key in wildcards.keys())


def stage_threads():
    """Local runs: a stage takes every core, but at embedded scale a run on Table 1's schedule takes
    EMBEDDED_ABLATION_THREADS, so that two run side by side (nepa/presets.py). On SLURM the rule only waits for
    its job: one thread."""
    if PARAMS.launcher.kind == "submitit":
        return 1
    if PARAMS.scale != "embedded":
        return workflow.cores

    def threads(wildcards):
        on_table_1 = "variant" in wildcards.keys() and VARIANTS[wildcards.variant].schedule
        return EMBEDDED_ABLATION_THREADS if on_table_1 else workflow.cores

    return threads


def stage_resources(name):
    """A stage's resources from params (launcher.stages over launcher.slurm), for scheduling and display."""
    verb = stage(name).cmd.split()[1]
    slurm = PARAMS.launcher.stages.get(verb, PARAMS.launcher.slurm)
    return dict(
        mem_mb=slurm.mem_gb * 1024,
        runtime=slurm.time_min,
        gpus=slurm.gpus_per_node * slurm.nodes,
    )


wildcard_constraints:
    size="|".join(SIZES),
    variant="[a-z0-9_]+",
    seed="[0-9]+",
