# Downstream evaluation of the exported EMA weights: ImageNet fine-tuning, linear probe, ADE20K UperNet.

rule finetune:
    input: stage_inputs("finetune")
    output: *stage_outputs("finetune")
    log: stage_log("finetune")
    params: settings=stage_params("finetune")
    threads: stage_threads()
    resources: **stage_resources("finetune")
    shell: stage_shell("finetune")


rule probe:
    input: stage_inputs("probe")
    output: *stage_outputs("probe")
    log: stage_log("probe")
    params: settings=stage_params("probe")
    threads: stage_threads()
    resources: **stage_resources("probe")
    shell: stage_shell("probe")


rule segment:
    input: stage_inputs("segment")
    output: *stage_outputs("segment")
    log: stage_log("segment")
    params: settings=stage_params("segment")
    threads: stage_threads()
    resources: **stage_resources("segment")
    shell: stage_shell("segment")
