# Train one model per dataset, split and stream (or take a given checkpoint), then test it.


# The run folder is not an output: Snakemake deletes a job's outputs before it reruns the job, and
# latest.pth must survive, so that `--auto-resume` continues a killed training (rerun-incomplete)
# where it stopped, or starts it over when the config or the training code changed. The engine
# rebuilds the declared files from latest.pth when it resumes.
rule train:
    input:
        store="results/stores/{dataset}/{stream}",
    output:
        best="results/train/{dataset}/{split}/{stream}/best.pth",
        epochs="results/train/{dataset}/{split}/{stream}/epochs.csv",
    log:
        "logs/train/{dataset}/{split}/{stream}.log",
    benchmark:
        "benchmarks/train/{dataset}/{split}/{stream}.tsv"
    conda:
        "../../environment.yml"
    threads: TORCH_THREADS
    resources:
        gpu=GPUS_PER_JOB,
    params:
        run=run_dir,
        hparams=TRAIN_HPARAMS,
        seed=config["seed"],
        device=DEVICE_ARG,
        code=get_code("train"),
    # more than one GPU granted (e.g. set-resources in a cluster profile): DDP with torchrun in this job
    shell:
        "if [ {resources.gpu} -gt 1 ]; then launch='torchrun --standalone --nproc-per-node {resources.gpu}';"
        " else launch=python; fi;"
        " $launch -m msg3d train --data {input.store} --split {wildcards.split} --out {params.run}"
        " --auto-resume --hparams-json {params.hparams:q} --seed {params.seed} {params.device}"
        " --expect-code-digest {params.code} > {log} 2>&1"


rule download_checkpoint:
    output:
        pth="resources/checkpoints/{dataset}/{split}/{stream}.pth",
    log:
        "logs/download_checkpoint/{dataset}/{split}/{stream}.log",
    conda:
        "../../environment.yml"
    params:
        url=checkpoint_url,
    shell:
        "python -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])'"
        " {params.url:q} {output.pth}.part > {log} 2>&1 && mv {output.pth}.part {output.pth}"


rule test:
    input:
        store="results/stores/{dataset}/{stream}",
        weights=test_weights,
    output:
        scores="results/test/{dataset}/{split}/{stream}/scores.pkl",
        samples="results/test/{dataset}/{split}/{stream}/scores_samples.csv",
        metrics="results/test/{dataset}/{split}/{stream}/metrics.json",
        per_class="results/test/{dataset}/{split}/{stream}/scores_per_class.csv",
        confusion="results/test/{dataset}/{split}/{stream}/scores_confusion.csv",
    log:
        "logs/test/{dataset}/{split}/{stream}.log",
    benchmark:
        "benchmarks/test/{dataset}/{split}/{stream}.tsv"
    conda:
        "../../environment.yml"
    threads: TORCH_THREADS
    resources:
        gpu=GPUS_PER_JOB,
    params:
        checkpoint=test_checkpoint,
        num_clips=config["test"]["num_clips"],
        num_workers=config["train"]["num_workers"],
        device=DEVICE_ARG,
        code=get_code("test"),
    shell:
        "python -m msg3d test --data {input.store} --split {wildcards.split} --checkpoint {params.checkpoint}"
        " --out {output.scores} --metrics {output.metrics} --num-clips {params.num_clips}"
        " --num-workers {params.num_workers} {params.device} > {log} 2>&1"
