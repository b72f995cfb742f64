# PRM scoring, one job per sample shard (a killed run keeps finished score shards), and
# the value heads the workflow fits on the policy's own training-split samples, with the
# Math-Shepherd rollouts that label their steps (supervision: rollouts).


rule train_value_head:
    input:
        unpack(get_training_inputs),
    output:
        directory("results/prms/{model}/{trained}"),
    params:
        spec=get_prm_spec,
        rollouts=get_rollouts_arg,
    threads: ALL_CORES
    resources:
        gpu=planned_gpus("train_value_head"),
        mem_mb=8000,
        runtime=60,
    log:
        "logs/train_value_head/{model}/{trained}.log",
    benchmark:
        "results/benchmarks/train_value_head/{model}/{trained}.tsv"
    shell:
        "python -m pipeline.score train --spec {params.spec:q} --info {input.info} "
        "--problems {input.problems} --grades {input.grades} {params.rollouts} --out {output} "
        "{input.shards} > {log} 2>&1"


rule rollouts:
    input:
        unpack(get_rollout_inputs),
    output:
        # protected: rollouts are paid-for policy compute, never overwritten (README)
        protected("results/rollouts/{dataset}/{model}/{key}/rollouts.parquet"),
    params:
        spec=get_rollout_spec,
    threads: ALL_CORES
    resources:
        gpu=planned_gpus("rollouts"),
        mem_mb=8000,
        runtime=240,
    log:
        "logs/rollouts/{dataset}/{model}/{key}.log",
    benchmark:
        "results/benchmarks/rollouts/{dataset}/{model}/{key}.tsv"
    shell:
        "python -m pipeline.rollouts --spec {params.spec:q} --info {input.info} "
        "--problems {input.problems} --out {output} {input.shards} > {log} 2>&1"


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
        gpu=planned_gpus("score"),
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
