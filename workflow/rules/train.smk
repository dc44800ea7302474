# Train one model per dataset, split and modality (unless the config gives its checkpoint).


# The run folder is not an output: Snakemake deletes a job's outputs before it reruns the job, and
# latest.pth must survive, so that `--auto-resume` continues a killed training (rerun-incomplete)
# where it stopped, or starts it over when the config or the training code changed. The engine
# rebuilds the declared files from latest.pth when it resumes.
rule train:
    input:
        store=path("store"),
    output:
        best=path("checkpoint", checkpoint="best"),
        epochs=path("epochs"),
    log:
        "logs/train/{dataset}/{split}/{modality}.log",
    benchmark:
        "benchmarks/train/{dataset}/{split}/{modality}.tsv"
    conda:
        "../../environment.yml"
    threads: TRAIN_THREADS
    resources:
        gpu=TRAIN_GPUS,
        mem_mb=job_mem_mb("train"),
    params:
        run=lambda wildcards: path("run", **wildcards),
        hparams=get_hparams,
        train_split=lambda wildcards: get_split_names(wildcards)[0],
        val_split=lambda wildcards: get_split_names(wildcards)[1],
        seed=config["seed"],
        device=DEVICE_ARG,
        code=get_code("train"),
    shell:
        "python -m msg3d launch --gpus {resources.gpu:q} train --data {input.store:q} --split {wildcards.split:q} --out {params.run:q}"
        " --train-split {params.train_split:q} --val-split {params.val_split:q}"
        " --auto-resume --hparams-json {params.hparams:q} --seed {params.seed:q} {params.device}"
        " --expect-code-digest {params.code:q} > {log:q} 2>&1"
