# One job per shard (problem block x sample block): a killed run keeps finished shards,
# and raising N adds only new sample blocks. Inputs are ancient(): re-preparing problems
# or model info (same key, same content) must never regenerate paid-for samples.


rule generate:
    input:
        problems=ancient("results/problems/{dataset}.parquet"),
        info=ancient("results/models/{model}/info.json"),
    output:
        # protected: Snakemake makes a finished shard read-only and refuses to delete or
        # overwrite it (README, "Seeing what would rerun").
        protected("results/samples/{dataset}/{model}/{key}/{shard}.parquet"),
    params:
        spec=get_generate_spec,
    threads: ALL_CORES
    resources:
        gpu=planned_gpus("generate"),
        mem_mb=8000,
        runtime=120,
    log:
        "logs/generate/{dataset}/{model}/{key}/{shard}.log",
    benchmark:
        "results/benchmarks/generate/{dataset}/{model}/{key}/{shard}.tsv"
    shell:
        "python -m pipeline.generate --model-info {input.info} --problems {input.problems} "
        "--shard {wildcards.shard} --spec {params.spec:q} --out {output} > {log} 2>&1"
