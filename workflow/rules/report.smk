# The model-zoo table and the plots, all marked for `snakemake --report report.html`. The report's
# viewer shows HTML, SVG and images inline but markdown and CSV only as downloads: the table is
# also written as HTML, so that the report shows it.


rule model_zoo_table:
    input:
        get_table_inputs,
    output:
        html=report(
            path("table_html"),
            caption="../report/model_zoo.rst",
            category="Model zoo",
            labels={"table": "model zoo (shown here)"},
        ),
        md=report(
            path("table_md"),
            caption="../report/model_zoo.rst",
            category="Model zoo",
            labels={"table": "markdown"},
        ),
        csv=report(
            path("table_csv"),
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
        reference=REFERENCE_ARG,
        code=get_code("table"),
    shell:
        "python -m msg3d table --spec-json {params.spec:q} {params.reference}"
        " --out-md {output.md:q} --out-csv {output.csv:q} --out-html {output.html:q} > {log:q} 2>&1"


rule plot_curves:
    input:
        get_curve_inputs,
    output:
        report(
            path("curves"),
            caption="../report/curves.rst",
            category="Training curves",
            labels={"dataset": "{dataset}", "split": "{split}"},
        ),
    log:
        "logs/plot_curves/{dataset}/{split}.log",
    conda:
        "../../environment.yml"
    params:
        runs=get_curve_runs,
        title=lambda wildcards: f"{wildcards.dataset} {wildcards.split}",
        code=get_code("plot"),
    shell:
        "python -m msg3d plot curves --runs {params.runs} --title {params.title:q} --out {output:q} > {log:q} 2>&1"


rule plot_confusion:
    input:
        get_confusion_inputs,
    output:
        report(
            path("confusion"),
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
        scores=lambda wildcards: scores_file(wildcards, wildcards.entry),
        title=lambda wildcards: f"{wildcards.dataset} {wildcards.split}: {wildcards.entry}",
        names=plot_class_names,
        code=get_code("plot"),
    shell:
        "python -m msg3d plot confusion --scores {params.scores:q} --class-names {params.names:q} --title {params.title:q}"
        " --out {output:q} > {log:q} 2>&1"


rule plot_per_class:
    input:
        get_per_class_inputs,
    output:
        report(
            path("per_class"),
            caption="../report/per_class.rst",
            category="Per-class accuracy",
            labels={"dataset": "{dataset}", "split": "{split}"},
        ),
    log:
        "logs/plot_per_class/{dataset}/{split}.log",
    conda:
        "../../environment.yml"
    params:
        scores=get_per_class_scores,
        title=lambda wildcards: f"{wildcards.dataset} {wildcards.split}",
        names=plot_class_names,
        code=get_code("plot"),
    shell:
        "python -m msg3d plot per-class --scores {params.scores} --class-names {params.names:q} --title {params.title:q}"
        " --out {output:q} > {log:q} 2>&1"
