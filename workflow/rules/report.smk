# The report: our numbers beside the paper's (targets `all`/`embedded` in the Snakefile); `ablations`
# runs the Table 1 variants, whose rows the report shows once they exist.

rule report:
    input: report_inputs(PARAMS)
    output: *stage_outputs("report")
    log: stage_log("report")
    shell: stage_shell("report")


rule ablations:
    input:
        [
            fill(t, PARAMS, size=size, variant=variant)
            for size in PARAMS.sizes
            for variant in PARAMS.ablation_variants
            for t in (*stage("finetune").metrics, *stage("pretrain").plots)
        ],
