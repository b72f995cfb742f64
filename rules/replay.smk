rule replay:
    input:
        unpack(get_replay_inputs),
    output:
        "results/replay/{dataset}/{model}.parquet",
    params:
        greedy=get_greedy_args,
    log:
        "logs/replay/{dataset}/{model}.log",
    shell:
        "python -m pipeline.replay --grades {input.grades} --shards {input.shards} "
        "--info {input.info} {params.greedy} --out {output} > {log} 2>&1"
