# Dataset preparation: the embedded default's raw layouts, then versionable shards.

rule prepare_embedded:
    output: *stage_outputs("prepare_embedded")
    log: stage_log("prepare_embedded")
    params: settings=stage_params("prepare_embedded")
    threads: stage_threads()
    shell: stage_shell("prepare_embedded")


rule prepare_imagenet:
    input: stage_inputs("prepare_imagenet")
    output: *stage_outputs("prepare_imagenet")
    log: stage_log("prepare_imagenet")
    params: settings=stage_params("prepare_imagenet")
    threads: stage_threads()
    shell: stage_shell("prepare_imagenet")


rule prepare_ade20k:
    input: stage_inputs("prepare_ade20k")
    output: *stage_outputs("prepare_ade20k")
    log: stage_log("prepare_ade20k")
    params: settings=stage_params("prepare_ade20k")
    threads: stage_threads()
    shell: stage_shell("prepare_ade20k")
