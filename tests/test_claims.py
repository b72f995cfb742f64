"""pipeline.analysis.claims on synthetic replay tables built so that each claim is supported,
refuted, inconclusive or not testable; the numbers are checked against a direct
computation of each test (per-problem differences, the sampling mixture at matched FLOPs,
the FLOPs ratio, the cross-fitted model comparison)."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from pipeline import aggregate
from pipeline.analysis import claims, size, stats

GAINS_CONCAVE = {1: 0.0, 2: 0.0, 4: 0.2, 8: 0.25, 16: 0.27}
GAINS_CONVEX = {1: 0.0, 2: 0.0, 4: 0.02, 8: 0.1, 16: 0.3}
GAINS_FLAT = {1: 0.0, 2: 0.0, 4: 0.2, 8: 0.25, 16: 0.25}
GAINS_RISING = {1: 0.0, 2: 0.0, 4: 0.08, 8: 0.16, 16: 0.24}  # +0.08 every doubling


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
    replay, models = table(np.random.default_rng(0), gains=GAINS_FLAT)
    result, cand = evaluate(replay, models)
    assert set(result["claim"]) == set(claims.CLAIMS)
    # saturation: the last doubling's gain, below the margin with 95% confidence
    sat = by(result, "saturation", "s/majority")
    d = acc(cand, "s/majority@16") - acc(cand, "s/majority@8")
    assert sat["test"].startswith("gain of the last doubling, acc@16 - acc@8")
    assert sat["diff"] == pytest.approx(d.mean()) and sat["diff_se"] == pytest.approx(d.std(ddof=1) / math.sqrt(d.size))
    assert sat["mde"] == pytest.approx(stats.mde(d.std(ddof=1), d.size))
    assert sat["margin"] == claims.SATURATION_MARGIN and sat["ci_high"] < sat["margin"]
    assert sat["verdict"] == "supported"
    # weighted >= majority: non-inferiority at every n >= 2, Monte Carlo SE counted
    lines = result.filter(pl.col("claim") == "weighted_vs_majority")
    assert lines["subject"].to_list() == [f"s: weighted_majority[v,last] vs majority @{n}" for n in (2, 4, 8, 16)]
    wm = by(result, "weighted_vs_majority", "s: weighted_majority[v,last] vs majority @16")
    d = acc(cand, "s/weighted_majority[v,last]@16") - acc(cand, "s/majority@16")
    assert wm["diff"] == pytest.approx(d.mean())
    assert wm["diff_se"] == pytest.approx(math.sqrt(d.var(ddof=1) / d.size + 0.01**2 / d.size))
    assert wm["verdict"] == "supported" and wm["margin"] == claims.NONINFERIORITY_MARGIN
    assert "also better" in wm["note"]
    # REBASE@4 (3.2e10 FLOPs) is more accurate than every majority point: sampling never
    # reaches it, so the FLOPs ratio is censored ("more than") and its interval is above 1
    rb = by(result, "rebase_vs_sampling", "s: rebase_majority[v]@4")
    assert rb["ratio"] == pytest.approx(1.6e11 / 3.2e10) and rb["ratio_ci_low"] > 1 and rb["ratio_ci_high"] == math.inf
    assert "> 5.00" in rb["test"] and rb["verdict"] == "supported"
    # ... and at equal FLOPs it is compared with the mixture of majority@2 and @4 costing 3.2e10
    mix = 0.4 * acc(cand, "s/majority@2") + 0.6 * acc(cand, "s/majority@4")
    d = acc(cand, "s/rebase_majority[v]@4") - mix
    assert "0.40 x s/majority@2 + 0.60 x s/majority@4" in rb["test"] and rb["diff"] == pytest.approx(d.mean())
    # the two models' cross-fitted best points across the budget grid: the smaller wins
    sm = by(result, "small_model_optimal")
    assert sm["subject"] == "s vs l" and sm["verdict"] == "supported" and sm["num_problems"] == 200
    assert "smaller wins at" in sm["note"]
    # the weighted-majority saturation line is there too (min aggregation is not)
    assert by(result, "saturation", "s/weighted_majority[v,last]")["verdict"] == "supported"
    assert not result.filter(pl.col("subject").str.contains("min")).height


def test_saturation_flat_supported_steady_rise_not():
    """A flat curve satisfies the saturation test, a curve rising steadily (+0.08 per
    doubling) does not: the old curvature test scored both as no saturation."""
    flat, _ = evaluate(*table(np.random.default_rng(5), gains=GAINS_FLAT, two_models=False))
    rising, _ = evaluate(*table(np.random.default_rng(5), gains=GAINS_RISING, two_models=False))
    assert by(flat, "saturation", "s/majority")["verdict"] == "supported"
    r = by(rising, "saturation", "s/majority")
    assert r["verdict"] == "refuted" and r["ci_low"] > claims.SATURATION_MARGIN


def test_model_size_table_matches_crossfit():
    """Per budget of the grid: each model's held-out best within the budget (cross-fitted
    on the same folds) and their paired difference, with the nested-CV standard error."""
    replay, models = table(np.random.default_rng(0))
    cand = aggregate.candidate_rows(replay, ["last"])
    folds = stats.folds_table(replay.select("dataset", "problem_id").unique(), 5, seed=0)
    t = size.table(cand, folds, models, reps=20)
    assert t["budget"].to_list() == pytest.approx([10 ** (k / 4) for k in range(44, 48)])  # 1e11 .. 5.6e11
    r = cand.rename({"flops_paper": "cost"})
    for row in t.iter_rows(named=True):
        b = pl.DataFrame({"budget": [row["budget"]]})
        hs = stats.crossfit(r.filter(pl.col("model") == "s"), folds, b)
        hl = stats.crossfit(r.filter(pl.col("model") == "l"), folds, b)
        d = hs.join(hl, on="problem_id", suffix="_l").with_columns(d=pl.col("accuracy") - pl.col("accuracy_l"))["d"]
        assert row["diff"] == pytest.approx(d.mean()) and row["num_problems"] == 200
        assert row["diff_se"] >= row["naive_se"] - 1e-12 and row["se_method"] == "nested CV"
        assert row["outcome"] == size.SMALLER and row["optimal_model"] == "s"
        assert 0 <= row["larger_optimal_share"] < 0.05  # the bootstrap agrees: s is the optimal size
    assert t["large_point"].to_list()[0] == "l/greedy@1" and t["large_point"].to_list()[-1] == "l/majority@4"


def test_claims_refuted_and_inconclusive():
    replay, models = table(np.random.default_rng(1), gains=GAINS_CONVEX, weighted_shift=-0.1)
    result, _ = evaluate(replay, models)
    assert by(result, "saturation", "s/majority")["verdict"] == "refuted"
    assert by(result, "weighted_vs_majority", "s: weighted_majority[v,last] vs majority @16")["verdict"] == "refuted"
    replay, models = table(np.random.default_rng(2), q=20, weighted_shift=0.0, noise=0.3)
    result, _ = evaluate(replay, models)
    wm = by(result, "weighted_vs_majority", "s: weighted_majority[v,last] vs majority @16")
    assert wm["verdict"] == "inconclusive at 20 problems" and wm["ci_low"] < -wm["margin"] < wm["ci_high"]
    assert wm["mde"] > abs(wm["diff"])
    # slightly worse but within the margin, measured precisely: non-inferior
    replay, models = table(np.random.default_rng(3), q=400, weighted_shift=-0.005, noise=0.01)
    result, _ = evaluate(replay, models)
    wm = by(result, "weighted_vs_majority", "s: weighted_majority[v,last] vs majority @16")
    assert wm["diff"] < 0 and wm["ci_high"] < 0 and wm["verdict"] == "supported"


def test_rebase_dearer_and_no_better_is_refuted():
    """REBASE at 4x majority's FLOPs per unit of budget and only as accurate as one sample:
    sampling's cheapest point already reaches it, with fewer FLOPs: ratio below 1."""
    replay, models = table(np.random.default_rng(6), rebase=False, two_models=False)
    base = replay.filter((pl.col("strategy") == "majority") & (pl.col("n") == 1))
    for w in (2, 4):
        replay = pl.concat([replay, base.with_columns(
            strategy=pl.lit("rebase_majority"), prm=pl.lit("v"), n=pl.lit(w, pl.Int64),
            flops_paper=pl.col("flops_paper") * 4 * w)], how="vertical_relaxed")
    result, _ = evaluate(replay, models)
    rb = by(result, "rebase_vs_sampling", "s: rebase_majority[v]@4")
    assert rb["ratio"] == pytest.approx(1 / 16) and rb["ratio_ci_high"] < 1 and rb["verdict"] == "refuted"
    assert "<= 0.06" in rb["test"]


def test_claims_the_run_cannot_test_say_why():
    replay, models = table(np.random.default_rng(3), q=30, two_models=False, prm=False, rebase=False)
    result, _ = evaluate(replay, models.filter(pl.col("model") == "s"))
    assert by(result, "weighted_vs_majority")["verdict"].startswith("not testable")
    assert by(result, "weighted_vs_majority")["diff"] is None  # NULL in the database, not NaN
    assert "no REBASE" in by(result, "rebase_vs_sampling")["note"]
    sm = by(result, "small_model_optimal")
    assert sm["verdict"] == "not testable (1 model size(s) in this run)" and "1 model size" in sm["note"]
    assert not by(result, "saturation", "s/majority")["verdict"].startswith("not testable")


def test_degenerate_claim_inputs_are_not_testable_or_sign_tested():
    replay, models = table(np.random.default_rng(7), q=30, two_models=False, rebase=False)
    # a NULL accuracy on one problem: not testable, with the reason
    bad = replay.with_columns(accuracy=pl.when((pl.col("strategy") == "majority") & (pl.col("n") == 16)
                                               & (pl.col("problem_id") == "p003")).then(None)
                              .otherwise(pl.col("accuracy")))
    result, _ = evaluate(bad, models)
    sat = by(result, "saturation", "s/majority")
    assert sat["verdict"] == "not testable (a NaN (or NULL) value or standard error)" and sat["p_value"] is None
    # one problem only
    result, _ = evaluate(replay.filter(pl.col("problem_id") == "p000"), models, k=2)
    assert by(result, "saturation", "s/majority")["verdict"] == "not testable (fewer than two problems)"
    # every problem gains exactly 0.25 with the last doubling: sign test, p = 2^(1 - 30)
    const = replay.with_columns(accuracy=pl.when(pl.col("strategy") == "majority")
                                .then(pl.when(pl.col("n") == 16).then(0.5).otherwise(0.25)).otherwise(pl.col("accuracy")))
    result, _ = evaluate(const, models)
    sat = by(result, "saturation", "s/majority")
    assert sat["diff"] == 0.25 and sat["method"] == stats.SIGN and sat["p_value"] == pytest.approx(2.0 ** -29)
    assert sat["p_value"] > 0 and sat["verdict"] == "refuted"



def test_power_table_gives_the_mde_and_its_inputs():
    replay, models = table(np.random.default_rng(4), q=64)
    cand = aggregate.candidate_rows(replay, ["last"])
    p = claims.power(cand).row(0, named=True)
    d = acc(cand, "s/best_of_n[v,last]@16") - acc(cand, "s/majority@16")
    assert p["comparison"] == "s/best_of_n[v,last]@16 - s/majority@16" and p["num_problems"] == 64
    assert p["sd_diff"] == pytest.approx(d.std(ddof=1))
    assert p["mde"] == pytest.approx((1.959963984540054 + 0.8416212335729143) * d.std(ddof=1) / 8)
