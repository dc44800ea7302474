# Test each model (trained here, or a checkpoint the config gives: a file, or a URL downloaded once,
# retried and checked against its sha256 when the config gives one: msg3d download).


rule download_checkpoint:
    output:
        pth=path("downloaded"),
    log:
        "logs/download_checkpoint/{dataset}/{split}/{modality}.log",
    conda:
        "../../environment.yml"
    params:
        url=get_checkpoint_url,
        sha256=get_checkpoint_sha256,
    shell:
        "python -m msg3d download {params.url:q} {output.pth:q} {params.sha256} > {log:q} 2>&1"


rule test:
    input:
        store=path("store"),
        weights=get_test_weights,
    output:
        scores=path("scores"),
        samples=sibling(path("scores"), "samples"),
        metrics=path("metrics"),
        logits=path("logits"),
        logit_samples=sibling(path("logits"), "samples"),
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
        mem_mb=job_mem_mb("test"),
    params:
        checkpoint=get_test_checkpoint,
        val_split=lambda wildcards: get_split_names(wildcards)[1],
        num_workers=lambda wildcards: HPARAMS[wildcards.dataset].num_workers,
        device=DEVICE_ARG,
        code=get_code("test"),
    shell:
        "python -m msg3d launch --gpus {resources.gpu:q} test --data {input.store:q} --split {params.val_split:q} --checkpoint {params.checkpoint:q}"
        " --out {output.scores:q} --metrics {output.metrics:q} --logits {output.logits:q}"
        " --num-workers {params.num_workers:q} {params.device} > {log:q} 2>&1"
