# Weighted score fusion of the modalities (REFERENCE §7), MS-G3D's ensemble of their logits, and
# the optional weight search.


rule fuse:
    input:
        get_fusion_inputs,
    output:
        metrics=path("fused_metrics"),
        scores=path("fused_scores"),
        samples=sibling(path("fused_scores"), "samples"),
    log:
        "logs/fuse/{dataset}/{split}/{scheme}.log",
    conda:
        "../../environment.yml"
    params:
        scores=get_fusion_scores,
        weights=lambda wildcards: canonical(SCHEMES[wildcards.scheme]),
        code=get_code("fuse"),
    shell:
        "python -m msg3d fuse --scheme {wildcards.scheme:q} --scores {params.scores}"
        " --weights-json {params.weights:q} --out {output.metrics:q} --out-scores {output.scores:q} > {log:q} 2>&1"


rule fuse_search:
    input:
        get_fusion_inputs,
    output:
        metrics=path("fused_metrics", scheme=SEARCH),
    log:
        "logs/fuse_search/{dataset}/{split}.log",
    conda:
        "../../environment.yml"
    params:
        scheme=SEARCH,
        scores=get_fusion_scores,
        grid=SEARCH_GRID,
        seed=config["fusion_search"]["seed"],
        code=get_code("fuse"),
    shell:
        "python -m msg3d fuse --scheme {params.scheme:q} --scores {params.scores} --search {params.grid:q}"
        " --seed {params.seed:q} --out {output.metrics:q} > {log:q} 2>&1"


rule fuse_ensemble:
    input:
        lambda wildcards: get_fusion_inputs(wildcards, ENSEMBLE),
    output:
        metrics=path("fused_metrics", scheme=ENSEMBLE),
    log:
        "logs/fuse_ensemble/{dataset}/{split}.log",
    conda:
        "../../environment.yml"
    params:
        scheme=ENSEMBLE,
        scores=lambda wildcards: get_fusion_scores(wildcards, ENSEMBLE),
        weights=canonical(ENSEMBLE_WEIGHTS),
        code=get_code("fuse"),
    shell:
        "python -m msg3d fuse --logits --scheme {params.scheme:q} --scores {params.scores}"
        " --weights-json {params.weights:q} --out {output.metrics:q} > {log:q} 2>&1"
