"""pipeline.analysis.claims on synthetic replay tables built so that each claim is supported,
refuted, inconclusive or not testable; the numbers are checked against a direct
computation of each test's per-problem differences."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from pipeline import aggregate
from pipeline.analysis import claims, stats

GAINS_CONCAVE = {1: 0.0, 2: 0.0, 4: 0.2, 8: 0.25, 16: 0.27}
GAINS_CONVEX = {1: 0.0, 2: 0.0, 4: 0.02, 8: 0.1, 16: 0.3}


def table(rng, q=200, *, gains=GAINS_CONCAVE, weighted_shift=0.1, noise=0.05, two_models=True, prm=True,
          rebase=True):
    base = rng.uniform(0.05, 0.4, q)
    rows = []

    def add(model, params, strategy, n, acc, tokens, prm_name=None, agg=None):
        for i in range(q):
            rows.append({"dataset": "d", "model": model, "prm": prm_name, "aggregation": agg,
                         "problem_id": f"p{i:03d}", "strategy": strategy, "n": n,
                         "accuracy": float(np.clip(acc[i], 0, 1)), "accuracy_se": 0.01 if strategy == "weighted_majority" else 0.0,
                         "output_tokens": tokens * n, "prompt_tokens": 10.0 * n,
                         "flops_paper": 2 * params * tokens * n, "flops_full": 2 * params * (tokens + 10) * n})

    for n, g in gains.items():
        maj = base + g + rng.normal(0, noise, q)
        add("s", 1e8, "majority", n, maj, 50.0)
        if prm:
            add("s", 1e8, "weighted_majority", n, maj + weighted_shift + rng.normal(0, noise, q), 50.0, "v", "last")
            add("s", 1e8, "best_of_n", n, maj + rng.normal(0, noise, q), 50.0, "v", "last")
            add("s", 1e8, "weighted_majority", n, maj - 0.3, 50.0, "v", "min")  # not a headline aggregation
    if rebase:
        # cheaper than majority@4 (40 tokens per unit of budget) and better than it
        for w in (2, 4):
            add("s", 1e8, "rebase_majority", w, base + 0.3 + rng.normal(0, noise, q), 40.0, "v", None)
    if two_models:
        add("l", 1e9, "greedy", 1, base + 0.05 + rng.normal(0, noise, q), 50.0)  # 1e11 FLOPs
        add("l", 1e9, "majority", 4, base + 0.3 + rng.normal(0, noise, q), 50.0)
    replay = aggregate._replay_table([pl.DataFrame(rows, infer_schema_length=None)])
    models = pl.DataFrame({"model": ["s", "l"], "params_total": [100_000_000, 1_000_000_000]})
    return replay, models


def evaluate(replay, models, *, k=5):
    cand = aggregate.candidate_rows(replay, ["last"])
    problems = replay.select("dataset", "problem_id").unique()
    folds = stats.folds_table(problems, k, seed=0)
    return claims.evaluate(cand, folds=folds, strategies=aggregate.infer_strategies(replay), models=models), cand


def by(result, claim, subject=None):
    rows = result.filter(pl.col("claim") == claim)
    if subject is not None:
        rows = rows.filter(pl.col("subject") == subject)
    assert rows.height == 1, rows
    return rows.row(0, named=True)


def acc(cand, point):
    return cand.filter(pl.col("point") == point).sort("problem_id")["accuracy"].to_numpy()


def test_claims_supported_with_numbers_checked():
    replay, models = table(np.random.default_rng(0))
    result, cand = evaluate(replay, models)
    assert set(result["claim"]) == set(claims.CLAIMS)
    sat = by(result, "saturation", "s/majority")
    d = (acc(cand, "s/majority@4") - acc(cand, "s/majority@1")) - (acc(cand, "s/majority@16") - acc(cand, "s/majority@4"))
    assert sat["test"] == "(acc@4 - acc@1) - (acc@16 - acc@4)"
    assert sat["diff"] == pytest.approx(d.mean()) and sat["diff_se"] == pytest.approx(d.std(ddof=1) / math.sqrt(d.size))
    assert sat["mde"] == pytest.approx(stats.mde(d.std(ddof=1), d.size))
    assert sat["verdict"] == "supported" and sat["ci_low"] > 0
    # weighted majority: the Monte Carlo SE (0.01 per problem) is counted
    wm = by(result, "weighted_vs_majority")
    d = acc(cand, "s/weighted_majority[v,last]@16") - acc(cand, "s/majority@16")
    assert wm["diff"] == pytest.approx(d.mean())
    assert wm["diff_se"] == pytest.approx(math.sqrt(d.var(ddof=1) / d.size + 0.01**2 / d.size))
    assert wm["verdict"] == "supported" and wm["subject"] == "s: weighted_majority[v,last] vs majority"
    # REBASE@4 costs 3.2e10 FLOPs: the cheapest majority point with at least that is
    # majority@4 (4e10; majority@2 costs 2e10)
    rb = by(result, "rebase_vs_sampling")
    assert rb["test"] == "rebase_majority@4 (3.2e+10 FLOPs) - majority@4 (4e+10 FLOPs)"
    d = acc(cand, "s/rebase_majority[v]@4") - acc(cand, "s/majority@4")
    assert rb["diff"] == pytest.approx(d.mean()) and rb["verdict"] == "supported"
    # the larger model's cheapest point: greedy at 1e11; the small model's held-out choice within it
    sm = by(result, "small_model_optimal")
    assert sm["subject"] == "s vs l" and "l/greedy@1" in sm["test"] and sm["verdict"] == "supported"
    assert sm["num_problems"] == 200
    # the weighted-majority saturation line is there too (min aggregation is not)
    assert by(result, "saturation", "s/weighted_majority[v,last]")["verdict"] == "supported"
    assert not result.filter(pl.col("subject").str.contains("min")).height


def test_claims_refuted_and_inconclusive():
    replay, models = table(np.random.default_rng(1), gains=GAINS_CONVEX, weighted_shift=-0.1)
    result, _ = evaluate(replay, models)
    assert by(result, "saturation", "s/majority")["verdict"] == "refuted"
    assert by(result, "weighted_vs_majority")["verdict"] == "refuted"
    replay, models = table(np.random.default_rng(2), q=20, weighted_shift=0.0, noise=0.3)
    result, _ = evaluate(replay, models)
    wm = by(result, "weighted_vs_majority")
    assert wm["verdict"] == "inconclusive at 20 problems" and wm["ci_low"] < 0 < wm["ci_high"]
    assert wm["mde"] > abs(wm["diff"])


def test_claims_the_run_cannot_test_say_why():
    replay, models = table(np.random.default_rng(3), q=30, two_models=False, prm=False, rebase=False)
    result, _ = evaluate(replay, models.filter(pl.col("model") == "s"))
    assert by(result, "weighted_vs_majority")["verdict"] == "not testable"
    assert by(result, "weighted_vs_majority")["diff"] is None  # NULL in the database, not NaN
    assert "no REBASE" in by(result, "rebase_vs_sampling")["note"]
    sm = by(result, "small_model_optimal")
    assert sm["verdict"] == "not testable" and "1 model size" in sm["note"]
    assert by(result, "saturation", "s/majority")["verdict"] != "not testable"


def test_power_table_gives_the_mde_and_its_inputs():
    replay, models = table(np.random.default_rng(4), q=64)
    cand = aggregate.candidate_rows(replay, ["last"])
    p = claims.power(cand).row(0, named=True)
    d = acc(cand, "s/best_of_n[v,last]@16") - acc(cand, "s/majority@16")
    assert p["comparison"] == "s/best_of_n[v,last]@16 - s/majority@16" and p["num_problems"] == 64
    assert p["sd_diff"] == pytest.approx(d.std(ddof=1))
    assert p["mde"] == pytest.approx((1.959963984540054 + 0.8416212335729143) * d.std(ddof=1) / 8)
