# Skeletons -> annotation pickle -> prepared annotations -> one derived store per modality.
# Every job declares its memory (resources: mem_mb; data_mem_mb and job_mem_mb in common.smk),
# so that `--resources mem_mb=N` (or a cluster) never runs more at once than the memory holds.


rule make_demo:
    output:
        skeletons=directory(path("skeletons")),
    log:
        "logs/make_demo/{dataset}.log",
    wildcard_constraints:
        dataset=choice(SKELETON_DATASETS),
    conda:
        "../../environment.yml"
    resources:
        mem_mb=data_mem_mb("make_demo"),
    params:
        seed=config["demo"]["seed"],
        train_subjects=config["demo"]["train_subjects"],
        val_subjects=config["demo"]["val_subjects"],
        replications=config["demo"]["replications"],
        min_frames=config["demo"]["min_frames"],
        max_frames=config["demo"]["max_frames"],
        code=get_code("make-demo"),
    shell:
        "python -m msg3d make-demo {output.skeletons:q} --seed {params.seed:q}"
        " --train-subjects {params.train_subjects:q} --val-subjects {params.val_subjects:q}"
        " --replications {params.replications:q}"
        " --min-frames {params.min_frames:q} --max-frames {params.max_frames:q} > {log:q} 2>&1"


rule make_kinetics_demo:
    output:
        release=directory(path("skeletons")),
    log:
        "logs/make_kinetics_demo/{dataset}.log",
    wildcard_constraints:
        dataset=choice(KINETICS_DATASETS),
    conda:
        "../../environment.yml"
    resources:
        mem_mb=data_mem_mb("make_kinetics_demo"),
    params:
        seed=config["demo"]["seed"],
        code=get_code("make-kinetics-demo"),
    shell:
        "python -m msg3d make-kinetics-demo {output.release:q} --seed {params.seed:q} > {log:q} 2>&1"


rule convert_kinetics:
    input:
        release=get_skeletons,
    output:
        annotations=path("annotations"),
        skipped=path("skipped"),
    log:
        "logs/convert_kinetics/{dataset}.log",
    wildcard_constraints:
        dataset=choice(KINETICS_DATASETS),
    conda:
        "../../environment.yml"
    threads: 4
    resources:
        mem_mb=data_mem_mb("convert_kinetics"),
    params:
        code=get_code("convert-kinetics"),
    shell:
        "python -m msg3d convert-kinetics {input.release:q} {output.annotations:q}"
        " --jobs {threads:q} > {log:q} 2>&1"


rule convert_ntu:
    input:
        skeletons=get_skeletons,
    output:
        annotations=path("annotations"),
        skipped=path("skipped"),
    log:
        "logs/convert_ntu/{dataset}.log",
    wildcard_constraints:
        dataset=choice(SKELETON_DATASETS),
    conda:
        "../../environment.yml"
    threads: 4
    resources:
        mem_mb=data_mem_mb("convert_ntu"),
    params:
        ntu=lookup(dpath="datasets/{dataset}/ntu", within=config),
        code=get_code("convert-ntu"),
    shell:
        "python -m msg3d convert-ntu {input.skeletons:q} {output.annotations:q} --dataset {params.ntu:q}"
        " --jobs {threads:q} > {log:q} 2>&1"


rule import_pyskl:
    input:
        annotations=get_pyskl_annotations,
    output:
        annotations=path("annotations"),
    log:
        "logs/import_pyskl/{dataset}.log",
    wildcard_constraints:
        dataset=choice(PYSKL_DATASETS),
    conda:
        "../../environment.yml"
    resources:
        mem_mb=data_mem_mb("import_pyskl"),
    params:
        release=get_release_check,
        code=get_code("import-pyskl"),
    shell:
        "python -m msg3d import-pyskl {input.annotations:q} --out {output.annotations:q}"
        " {params.release} > {log:q} 2>&1"


rule prepare_annotations:
    input:
        annotations=path("annotations"),
    output:
        prepared=directory(path("prepared")),
    log:
        "logs/prepare_annotations/{dataset}.log",
    conda:
        "../../environment.yml"
    resources:
        mem_mb=data_mem_mb("prepare_annotations"),
    params:
        layout=lambda wildcards: get_annotation(wildcards, "layout"),
        # derive's code less the bone and motion operators, which preparing never runs (the digest
        # of modality j, which runs neither): an edit to them reruns their modalities' stores only,
        # not this job and with it every store
        code=get_code("derive", "j"),
    shell:
        "python -m msg3d derive {input.annotations:q} {output.prepared:q} --layout {params.layout:q}"
        " --prepare > {log:q} 2>&1"


rule derive:
    input:
        prepared=path("prepared"),
    output:
        store=directory(path("store")),
    log:
        "logs/derive/{dataset}/{modality}.log",
    conda:
        "../../environment.yml"
    resources:
        mem_mb=data_mem_mb("derive"),
    params:
        layout=lambda wildcards: get_annotation(wildcards, "layout"),
        features=lambda wildcards: get_annotation(wildcards, "features"),
        code=lambda wildcards: get_code("derive", wildcards.modality),
    shell:
        "python -m msg3d derive {input.prepared:q} {output.store:q} --layout {params.layout:q}"
        " --modality {wildcards.modality:q} --features {params.features:q} > {log:q} 2>&1"
