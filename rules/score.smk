# PRM scoring, one job per sample shard (a killed run keeps finished score shards), and
# the value heads the workflow fits on the policy's own training-split samples.


rule train_value_head:
    input:
        unpack(get_training_inputs),
    output:
        directory("results/prms/{model}/{trained}"),
    params:
        spec=get_prm_spec,
    threads: ALL_CORES
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    log:
        "logs/train_value_head/{model}/{trained}.log",
    benchmark:
        "results/benchmarks/train_value_head/{model}/{trained}.tsv"
    shell:
        "python -m pipeline.score train --spec {params.spec:q} --info {input.info} "
        "--problems {input.problems} --grades {input.grades} --out {output} {input.shards} > {log} 2>&1"


rule score:
    input:
        shard="results/samples/{dataset}/{model}/{key}/{shard}.parquet",
        problems=ancient("results/problems/{dataset}.parquet"),
        info=ancient("results/models/{model}/info.json"),
        head=get_value_head,
    output:
        protected("results/scores/{dataset}/{model}/{key}/{prm}/{shard}.parquet"),
    params:
        spec=get_prm_spec,
        head=get_head_arg,
    threads: ALL_CORES
    resources:
        gpu=1,
        prm_batch_size=get_prm_batch_size,
        mem_mb=8000,
        runtime=120,
    log:
        "logs/score/{dataset}/{model}/{key}/{prm}/{shard}.log",
    benchmark:
        "results/benchmarks/score/{dataset}/{model}/{key}/{prm}/{shard}.tsv"
    shell:
        "python -m pipeline.score score --name {wildcards.prm} --spec {params.spec:q} "
        "--batch-size {resources.prm_batch_size} "
        "--info {input.info} --problems {input.problems} {params.head} --out {output} "
        "{input.shard} > {log} 2>&1"
