# The report: our numbers beside the paper's (targets `all`/`embedded` in the Snakefile); `ablations` runs the
# Table 1 variants with their baselines and the same report of them in results/ablations/ (the default target's
# report shows their rows once it runs again: `snakemake -R report`).


rule report:
    input:
        report_inputs(PARAMS),
    output:
        report(directory(f"{RESULTS}/report"), patterns=["{name}.png", "{name}.csv"], category="NEPA report"),
        f"{RESULTS}/report.md",
        report(f"{RESULTS}/report.html", category="NEPA report"),
    log:
        "logs/report.log",
    params:
        sets=overrides("report"),
        settings=settings("report"),
    resources:
        **stage_resources("report"),
    shell:
        "nepa report{params.sets}{resources.launcher} > {log} 2>&1"


rule report_ablations:
    input:
        target_inputs(PARAMS, "ablations"),
    output:
        figures=directory(f"{RESULTS}/ablations/report"),
        markdown=f"{RESULTS}/ablations/report.md",
        html=f"{RESULTS}/ablations/report.html",
    log:
        "logs/report_ablations.log",
    params:
        sets=overrides("report"),
        settings=settings("report"),
        results=lambda wildcards, output: Path(output.markdown).parent,
    resources:
        **stage_resources("report"),
    shell:
        "nepa report{params.sets} --set results={params.results}{resources.launcher} > {log} 2>&1"


rule ablations:  # Table 1 and the appendix (nepa/plan.py): limited by ablation_variants, over ablation_seeds
    input:
        rules.report_ablations.output,
