# NEPA pretraining (DeepSpeed ZeRO) and the EMA export every downstream stage starts from.

rule pretrain:
    input: stage_inputs("pretrain")
    output: *stage_outputs("pretrain")
    log: stage_log("pretrain")
    params: settings=stage_params("pretrain")
    threads: stage_threads()
    resources: **stage_resources("pretrain")
    shell: stage_shell("pretrain")


rule export:
    input: stage_inputs("export")
    output: *stage_outputs("export")
    log: stage_log("export")
    params: settings=stage_params("export")
    shell: stage_shell("export")
