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


rule replay_prm:
    input:
        unpack(get_prm_replay_inputs),
    output:
        "results/replay_prm/{dataset}/{model}/{prm}.parquet",
    params:
        settings=get_replay_settings,
    log:
        "logs/replay_prm/{dataset}/{model}/{prm}.log",
    shell:
        "python -m pipeline.replay --grades {input.grades} --shards {input.shards} "
        "--info {input.info} --prm {wildcards.prm} --scores {input.scores} {params.settings} "
        "--out {output} > {log} 2>&1"
