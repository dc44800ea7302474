# Skeletons -> annotation pickle -> one derived store per modality.


rule make_demo:
    output:
        skeletons=directory("results/demo/{dataset}/skeletons"),
    log:
        "logs/make_demo/{dataset}.log",
    conda:
        "../../environment.yml"
    params:
        seed=config["demo"]["seed"],
        train_subjects=config["demo"]["train_subjects"],
        val_subjects=config["demo"]["val_subjects"],
        replications=config["demo"]["replications"],
        min_frames=config["demo"]["min_frames"],
        max_frames=config["demo"]["max_frames"],
        code=get_code("make-demo"),
    shell:
        "python -m msg3d make-demo {output.skeletons} --seed {params.seed}"
        " --train-subjects {params.train_subjects} --val-subjects {params.val_subjects}"
        " --replications {params.replications}"
        " --min-frames {params.min_frames} --max-frames {params.max_frames} > {log} 2>&1"


rule convert_ntu:
    input:
        skeletons=annotation_source,
    output:
        annotations="results/annotations/{dataset}/annotations.pkl",
        skipped="results/annotations/{dataset}/skipped.tsv",
    log:
        "logs/convert_ntu/{dataset}.log",
    wildcard_constraints:
        dataset=choice(SKELETON_DATASETS),
    conda:
        "../../environment.yml"
    threads: 4
    params:
        ntu=ntu_release,
        code=get_code("convert-ntu"),
    shell:
        "python -m msg3d convert-ntu {input.skeletons} {output.annotations} --dataset {params.ntu}"
        " --jobs {threads} > {log} 2>&1"


rule import_pyskl:
    input:
        annotations=pyskl_source,
    output:
        annotations="results/annotations/{dataset}/annotations.pkl",
    log:
        "logs/import_pyskl/{dataset}.log",
    wildcard_constraints:
        dataset=choice(PYSKL_DATASETS),
    conda:
        "../../environment.yml"
    params:
        code=get_code("import-pyskl"),
    shell:
        "python -m msg3d import-pyskl {input.annotations} --out {output.annotations} > {log} 2>&1"


rule derive:
    input:
        annotations="results/annotations/{dataset}/annotations.pkl",
    output:
        store=directory("results/stores/{dataset}/{stream}"),
    log:
        "logs/derive/{dataset}/{stream}.log",
    conda:
        "../../environment.yml"
    params:
        layout=layout,
        code=get_derive_code,
    shell:
        "python -m msg3d derive {input.annotations} {output.store} --layout {params.layout}"
        " --modality {wildcards.stream} > {log} 2>&1"
