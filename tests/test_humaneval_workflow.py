"""config/humaneval.yaml end to end on a few problems, for real: the embedded model
samples HumanEval completions with vLLM, the grade_code rule runs each against its
tests in bubblewrap sandboxes, the policy's log-prob scores them, and the code
strategies (coverage, majority voting over behaviours, best-of-N and weighted voting)
reach the DuckDB views and figures like any other. Only the shipped config's size is
cut (3 problems, 4 samples of up to 96 tokens, no greedy cache); the embedded model's build is
taken from the session's baseline run, so no conversion is paid twice."""

from __future__ import annotations

import copy
import shutil

import polars as pl
import pytest
import yaml
from conftest import REPO, open_db, snakemake

pytestmark = pytest.mark.integration

CODE = yaml.safe_load((REPO / "config" / "humaneval.yaml").read_text())
CODE["datasets"]["humaneval"]["limit"] = 3
# no greedy cache: one vLLM job less (greedy replays code grades as it replays math's)
CODE["sampling"].update(n=4, max_tokens=96, greedy=False)
CODE["shards"] = {"problems": 8, "samples": 4}


@pytest.fixture(scope="module")
def code_run(baseline, bwrap, tmp_path_factory):
    run = tmp_path_factory.mktemp("humaneval")
    # the built model and Snakemake's records of it (so it counts as up to date)
    shutil.copytree(baseline / "results" / "models", run / "results" / "models", symlinks=True)
    shutil.copytree(baseline / ".snakemake" / "metadata", run / ".snakemake" / "metadata")
    snakemake(run, copy.deepcopy(CODE))
    return run


def test_code_grades_carry_status_and_reason(code_run):
    [sampled] = (code_run / "results" / "grades" / "humaneval" / "smollm2-135m").glob("*.parquet")
    g = pl.read_parquet(sampled)
    assert g.height == 3 * 4
    assert set(g.columns) >= {"answer", "answer_class", "correct", "status", "reason"}
    assert set(g["status"]) <= {"pass", "fail", "timeout", "error"} and "error" not in set(g["status"])
    assert (g["correct"] == (g["status"] == "pass")).all()
    assert (g.filter(pl.col("status") != "pass")["reason"].str.len_chars() > 0).all()
    log = next((code_run / "logs" / "grade" / "humaneval" / "smollm2-135m").glob("*.log")).read_text()
    assert "bubblewrap" in log


def test_code_strategies_reach_the_views(code_run):
    with open_db(code_run) as con:
        curve = pl.from_arrow(con.sql("SELECT * FROM accuracy_vs_flops WHERE dataset = 'humaneval'").to_arrow_table())
        front = pl.from_arrow(con.sql("SELECT * FROM pareto WHERE dataset = 'humaneval'").to_arrow_table())
        optimal = con.execute("SELECT count(*) FROM compute_optimal WHERE dataset = 'humaneval'").fetchone()[0]
        statuses = con.execute("SELECT count(*) FROM grades WHERE dataset = 'humaneval' AND status IS NOT NULL").fetchone()[0]
        problems = con.execute("SELECT count(*) FROM problems WHERE dataset = 'humaneval'").fetchone()[0]
    assert {"majority", "coverage", "best_of_n", "weighted_majority"} <= set(curve["strategy"])
    assert curve.filter(pl.col("strategy") == "coverage")["n"].to_list() and curve["accuracy"].is_between(0, 1).all()
    assert set(curve.filter(pl.col("prm").is_not_null())["prm"]) == {"logprob"}
    assert front.height >= 1 and "coverage" not in set(front["strategy"]) and optimal >= 1
    assert statuses == 3 * 4 and problems == 3
    for name in ("accuracy_vs_flops.png", "accuracy_vs_n.png"):
        assert (code_run / "results" / "plots" / name).stat().st_size > 10_000
