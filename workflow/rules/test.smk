# Test each model (trained here, or a checkpoint the config gives: a file, or a URL downloaded once).


rule download_checkpoint:
    output:
        pth=path("downloaded"),
    log:
        "logs/download_checkpoint/{dataset}/{split}/{modality}.log",
    conda:
        "../../environment.yml"
    params:
        url=get_checkpoint_url,
    shell:
        "python -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])'"
        " {params.url:q} {output.pth:q}.part > {log:q} 2>&1 && mv {output.pth:q}.part {output.pth:q}"


rule test:
    input:
        store=path("store"),
        weights=get_test_weights,
    output:
        scores=path("scores"),
        samples=sibling(path("scores"), "samples"),
        metrics=path("metrics"),
        per_class=sibling(path("scores"), "per_class"),
        confusion=sibling(path("scores"), "confusion_csv"),
    log:
        "logs/test/{dataset}/{split}/{modality}.log",
    benchmark:
        "benchmarks/test/{dataset}/{split}/{modality}.tsv"
    conda:
        "../../environment.yml"
    threads: TORCH_THREADS
    resources:
        gpu=GPUS_PER_JOB,
    params:
        checkpoint=get_test_checkpoint,
        num_clips=config["test"]["num_clips"],
        num_workers=HPARAMS.num_workers,
        device=DEVICE_ARG,
        code=get_code("test"),
    shell:
        "python -m msg3d test --data {input.store:q} --split {wildcards.split:q} --checkpoint {params.checkpoint:q}"
        " --out {output.scores:q} --metrics {output.metrics:q} --num-clips {params.num_clips:q}"
        " --num-workers {params.num_workers:q} {params.device} > {log:q} 2>&1"
