"""DVTS / particles against beam search, REBASE and sampling at matched FLOPs
(pipeline/analysis/search_compare.py), on hand-made points."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from pipeline.analysis import report, search_compare, stats

PROBLEMS = [f"p{i}" for i in range(8)]


def point_rows(point, model, acc, flops, se=None):
    return [{"dataset": "arith", "point": point, "model": model, "problem_id": p, "accuracy": float(a),
             "accuracy_se": 0.0 if se is None else se[i], "flops_paper": float(flops), "flops_full": 3.0 * flops}
            for i, (p, a) in enumerate(zip(PROBLEMS, acc))]


def frames():
    """dvts@4 (cost 3), rebase@2 (2) and @4 (4), beam@4 (5), weighted_majority (sampling)
    @1, @2, @4 (1, 2, 4); every strategy with the value head and `last`; majority too."""
    pts = {
        # point: (strategy, prm, aggregation, n, accuracies, cost)
        "m/dvts_weighted_majority[vh,last]@4": ("dvts_weighted_majority", "vh", "last", 4, [1, 1, 1, 1, 0, 0, 1, 0], 3),
        "m/rebase_weighted_majority[vh,last]@2": ("rebase_weighted_majority", "vh", "last", 2, [1, 0, 0, 1, 0, 0, 0, 0], 2),
        "m/rebase_weighted_majority[vh,last]@4": ("rebase_weighted_majority", "vh", "last", 4, [1, 1, 0, 1, 0, 1, 0, 0], 4),
        "m/beam_weighted_majority[vh,last]@4": ("beam_weighted_majority", "vh", "last", 4, [0, 1, 1, 1, 0, 0, 0, 0], 5),
        "m/weighted_majority[vh,last]@1": ("weighted_majority", "vh", "last", 1, [0.5] * 8, 1),
        "m/weighted_majority[vh,last]@2": ("weighted_majority", "vh", "last", 2, [0.6] * 8, 2),
        "m/weighted_majority[vh,last]@4": ("weighted_majority", "vh", "last", 4, [0.7] * 8, 4),
        "m/dvts_majority[vh]@4": ("dvts_majority", "vh", None, 4, [1, 0, 1, 0, 1, 0, 1, 0], 3),
        "m/majority@2": ("majority", None, None, 2, [0.25] * 8, 2),
        "m/majority@4": ("majority", None, None, 4, [0.5] * 8, 4),
    }
    candidates = pl.DataFrame([r for p, v in pts.items() for r in point_rows(p, "m", v[4], v[5])])
    points = pl.DataFrame([{"dataset": "arith", "point": p, "strategy": v[0], "prm": v[1], "aggregation": v[2],
                            "n": v[3]} for p, v in pts.items()],
                          schema={"dataset": pl.String, "point": pl.String, "strategy": pl.String, "prm": pl.String,
                                  "aggregation": pl.String, "n": pl.Int32})
    strategies = pl.DataFrame(
        [(f"{e}_{r}", "tree search", e, r) for e in ("dvts", "rebase", "beam")
         for r in ("majority", "best_of_n", "weighted_majority")]
        + [("majority", "sampling-based voting", None, "majority"),
           ("weighted_majority", "PRM-based selection", None, "weighted_majority")],
        schema=["strategy", "family", "algorithm", "selection"], orient="row")
    return candidates, points, strategies


def test_exact_match_and_no_common_problems():
    candidates, points, strategies = frames()
    # dvts at exactly rebase@4's cost: that point alone, no mixture
    t = search_compare.compare(candidates.with_columns(
        flops_paper=pl.when(pl.col("point").str.contains("dvts")).then(4.0).otherwise(pl.col("flops_paper"))),
        points, strategies)
    row = t.filter(convention="paper", selection="weighted_majority", comparator="rebase").row(0, named=True)
    assert row["match"] == "exact" and row["comparator_points"] == "m/rebase_weighted_majority[vh,last]@4"
    # a comparator on other problems only: not testable, and said so
    other = candidates.with_columns(problem_id=pl.when(pl.col("point").str.contains("beam"))
                                    .then(pl.lit("q") + pl.col("problem_id")).otherwise(pl.col("problem_id")))
    row = search_compare.compare(other, points, strategies).filter(
        convention="paper", selection="weighted_majority", comparator="beam").row(0, named=True)
    assert row["match"] == "none" and row["verdict"] == "not testable: no common problems"


def test_compare_at_matched_flops():
    candidates, points, strategies = frames()
    t = search_compare.compare(candidates, points, strategies)
    row = t.filter(convention="paper", selection="weighted_majority", comparator="rebase").row(0, named=True)
    # dvts costs 3: halfway between rebase@2 (2) and rebase@4 (4): the 0.5 / 0.5 mixture
    assert row["match"] == "mixture"
    assert row["comparator_points"] == "0.50 x m/rebase_weighted_majority[vh,last]@2 + 0.50 x m/rebase_weighted_majority[vh,last]@4"
    assert row["comparator_flops"] == pytest.approx(3.0) and row["flops_ratio"] == pytest.approx(1.0)
    dvts = np.array([1, 1, 1, 1, 0, 0, 1, 0], float)
    mix = 0.5 * np.array([1, 0, 0, 1, 0, 0, 0, 0]) + 0.5 * np.array([1, 1, 0, 1, 0, 1, 0, 0])
    expect = stats.contrast(dvts - mix)
    assert row["diff"] == pytest.approx(expect.diff) and row["ci_low"] == pytest.approx(expect.ci_low)
    assert row["accuracy_subject"] == pytest.approx(dvts.mean()) and row["accuracy_comparator"] == pytest.approx(mix.mean())
    assert row["num_problems"] == 8 and row["verdict"].startswith("no difference detected at 8")
    # the FLOPs REBASE needs to reach dvts' 0.625: rebase@4 (cost 4) reaches only 0.5, so
    # more than its costliest point, 4 / 3 (censored), as matched_compute.flops_ratio says
    assert row["needed_censored"] == "more than" and row["needed_ratio"] == pytest.approx(4 / 3)
    assert row["needed_ci_low"] <= row["needed_ratio"] <= row["needed_ci_high"]
    # beam@4 costs 5 > 3: no beam run costs 3, so its nearest point, not matched
    beam = t.filter(convention="paper", selection="weighted_majority", comparator="beam").row(0, named=True)
    assert beam["match"] == "nearest" and beam["flops_ratio"] == pytest.approx(5 / 3)
    assert beam["verdict"] == "not matched (comparator 1.67x the FLOPs)"
    assert beam["needed_ratio"] is None  # one beam point is no curve
    # sampling: weighted majority @2 / @4 (0.6, 0.7) mixed 0.5 / 0.5 -> 0.65 per problem
    samp = t.filter(convention="paper", selection="weighted_majority", comparator="sampling").row(0, named=True)
    assert samp["accuracy_comparator"] == pytest.approx(0.65) and samp["match"] == "mixture"
    # sampling reaches 0.625 between @2 (0.6, cost 2) and @4 (0.7, cost 4): at cost 2.5, 2.5 / 3
    assert samp["needed_censored"] == "" and samp["needed_ratio"] == pytest.approx(2.5 / 3)
    # majority: the search's majority (PRM in its name) meets sampling's majority (no PRM)
    maj = t.filter(convention="paper", selection="majority", comparator="sampling").row(0, named=True)
    assert maj["accuracy_comparator"] == pytest.approx(0.5 * 0.25 + 0.5 * 0.5)
    # the full convention scales every cost by 3 here: the same matches
    full = t.filter(convention="full", selection="weighted_majority", comparator="rebase").row(0, named=True)
    assert full["diff"] == pytest.approx(row["diff"]) and full["subject_flops"] == pytest.approx(9.0)
    # only the subjects (dvts) are compared, never rebase against beam
    assert set(t["subject"].str.extract(r"/(\w+?)_")) == {"dvts"}


def test_compare_verdicts_and_monte_carlo_variance():
    candidates, points, strategies = frames()
    # a subject better on every problem by 1 beats the mixture; Monte Carlo SEs widen it
    better = candidates.with_columns(
        accuracy=pl.when(pl.col("point").str.contains("dvts_weighted")).then(1.0).otherwise(pl.col("accuracy")),
        accuracy_se=pl.when(pl.col("point").str.contains("rebase_weighted")).then(0.1).otherwise(0.0))
    t = search_compare.compare(better, points, strategies)
    row = t.filter(convention="paper", selection="weighted_majority", comparator="rebase").row(0, named=True)
    lo = np.array([1, 0, 0, 1, 0, 0, 0, 0], float)
    hi = np.array([1, 1, 0, 1, 0, 1, 0, 0], float)
    d = 1.0 - (0.5 * lo + 0.5 * hi)
    expect = stats.contrast(d, np.full(8, 0.25 * 0.01 + 0.25 * 0.01))
    assert row["diff_se"] == pytest.approx(expect.diff_se) and row["verdict"] == "better"
    assert math.isclose(row["p_value"], expect.p_value, rel_tol=1e-9)
    # beam@4 costs 5/3 of dvts: not matched, but dvts beats it with fewer FLOPs
    beam = t.filter(convention="paper", selection="weighted_majority", comparator="beam").row(0, named=True)
    assert beam["match"] == "nearest" and beam["ci_low"] > 0 and beam["verdict"] == "better with fewer FLOPs"
    assert search_compare.verdict("nearest", stats.contrast([-1.0] * 8), 0.5) == "worse with more FLOPs"
    assert search_compare.verdict("nearest", stats.contrast([-1.0] * 8), 2.0).startswith("not matched")


def test_summary_section():
    candidates, points, strategies = frames()
    t = search_compare.compare(candidates, points, strategies)
    lines = search_compare.summary_lines(t, "arith", report.markdown_table)
    text = "\n".join(lines)
    assert "at matched FLOPs" in lines[0] and "0.50 x m/rebase_weighted_majority[vh,last]@2" in text
    assert "not matched" in text and "> 1.33 [" in text and "| 0.83 [" in text
    assert search_compare.summary_lines(t, "gsm8k", report.markdown_table) == []
    assert search_compare.summary_lines(None, "arith", report.markdown_table) == []
