# NEPA pretraining (DeepSpeed ZeRO, EMA) and the EMA export every downstream stage starts from.


rule pretrain:
    input:
        f"{DATA}/shards/imagenet",
    output:
        checkpoints=update(directory(f"{PRETRAIN}/checkpoints")),  # kept: a re-run resumes from them
        metrics=update(f"{PRETRAIN}/metrics.json"),  # kept by a re-run the engine refuses
        scores=update(f"{PRETRAIN}/scores.json"),
        curve=update(f"{PRETRAIN}/metrics.csv"),  # continued by a resumed run
    log:
        f"logs/pretrain/{RUN}.log",
    params:
        seed=seed_argument,
        sets=overrides("pretrain"),
        settings=settings("pretrain"),
    threads: stage_threads()
    resources:
        **stage_resources("pretrain"),
    shell:
        "nepa pretrain --size {wildcards.size} --variant {wildcards.variant}{params.seed}{params.sets}"
        "{resources.launcher} > {log} 2>&1"


rule export:
    input:
        f"{PRETRAIN}/checkpoints",
    output:
        directory(EXPORT),
    log:
        f"logs/export/{RUN}.log",
    params:
        seed=seed_argument,
        sets=overrides("export"),
        settings=settings("export"),
    resources:
        **stage_resources("export"),
    shell:
        "nepa export --size {wildcards.size} --variant {wildcards.variant}{params.seed}{params.sets}"
        "{resources.launcher} > {log} 2>&1"
