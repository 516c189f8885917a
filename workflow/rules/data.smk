# Dataset preparation: the embedded default's raw layouts (Fashion-MNIST in ImageNet's and ADE20K's folder
# layouts), then versionable shards of ImageNet and ADE20K (at scale full from data.imagenet_src, ade20k_src).


rule prepare_embedded:
    output:
        directory(f"{DATA}/raw"),
    log:
        "logs/prepare_embedded.log",
    params:
        sets=overrides("prepare_embedded"),
        settings=settings("prepare_embedded"),
    threads: stage_threads()
    resources:
        **stage_resources("prepare"),
    shell:
        "nepa prepare embedded{params.sets}{resources.launcher} > {log} 2>&1"


rule prepare_imagenet:
    input:
        IMAGENET_SRC,
    output:
        update(directory(f"{DATA}/shards/imagenet")),  # an interrupted prepare writes only the missing shards
    log:
        "logs/prepare_imagenet.log",
    params:
        sets=overrides("prepare_imagenet"),
        settings=settings("prepare_imagenet"),
    threads: stage_threads()
    resources:
        **stage_resources("prepare"),
    shell:
        "nepa prepare imagenet{params.sets}{resources.launcher} > {log} 2>&1"


rule prepare_ade20k:
    input:
        ADE20K_SRC,
    output:
        update(directory(f"{DATA}/shards/ade20k")),
    log:
        "logs/prepare_ade20k.log",
    params:
        sets=overrides("prepare_ade20k"),
        settings=settings("prepare_ade20k"),
    threads: stage_threads()
    resources:
        **stage_resources("prepare"),
    shell:
        "nepa prepare ade20k{params.sets}{resources.launcher} > {log} 2>&1"
