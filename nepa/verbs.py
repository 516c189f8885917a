"""The `nepa` verbs, as data: the module that runs each, its help line, and whether it is a pipeline stage.

Read by the CLI (nepa/cli.py), which imports a verb's module only when that verb runs, and by params
validation (nepa/config.py: launcher.stages names stages), so that neither imports the other.

A verb's module defines `main(args)`, or `main(args, params)` when the verb reads params (the CLI adds
--params/--set/--size/--variant and resolves them first), and `add_arguments(parser)` when it takes
arguments of its own; two verbs may share a module (and its add_arguments), the second under another
`function` than `main`. A stage may run as a SLURM job: under `launcher.kind: submitit` the CLI submits it
(nepa/launch.py) instead of calling `main` here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verb:
    module: str
    help: str
    stage: bool = False  # a pipeline stage: runs as a SLURM job under launcher.kind submitit
    params: bool = True  # main(args, params): the CLI resolves params first
    function: str = "main"  # the module's function that runs the verb (two verbs may share a module)


VERBS: dict[str, Verb] = {
    "prepare": Verb(
        "nepa.data.prepare", "write a dataset (embedded | imagenet | ade20k) into versionable shards", stage=True
    ),
    "pretrain": Verb("nepa.engine.pretrain", "NEPA pretraining with DeepSpeed ZeRO, EMA, exact resume", stage=True),
    "export": Verb(
        "nepa.engine.export", "export EMA (or online) weights to safetensors or the official layout", stage=True
    ),
    "finetune": Verb("nepa.eval.finetune", "ImageNet-style classification fine-tuning", stage=True),
    "probe": Verb("nepa.eval.probe", "linear probe on frozen features (last and mean embedding)", stage=True),
    "segment": Verb("nepa.eval.segment", "ADE20K-style semantic segmentation with a UperNet head", stage=True),
    "report": Verb("nepa.report.build", "our numbers beside the paper's: tables, curves, maps", stage=True),
    "import-official": Verb("nepa.official", "convert a released SixAILab checkpoint to nepa files", params=False),
    "params": Verb("nepa.config", "print the resolved params (presets, variant and --set applied)"),
    # Reads params its own way (the full-scale recipe of each size): it takes the params arguments itself.
    "estimate": Verb("nepa.estimate", "GPU-hours and wall time of each stage of a full reproduction", params=False),
    # Reads params its own way too: every job's params, resolved per size and variant.
    "plan": Verb("nepa.plan", "every job of the DAG: schedule, batch, GPUs, GPU-hours; audited", params=False),
}
STAGES = frozenset(name for name, verb in VERBS.items() if verb.stage)
