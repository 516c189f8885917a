# Turn nepa/pipeline.py's stage table into rule parts: paths with {size}/{variant} wildcards, commands
# with {wildcards.*}, resources from params.
import json

from nepa.pipeline import fill, report_inputs, stage


def _paths(templates):
    return [fill(t, PARAMS, size="{size}", variant="{variant}") for t in templates]


def stage_inputs(name):
    return _paths(stage(name).deps)


def stage_outputs(name):
    s = stage(name)
    folders = [update(directory(p)) if t in s.persist else directory(p) for t, p in zip(s.outs, _paths(s.outs))]
    files = _paths(s.metrics + s.plots + s.extra_outs)
    return folders + [report(p, category=s.name) if p.endswith(".png") else p for p in files]


def stage_shell(name):
    return stage(name).cmd.format(size="{wildcards.size}", variant="{wildcards.variant}")


def stage_params(name):
    """The resolved params sections a stage reads, as Snakemake params: a change re-runs the stage."""

    def resolve(wildcards):
        p = load_params("params.yaml", size=wildcards.get("size"), overrides=_variant(wildcards))
        return json.dumps({k: p.model_dump(mode="json")[k] for k in stage(name).params}, sort_keys=True)

    return resolve


def _variant(wildcards):
    return (f"variant={wildcards['variant']}",) if "variant" in wildcards.keys() else ()


def stage_resources(name):
    """Threads and cluster resources of a stage, from params (launcher section)."""
    slurm = PARAMS.launcher.slurm
    return dict(
        mem_mb=slurm.mem_gb * 1024,
        runtime=slurm.time_min,
        gpus=slurm.gpus_per_node * slurm.nodes,
    )


wildcard_constraints:
    size="|".join(["tiny", "small", "base", "large"]),
    variant="[a-z0-9_]+",
