# The report: our numbers beside the paper's (targets `all`/`embedded` in the Snakefile); `ablations`
# runs the Table 1 variants with their baselines, whose rows the report shows once it runs again
# (`snakemake -R report`).

rule report:
    input: report_inputs(PARAMS)
    output: *stage_outputs("report")
    log: stage_log("report")
    shell: stage_shell("report")


rule ablations:  # Table 1 and the appendix (nepa/plan.py): limited by ablation_variants, over ablation_seeds
    input: target_inputs(PARAMS, "ablations"),
