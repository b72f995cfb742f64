# One job gathers every stage's results into DuckDB, derives the analysis tables (folds,
# held-out choices, the paper's claims; the config's `analysis` section, passed with the
# whole config as JSON) and draws what the report shows (figures, the views as HTML
# tables, a Markdown summary), all from the database. `snakemake --report
# results/report.html` embeds the outputs marked report().


rule aggregate:
    input:
        get_manifest_files(),
    output:
        db="results/inference.duckdb",
        plot=report(
            "results/plots/accuracy_vs_flops.png",
            caption="../report/accuracy_vs_flops.rst",
            category="Figures",
            labels={"figure": "accuracy and error rate vs FLOPs"},
        ),
        plot_n=report(
            "results/plots/accuracy_vs_n.png",
            caption="../report/accuracy_vs_n.rst",
            category="Figures",
            labels={"figure": "accuracy vs n"},
        ),
        summary=report(
            "results/summary.md",
            caption="../report/summary.rst",
            category="Summary",
            labels={"file": "summary.md"},
        ),
        table_curve=report(
            "results/tables/accuracy_vs_flops.html",
            caption="../report/tables.rst",
            category="Tables",
            labels={"view": "accuracy_vs_flops"},
        ),
        table_pareto=report(
            "results/tables/pareto.html",
            caption="../report/tables.rst",
            category="Tables",
            labels={"view": "pareto"},
        ),
        table_optimal=report(
            "results/tables/compute_optimal.html",
            caption="../report/tables.rst",
            category="Tables",
            labels={"view": "compute_optimal"},
        ),
        table_claims=report(
            "results/tables/claims.html",
            caption="../report/claims.rst",
            category="Tables",
            labels={"view": "claims"},
        ),
        **get_size_figure(),
    params:
        manifest=get_manifest_json,
        config=get_config_json,
        size=get_size_figure_arg,
    log:
        "logs/aggregate.log",
    shell:
        "python -m pipeline.aggregate --manifest {params.manifest:q} --config {params.config:q} "
        "--db {output.db} --plot {output.plot} --plot-n {output.plot_n} {params.size} "
        "--summary {output.summary} "
        "--tables {output.table_curve} {output.table_pareto} {output.table_optimal} "
        "{output.table_claims} > {log} 2>&1"
