rule grade:
    input:
        problems="results/problems/{dataset}.parquet",
        shards=get_shards,
    output:
        "results/grades/{dataset}/{model}/{key}.parquet",
    log:
        "logs/grade/{dataset}/{model}/{key}.log",
    shell:
        "python -m pipeline.grading --problems {input.problems} --out {output} {input.shards} > {log} 2>&1"
