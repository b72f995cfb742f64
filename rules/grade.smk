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


# Code datasets (pipeline/tasks/code.py): the same output, graded by running every
# program against the problem's unit tests in a fresh bubblewrap sandbox
# (pipeline/tasks/sandbox.py). A rule of its own, so the `grade` rule of every other
# dataset is unchanged (its existing outputs are not rerun).
ruleorder: grade_code > grade


rule grade_code:
    input:
        problems="results/problems/{dataset}.parquet",
        shards=get_shards,
    output:
        "results/grades/{dataset}/{model}/{key}.parquet",
    wildcard_constraints:
        dataset=CODE_DATASETS,
    params:
        prompt=get_cache_prompt,
        execution=get_execution_spec,
        workers=get_grade_workers,
    threads: ALL_CORES
    log:
        "logs/grade/{dataset}/{model}/{key}.log",
    benchmark:
        "results/benchmarks/grade/{dataset}/{model}/{key}.tsv"
    shell:
        "python -m pipeline.grading --task code --problems {input.problems} --prompt {params.prompt:q} "
        "--execution {params.execution:q} --workers {params.workers} --out {output} {input.shards} > {log} 2>&1"
