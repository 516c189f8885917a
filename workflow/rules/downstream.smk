# Downstream evaluation of the exported EMA weights: ImageNet fine-tuning, linear probe, ADE20K UperNet. A
# fine-tune-only variant starts from the export of the run it reuses (source_export).


rule finetune:
    input:
        export=source_export,
        shards=f"{DATA}/shards/imagenet",
    output:
        checkpoints=update(directory(f"{FINETUNE}/checkpoints")),
        metrics=update(f"{FINETUNE}/metrics.json"),  # kept by a re-run the engine refuses
        scores=update(f"{FINETUNE}/scores.json"),
        curve=update(f"{FINETUNE}/metrics.csv"),  # continued by a resumed run
    log:
        f"logs/finetune/{RUN}.log",
    params:
        seed=seed_argument,
        sets=overrides("finetune"),
        settings=settings("finetune"),
    threads: stage_threads()
    resources:
        **stage_resources("finetune"),
    shell:
        "nepa finetune --size {wildcards.size} --variant {wildcards.variant}{params.seed}{params.sets}"
        "{resources.launcher} > {log} 2>&1"


rule probe:
    input:
        export=source_export,
        shards=f"{DATA}/shards/imagenet",
    output:
        metrics=f"{PROBE}/metrics.json",
        scores=f"{PROBE}/scores.json",
        curve=f"{PROBE}/metrics.csv",
    log:
        f"logs/probe/{RUN}.log",
    params:
        seed=seed_argument,
        sets=overrides("probe"),
        settings=settings("probe"),
    threads: stage_threads()
    resources:
        **stage_resources("probe"),
    shell:
        "nepa probe --size {wildcards.size} --variant {wildcards.variant}{params.seed}{params.sets}"
        "{resources.launcher} > {log} 2>&1"


rule segment:
    input:
        export=source_export,
        shards=f"{DATA}/shards/ade20k",
    output:
        checkpoints=update(directory(f"{SEGMENT}/checkpoints")),
        metrics=update(f"{SEGMENT}/metrics.json"),  # kept by a re-run the engine refuses
        scores=update(f"{SEGMENT}/scores.json"),
        curve=update(f"{SEGMENT}/metrics.csv"),  # continued by a resumed run
    log:
        f"logs/segment/{RUN}.log",
    params:
        seed=seed_argument,
        sets=overrides("segment"),
        settings=settings("segment"),
    threads: stage_threads()
    resources:
        **stage_resources("segment"),
    shell:
        "nepa segment --size {wildcards.size} --variant {wildcards.variant}{params.seed}{params.sets}"
        "{resources.launcher} > {log} 2>&1"
