# Tree search (REBASE, PRM beam search, MCTS), one job per search x PRM x budget x
# problem block: vLLM proposes the steps, the PRM scores them, in one process. Its own
# cache key (plan.searches) means changed settings write a new folder, never over one.


rule search:
    input:
        problems=ancient("results/problems/{dataset}.parquet"),
        info=ancient("results/models/{model}/info.json"),
        head=get_search_head,
    output:
        # protected: a finished search is read-only and never overwritten (README)
        results=protected("results/search/{dataset}/{model}/{prm}/{search}/{key}/{budget}/{block}.parquet"),
        leaves=protected("results/search/{dataset}/{model}/{prm}/{search}/{key}/{budget}/{block}.leaves.parquet"),
    params:
        spec=get_search_spec,
        head=get_head_arg,
    threads: ALL_CORES
    resources:
        gpu=planned_gpus("search"),
        prm_batch_size=get_prm_batch_size,
        mem_mb=8000,
        runtime=240,
    log:
        "logs/search/{dataset}/{model}/{prm}/{search}/{key}/{budget}/{block}.log",
    benchmark:
        "results/benchmarks/search/{dataset}/{model}/{prm}/{search}/{key}/{budget}/{block}.tsv"
    shell:
        "python -m pipeline.search --spec {params.spec:q} --info {input.info} "
        "--problems {input.problems} --budget {wildcards.budget} --block {wildcards.block} "
        "{params.head} --batch-size {resources.prm_batch_size} --out {output.results} --leaves {output.leaves} > {log} 2>&1"
