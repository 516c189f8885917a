# nepa's reproducibility DAG: every rule calls one `nepa` verb (workflow/rules/), fed by params.yaml; dvc.yaml
# is the same DAG (tests/test_workflow.py checks that both have the same jobs, commands and inputs).
#
#   snakemake --cores all                 the embedded default end to end (or the paper, at scale: full)
#   snakemake ablations --cores all --keep-going   Table 1 variants (one the paper saw diverge stops, exit 3)
#   snakemake --profile slurm             the same DAG, every stage a SLURM job (workflow/profiles/slurm)
#   snakemake --config 'pretrain={base_lr: 0.001}' seed=1   any params key for this run: the stages that
#                                         read it get it (`--set`) and re-run; a key no stage reads stops it
#
# Each stage's output goes to its log under logs/ (shown when a stage fails). Snakemake reads this workflow's
# default profile from profiles/default beside the Snakefile: `profiles` links to workflow/profiles.

from snakemake.utils import min_version

from nepa import IMAGE

min_version("9.0")  # the major version this workflow is written for; envs/ pins the one it is tested with


# `--sdm apptainer` runs every rule in the published image; `--sdm conda` in envs/environment.yaml.
container: f"docker://{IMAGE}"
conda: "envs/environment.yaml"


include: "workflow/rules/common.smk"


rule all:  # the default target: the report of the configured sizes and variants
    input:
        REPORT_OUTPUTS,


rule embedded:  # the same DAG, named for the embedded default params
    input:
        rules.all.input,


include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/downstream.smk"
include: "workflow/rules/report.smk"
