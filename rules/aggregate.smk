rule aggregate:
    input:
        get_manifest_files(),
    output:
        db="results/inference.duckdb",
        plot="results/plots/accuracy_vs_flops.png",
    params:
        manifest=get_manifest_json,
        config=get_config_json,
    log:
        "logs/aggregate.log",
    shell:
        "python -m pipeline.aggregate --manifest {params.manifest:q} --config {params.config:q} "
        "--db {output.db} --plot {output.plot} > {log} 2>&1"
