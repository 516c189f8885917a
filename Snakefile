# nepa's reproducibility DAG. Every rule is a thin call of one `nepa` verb; stages, paths and commands
# come from nepa/pipeline.py (dvc.yaml is rendered from the same table), values from params.yaml.
#
#   snakemake --cores all                 the embedded default end to end (or the paper, at scale: full)
#   snakemake ablations --cores all --keep-going   Table 1 variants (one the paper saw diverge stops, exit 3)
#   snakemake --profile slurm             the same DAG, every stage a SLURM job (workflow/profiles/slurm)
#
# Each stage's output goes to its log under logs/ (shown when a stage fails). Snakemake reads this workflow's
# default profile from profiles/default beside the Snakefile: `profiles` links to workflow/profiles.

import os
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

import nepa
from nepa import IMAGE
from nepa.config import load_params
from nepa.pipeline import fill, follow_dvc_remote, installed_code_problem, stage

min_version("9.0")  # the major version this workflow is written for; envs/ pins the one it is tested with

# `--sdm apptainer` runs every rule in the published image; `--sdm conda` in envs/environment.yaml.
container: f"docker://{IMAGE}"
conda: "envs/environment.yaml"

configfile: "params.yaml"
# `--config nepa_launcher=submitit` (the slurm profile): every rule's verb submits itself to SLURM.
if "nepa_launcher" in config:
    os.environ["NEPA_LAUNCHER"] = config.pop("nepa_launcher")
validate(config, "workflow/schemas/params.schema.json")
PARAMS = load_params("params.yaml")
follow_dvc_remote(Path("."), PARAMS)  # `dvc push` after this workflow stores where params say
# Rules run the `nepa` on PATH; where they run in the image or a conda env (--sdm), that env holds its own.
code = Path(nepa.__file__).parent
if not workflow.deployment_settings.deployment_method and (problem := installed_code_problem(code)):
    print(f"nepa: {problem}", file=sys.stderr)
    sys.exit(2)


rule all:  # the default target: the report of the configured sizes and variants
    input: [fill(t, PARAMS) for t in stage("report").outs + stage("report").extra_outs]


rule embedded:  # the same DAG, named for the embedded default params
    input: rules.all.input


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/downstream.smk"
include: "workflow/rules/report.smk"
