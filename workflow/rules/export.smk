# Optional target `export` (not part of `all`): each model trained here as a verified ONNX file,
# with the JSON a consumer needs, beside its checkpoint.


rule export_onnx:
    input:
        weights=get_export_weights,
    output:
        model=export_path("onnx"),
        info=export_path("json"),
    log:
        "logs/export_onnx/{dataset}/{split}/{modality}.log",
    conda:
        "../../environment.yml"
    params:
        checkpoint=get_test_checkpoint,
        code=get_code("export-onnx"),
    shell:
        "python -m msg3d export-onnx --checkpoint {params.checkpoint:q} {output.model:q} > {log:q} 2>&1"


rule export:
    input:
        get_export_targets(),
