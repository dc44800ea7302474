# Weighted score fusion of the streams (REFERENCE §7), and the optional weight search.


rule fuse:
    input:
        fusion_inputs,
    output:
        metrics="results/fusion/{dataset}/{split}/{scheme}.json",
        scores="results/fusion/{dataset}/{split}/{scheme}.pkl",
        samples="results/fusion/{dataset}/{split}/{scheme}_samples.csv",
    log:
        "logs/fuse/{dataset}/{split}/{scheme}.log",
    conda:
        "../../environment.yml"
    params:
        scores=fusion_scores,
        weights=fusion_weights,
        code=get_code("fuse"),
    shell:
        "python -m msg3d fuse --scheme {wildcards.scheme} --scores {params.scores}"
        " --weights-json {params.weights:q} --out {output.metrics} --out-scores {output.scores} > {log} 2>&1"


rule fuse_search:
    input:
        search_inputs,
    output:
        metrics="results/fusion/{dataset}/{split}/search.json",
    log:
        "logs/fuse_search/{dataset}/{split}.log",
    conda:
        "../../environment.yml"
    params:
        scores=search_scores,
        grid=SEARCH_GRID,
        seed=config["fusion_search"]["seed"],
        code=get_code("fuse"),
    shell:
        "python -m msg3d fuse --scheme search --scores {params.scores} --search {params.grid}"
        " --seed {params.seed} --out {output.metrics} > {log} 2>&1"
