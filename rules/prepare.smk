rule problems:
    output:
        "results/problems/{dataset}.parquet",
    params:
        spec=get_dataset_spec,
    log:
        "logs/problems/{dataset}.log",
    shell:
        "python -m pipeline.prepare problems --name {wildcards.dataset} --spec {params.spec:q} --out {output} > {log} 2>&1"


rule embedded_model:
    output:
        directory("results/models/{embedded}/hf"),
    params:
        spec=get_model_source,
    log:
        "logs/embedded_model/{embedded}.log",
    shell:
        "python -m pipeline.prepare embedded --spec {params.spec:q} --out {output} > {log} 2>&1"


rule model_info:
    input:
        built=get_built_model,
    output:
        "results/models/{model}/info.json",
    params:
        spec=get_model_source,
        model_dir=get_built_model_arg,
    log:
        "logs/model_info/{model}.log",
    shell:
        "python -m pipeline.prepare model --name {wildcards.model} --spec {params.spec:q} {params.model_dir} --out {output} > {log} 2>&1"
