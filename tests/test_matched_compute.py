"""pipeline.analysis.matched_compute: a point against a curve at matched FLOPs (the mixture
of adjacent curve points), the FLOPs ratio with its censoring, and the coverage of the
ratio's bootstrap interval by simulation."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from pipeline.analysis import matched_compute as mc

NS = (1, 2, 4, 8, 16)


def rows_for(curve_acc: dict[int, np.ndarray], point_acc: np.ndarray, point_cost: float, se: float = 0.0):
    q = len(point_acc)
    rows = [{"point": f"m@{n}", "problem_id": f"p{i:02d}", "accuracy": float(a[i]), "accuracy_se": 0.0,
             "flops_paper": 1e9 * n} for n, a in curve_acc.items() for i in range(q)]
    rows += [{"point": "r@4", "problem_id": f"p{i:02d}", "accuracy": float(point_acc[i]), "accuracy_se": se,
              "flops_paper": point_cost} for i in range(q)]
    return pl.DataFrame(rows)


def test_matched_difference_is_the_mixture_of_adjacent_points():
    rng = np.random.default_rng(0)
    curve = {n: rng.random(50) for n in NS}
    point = rng.random(50)
    rows = rows_for(curve, point, 5e9, se=0.01)
    m = mc.matched_difference(rows, "r@4", [f"m@{n}" for n in NS])
    # 5e9 FLOPs: 3/4 of m@4 (4e9) and 1/4 of m@8 (8e9)
    assert m.mixture == "0.75 x m@4 + 0.25 x m@8" and m.flops == pytest.approx(5e9)
    d = point - (0.75 * curve[4] + 0.25 * curve[8])
    assert m.paired.diff == pytest.approx(d.mean())
    assert m.paired.diff_se == pytest.approx(math.sqrt(d.var(ddof=1) / 50 + 0.01**2 / 50))
    # outside the curve's range: no match, and why
    far = mc.matched_difference(rows_for(curve, point, 3e10), "r@4", [f"m@{n}" for n in NS])
    assert not far.paired.testable() and "beyond the curve's costliest point" in far.paired.reason


def test_flops_ratio_inverts_the_curve_and_says_when_censored():
    q = 40
    curve = {n: np.full(q, a) for n, a in zip(NS, (0.2, 0.24, 0.3, 0.34, 0.37))}
    curve = {n: (np.arange(q) < round(a[0] * q)).astype(float) for n, a in curve.items()}
    # the point solves 13 of 40 (0.325): the curve reaches it between m@4 (0.3) and m@8 (0.35 = 14/40)
    point = (np.arange(q) < 13).astype(float)
    r = mc.flops_ratio(rows_for(curve, point, 3e9), "r@4", [f"m@{n}" for n in NS], resamples=200)
    a4, a8 = curve[4].mean(), curve[8].mean()
    need = 4e9 + (0.325 - a4) / (a8 - a4) * 4e9
    assert r.censored == "" and r.ratio == pytest.approx(need / 3e9) and r.ci_low <= r.ratio <= r.ci_high
    # better than every curve point: a lower bound, interval unbounded above
    best = mc.flops_ratio(rows_for(curve, np.ones(q), 3e9), "r@4", [f"m@{n}" for n in NS], resamples=200)
    assert best.censored == "more than" and best.ratio == pytest.approx(16e9 / 3e9) and best.ci_high == math.inf
    # no better than the cheapest curve point: an upper bound, interval down to 0
    worst = mc.flops_ratio(rows_for(curve, np.zeros(q), 3e9), "r@4", [f"m@{n}" for n in NS], resamples=200)
    assert worst.censored == "at most" and worst.ratio == pytest.approx(1e9 / 3e9) and worst.ci_low == 0.0


def test_flops_ratio_interval_covers_by_simulation():
    """1000 data sets of 64 problems (outcomes correlated across points through a shared
    problem difficulty): the true ratio is 2 (the curve's true accuracy reaches the point's
    0.32 at 6e9 FLOPs; the point costs 3e9). The percentile bootstrap covers it 94.1% of
    the time (nominal 95%; the coverage estimate's SE is 0.007)."""
    rng = np.random.default_rng(1)
    true_acc = dict(zip(NS, (0.20, 0.24, 0.30, 0.34, 0.37)))
    sims, q, hits = 1000, 64, 0
    for s in range(sims):
        u = rng.random(q)

        def draw(p):
            return (np.where(rng.random(q) < 0.5, u, rng.random(q)) < p).astype(float)

        curve = {n: draw(true_acc[n]) for n in NS}
        r = mc.flops_ratio(rows_for(curve, draw(0.32), 3e9), "r@4", [f"m@{n}" for n in NS], resamples=1000, seed=s)
        hits += r.ci_low <= 2.0 <= r.ci_high
    assert hits / sims >= 0.92, hits / sims
