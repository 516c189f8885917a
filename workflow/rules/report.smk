# The report: our numbers beside the paper's (targets `all`/`embedded` in the Snakefile); `ablations`
# runs the Table 1 variants with their baselines and the same report of them in results/ablations/ (the
# default target's report shows their rows once it runs again: `snakemake -R report`).

rule report:
    input: report_inputs(PARAMS)
    output: *stage_outputs("report")
    log: stage_log("report")
    shell: stage_shell("report")


rule report_ablations:
    input: target_inputs(PARAMS, "ablations")
    output: *stage_outputs("report_ablations")
    log: stage_log("report_ablations")
    shell: stage_shell("report_ablations")


rule ablations:  # Table 1 and the appendix (nepa/plan.py): limited by ablation_variants, over ablation_seeds
    input: rules.report_ablations.output
