# The model-zoo table and the plots, all marked for `snakemake --report report.html`.


rule model_zoo_table:
    input:
        table_inputs,
    output:
        md=report(
            "results/model_zoo.md",
            caption="../report/model_zoo.rst",
            category="Model zoo",
            labels={"table": "markdown"},
        ),
        csv=report(
            "results/model_zoo.csv",
            caption="../report/model_zoo.rst",
            category="Model zoo",
            labels={"table": "all metrics (CSV)"},
        ),
    log:
        "logs/model_zoo_table.log",
    conda:
        "../../environment.yml"
    params:
        spec=TABLE_SPEC,
        reference=reference_arg,
        code=get_code("table"),
    shell:
        "python -m msg3d table --spec-json {params.spec:q} {params.reference}"
        " --out-md {output.md} --out-csv {output.csv} > {log} 2>&1"


rule plot_curves:
    input:
        curve_inputs,
    output:
        report(
            "results/plots/{dataset}/{split}/curves.svg",
            caption="../report/curves.rst",
            category="Training curves",
            labels={"dataset": "{dataset}", "split": "{split}"},
        ),
    log:
        "logs/plot_curves/{dataset}/{split}.log",
    conda:
        "../../environment.yml"
    params:
        runs=curve_runs,
        title=plot_title,
        code=get_code("plot"),
    shell:
        "python -m msg3d plot curves --runs {params.runs} --title {params.title:q} --out {output} > {log} 2>&1"


rule plot_confusion:
    input:
        confusion_inputs,
    output:
        report(
            "results/plots/{dataset}/{split}/confusion_{entry}.svg",
            caption="../report/confusion.rst",
            category="Confusion matrices",
            subcategory="{dataset} {split}",
            labels={"dataset": "{dataset}", "split": "{split}", "scores": "{entry}"},
        ),
    log:
        "logs/plot_confusion/{dataset}/{split}/{entry}.log",
    conda:
        "../../environment.yml"
    params:
        scores=confusion_scores,
        title=confusion_title,
        code=get_code("plot"),
    shell:
        "python -m msg3d plot confusion --scores {params.scores} --title {params.title:q}"
        " --out {output} > {log} 2>&1"


rule plot_per_class:
    input:
        per_class_inputs,
    output:
        report(
            "results/plots/{dataset}/{split}/per_class.svg",
            caption="../report/per_class.rst",
            category="Per-class accuracy",
            labels={"dataset": "{dataset}", "split": "{split}"},
        ),
    log:
        "logs/plot_per_class/{dataset}/{split}.log",
    conda:
        "../../environment.yml"
    params:
        scores=per_class_scores,
        title=plot_title,
        code=get_code("plot"),
    shell:
        "python -m msg3d plot per-class --scores {params.scores} --title {params.title:q} --out {output} > {log} 2>&1"
