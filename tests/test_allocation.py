"""Difficulty-adaptive allocation: the exact knapsack against brute force, the probe's
conditional accuracies against enumeration and pipeline.replay, costs, cross-fitted
evaluation on synthetic cases (a real gain, and none when difficulty is noise), and the
whole replay from tables built by the real replay estimators."""

from __future__ import annotations

import contextlib
import io
import itertools
import math

import numpy as np
import polars as pl
import pytest

from pipeline import aggregate
from pipeline.analysis import (
    allocation,
    difficulty,
    figures,
    knapsack,
    policies,
    report,
    stats,
)
from pipeline.analysis.point_grid import cost_matrix, point_grid
from pipeline.strategies import selection as replay_prm
from pipeline.strategies import voting

# ------------------------------------------------------------------ the knapsack


def brute_choice(values, costs, budget):
    """Best assignment by enumeration: max value, then min cost, then the
    lexicographically first tuple; None when nothing fits."""
    best = None
    for combo in itertools.product(*[range(len(v)) for v in values]):
        c = sum(costs[b][j] for b, j in enumerate(combo))
        v = sum(values[b][j] for b, j in enumerate(combo))
        if c > budget:
            continue
        key = (-v, c, combo)
        if best is None or key < best[0]:
            best = (key, combo, v, c)
    return None if best is None else best[1:]


def brute_front(values, costs):
    sums = {(sum(costs[b][j] for b, j in enumerate(combo)), sum(values[b][j] for b, j in enumerate(combo)))
            for combo in itertools.product(*[range(len(v)) for v in values])}
    return sorted((c, v) for c, v in sums
                  if not any(c2 <= c and v2 >= v and (c2, v2) != (c, v) for c2, v2 in sums))


def test_knapsack_equals_brute_force_on_random_instances():
    rng = np.random.default_rng(0)
    for _ in range(300):
        groups = int(rng.integers(1, 5))
        # values in eighths and integer costs: sums are exact, so ties are real ties
        values = [rng.integers(0, 9, size=int(rng.integers(1, 6))) / 8 for _ in range(groups)]
        costs = [rng.integers(0, 6, size=v.size).astype(float) for v in values]
        front = knapsack.pareto_assignments(values, costs)
        assert list(zip(front.cost.tolist(), front.value.tolist())) == brute_front(values, costs)
        for budget in [-1.0, *np.unique(front.cost).tolist(), *rng.uniform(0, 20, size=3).tolist()]:
            s = knapsack.choose(front, budget)
            expect = brute_choice(values, costs, budget)
            if expect is None:
                assert s is None
                continue
            combo, v, c = expect
            assert tuple(front.choice[s].tolist()) == combo
            assert front.value[s] == v and front.cost[s] == c


def test_knapsack_with_continuous_values_and_a_cost_cap():
    rng = np.random.default_rng(1)
    for _ in range(100):
        values = [rng.random(int(rng.integers(1, 5))) for _ in range(3)]
        costs = [rng.random(v.size) * 10 for v in values]
        cap = float(rng.uniform(5, 25))
        front = knapsack.pareto_assignments(values, costs, max_cost=cap)
        assert (np.diff(front.cost) > 0).all() and (np.diff(front.value) > 0).all()
        for budget in rng.uniform(0, cap, size=5):
            s = knapsack.choose(front, budget)
            expect = brute_choice(values, costs, budget)
            if expect is None:
                assert s is None
            else:
                assert front.value[s] == pytest.approx(expect[1], abs=1e-12)
                assert front.cost[s] <= budget * (1 + 1e-9)


def test_knapsack_rejects_malformed_groups():
    with pytest.raises(ValueError, match="equal-length"):
        knapsack.pareto_assignments([np.ones(2)], [np.ones(3)])
    with pytest.raises(ValueError, match="equal-length"):
        knapsack.pareto_assignments([np.ones(0)], [np.ones(0)])


# ------------------------------------------------------------------ difficulty and bins


def test_bin_edges_give_nonempty_quantile_bins():
    rng = np.random.default_rng(2)
    for _ in range(200):
        m = int(rng.integers(1, 40))
        vals = rng.integers(0, int(rng.integers(1, 8)), size=m).astype(float)  # many ties
        bins = int(rng.integers(1, 7))
        edges = difficulty.bin_edges(vals, bins)
        b = difficulty.assign_bins(vals, edges)
        assert edges.size + 1 <= bins
        assert set(b.tolist()) == set(range(edges.size + 1))  # every bin holds training values
        # order preserving: a larger value never lands in a lower bin
        order = np.argsort(vals, kind="stable")
        assert (np.diff(b[order]) >= 0).all()
    # distinct values: equal-size bins
    b = difficulty.assign_bins(np.arange(10.0), difficulty.bin_edges(np.arange(10.0), 5))
    assert np.bincount(b).tolist() == [2, 2, 2, 2, 2]


def test_fit_difficulty_uses_training_rows_only():
    rng = np.random.default_rng(3)
    X = rng.random((30, 2))
    y = 0.2 + 0.5 * X[:, 0] + rng.normal(0, 0.05, 30)
    train = np.arange(30) < 20
    d1 = difficulty.fit_difficulty(X, y, train)
    y2 = y.copy()
    y2[~train] = rng.random(10)  # held-out targets must not matter
    assert np.array_equal(d1, difficulty.fit_difficulty(X, y2, train))
    assert np.corrcoef(d1, X[:, 0])[0, 1] < -0.9  # more agreement, easier


def _samples(classes, correct_classes, weights=None, problems=None):
    cls = np.asarray(classes, dtype=np.int64)
    ok = np.isin(cls, correct_classes) & (cls >= 0)
    problems = problems or [f"p{i}" for i in range(cls.shape[0])]
    return difficulty.Samples(problems, cls, ok, weights or {})


def test_probe_features_by_hand():
    s = _samples([[0, 0, 1, -1, 2, 2], [-1, -1, -1, -1, 0, 0], [3, 1, 2, 0, 0, 0]], [0],
                 {("v", "last"): np.array([[0.5, 0.7, 0.1, 0.0, 1, 1], [0, 0, 0, 0, 1, 1], [1, 1, 1, 1, 0, 0.0]])})
    f = difficulty.probe_features(s, k=4, prm="v", aggregation="last")
    assert f["agreement"].to_list() == [0.5, 0.0, 0.25]
    assert f["prm_mean"].to_list() == pytest.approx([0.325, 0.0, 1.0])
    assert f["pass1"].to_list() == pytest.approx([2 / 6, 2 / 6, 3 / 6])
    assert difficulty.probe_features(s, k=4)["prm_mean"].null_count() == 3
    with pytest.raises(ValueError, match="k=7"):
        difficulty.probe_features(s, k=7)


def _random_problem(rng, N):
    cls = rng.integers(-1, 4, size=N)
    good_class = int(rng.integers(0, 4))
    scores = rng.choice([0.1, 0.4, 0.4, 0.8, 0.9], size=N)  # ties in scores too
    return cls, good_class, scores


def _points(rows):
    df = pl.DataFrame(rows, schema={"strategy": pl.String, "prm": pl.String, "aggregation": pl.String,
                                    "n": pl.Int32}, orient="row")
    return df.with_row_index("j").with_columns(sampling=pl.lit(True), label=pl.lit("x"))


def test_conditional_accuracy_without_probe_equals_replay_estimators():
    rng = np.random.default_rng(4)
    N = 8
    for _ in range(20):
        cls, good_class, scores = _random_problem(rng, N)
        s = _samples([cls], [good_class], {("v", "last"): scores[None, :]})
        pts = _points([(st, p, a, n) for n in range(1, N + 1) for st, p, a in
                       (("majority", None, None), ("best_of_n", "v", "last"), ("weighted_majority", "v", "last"))])
        acc, se = difficulty.conditional_accuracy(s, pts, k=0)
        assert (se == 0).all()
        sizes = [int((cls == c).sum()) for c in range(4)]
        ok = s.correct[0]
        good = np.zeros(4, dtype=bool)
        good[good_class] = True
        for j, (st, n) in enumerate(pts.select("strategy", "n").rows()):
            if st == "majority":
                expect = voting.majority_accuracy(sizes, good_class, int((cls < 0).sum()), n)
            elif st == "best_of_n":
                expect = replay_prm.best_of_n_accuracy(scores, ok, n)
            else:
                expect = replay_prm.weighted_majority_accuracy(scores, cls, good, n)[0]
            assert acc[0, j] == pytest.approx(expect, abs=1e-12), (st, n)


def brute_conditional(cls, ok, scores, strategy, k, n):
    """Average outcome over what a point at n votes over given the probe 0..k-1."""
    N = len(cls)
    subsets = ([tuple(range(k)) + rest for rest in itertools.combinations(range(k, N), n - k)] if n >= k
               else list(itertools.combinations(range(k), n)))
    total = 0.0
    for sub in subsets:
        if strategy == "best_of_n":
            top = max(scores[i] for i in sub)
            tied = [i for i in sub if scores[i] == top]
            total += sum(ok[i] for i in tied) / len(tied)
            continue
        votes: dict[int, float] = {}
        for i in sorted(sub):
            if cls[i] >= 0:
                votes[cls[i]] = votes.get(cls[i], 0.0) + (scores[i] if strategy == "weighted_majority" else 1.0)
        if votes:
            top = max(votes.values())
            tied = [c for c, v in votes.items() if v == top]
            total += sum(any(ok[i] for i in range(N) if cls[i] == c) for c in tied) / len(tied)
    return total / len(subsets)


def test_conditional_accuracy_equals_enumeration_given_the_probe():
    rng = np.random.default_rng(5)
    N, k = 9, 3
    for _ in range(15):
        cls, good_class, scores = _random_problem(rng, N)
        s = _samples([cls], [good_class], {("v", "min"): scores[None, :]})
        rows = [(st, p, a, n) for n in range(1, N + 1) for st, p, a in
                (("majority", None, None), ("best_of_n", "v", "min"), ("weighted_majority", "v", "min"))]
        acc, _ = difficulty.conditional_accuracy(s, _points(rows), k=k)
        for j, (st, _p, _a, n) in enumerate(rows):
            expect = brute_conditional(cls.tolist(), s.correct[0].tolist(), scores.tolist(), st, k, n)
            assert acc[0, j] == pytest.approx(expect, abs=1e-12), (st, n)


def test_conditional_accuracy_monte_carlo_is_within_its_error():
    rng = np.random.default_rng(6)
    N, k = 14, 2
    cls, good_class, scores = _random_problem(rng, N)
    s = _samples([cls], [good_class], {("v", "last"): scores[None, :]})
    pts = _points([("majority", None, None, 8), ("weighted_majority", "v", "last", 7)])
    exact, _ = difficulty.conditional_accuracy(s, pts, k=k)
    mc, se = difficulty.conditional_accuracy(s, pts, k=k, exact_limit=10, num_draws=4000, seed=3)
    assert se.max() > 0  # Monte Carlo (an outcome that never varies has SE 0)
    assert np.all(np.abs(mc - exact) < 4 * se + 1e-9)
    again, _ = difficulty.conditional_accuracy(s, pts, k=k, exact_limit=10, num_draws=4000, seed=3)
    assert np.array_equal(mc, again)  # seeded


# ------------------------------------------------------------------ points and costs


def _row(strategy, n, acc, cost_paper, cost_full, prm=None, agg=None, pid="a"):
    return {"problem_id": pid, "prm": prm, "aggregation": agg, "strategy": strategy, "n": n,
            "accuracy": acc, "accuracy_se": 0.0, "flops_paper": cost_paper, "flops_full": cost_full}


def test_point_grid_filters_and_checks():
    rows = []
    for pid in ("a", "b"):
        rows += [_row("majority", n, 0.5, 10 * n, 11 * n, pid=pid) for n in (1, 2)]
        rows += [_row("coverage", 2, 0.9, 20, 22, pid=pid)]
        rows += [_row("best_of_n", 2, 0.6, 20, 30, "v", agg, pid=pid) for agg in ("last", "min")]
    rows += [_row("rebase_majority", 4, 0.7, 50, 60, "v", None, pid="a")]  # covers one problem only
    # the adaptive policies of a finished database are no candidates of their own
    rows += [_row(s, 70, 0.8, 25, 30, "v", None, pid=pid) for s in ("adaptive_paper", "adaptive_oracle_full")
             for pid in ("a", "b")]
    df = pl.DataFrame(rows)
    with contextlib.redirect_stderr(io.StringIO()) as err:
        grid = point_grid(df, ["a", "b"])
    assert "1 point(s) left out" in err.getvalue()
    assert grid.points["label"].to_list() == ["majority@1", "majority@2", "best_of_n@2 [v, last]"]
    assert grid.accuracy.shape == (2, 3) and grid.cost["full"][0].tolist() == [11, 22, 30]
    assert point_grid(df, ["a", "b"], aggregations=None).points.height == 4
    with pytest.raises(ValueError, match="duplicate replay row"):
        point_grid(pl.concat([df, df.head(1)]), ["a", "b"])


def test_cost_matrix_counts_the_probe_once():
    # per sample: policy 10 (paper) / 12 (full); PRM "v" 3 per sample in full, 0 in paper
    rows = [_row("majority", n, 0.5, 10 * n, 12 * n) for n in (1, 2, 4)]
    rows += [_row("best_of_n", n, 0.6, 10 * n, 15 * n, "v", "last") for n in (1, 4)]
    rows += [_row("best_of_n", 4, 0.6, 40, 4 * 16, "w", "last")]  # another PRM: 4 per sample
    rows += [_row("greedy", 1, 0.5, 9, 11), _row("rebase_majority", 4, 0.7, 50, 70, "v")]
    grid = point_grid(pl.DataFrame(rows), ["a"])
    labels = grid.points["label"].to_list()
    full = dict(zip(labels, cost_matrix(grid, "full", k=2, probe_prm="v")[0]))
    probe = 2 * (12 + 3)
    assert full["majority@1"] == pytest.approx(probe)
    assert full["majority@4"] == pytest.approx(probe + 2 * 12)
    assert full["best_of_n@1 [v, last]"] == pytest.approx(probe)
    assert full["best_of_n@4 [v, last]"] == pytest.approx(4 * 15)  # reuses the probe: replay's cost
    assert full["best_of_n@4 [w, last]"] == pytest.approx(probe + 2 * 12 + 4 * 4)
    assert full["greedy"] == pytest.approx(probe + 11)
    assert full["rebase_majority@4 [v]"] == pytest.approx(probe + 70)
    paper = dict(zip(labels, cost_matrix(grid, "paper", k=2, probe_prm="v")[0]))
    assert paper["majority@1"] == paper["best_of_n@1 [v, last]"] == pytest.approx(20)
    assert paper["best_of_n@4 [v, last]"] == pytest.approx(40)
    # a probe that reads no PRM: a PRM point pays for all its n samples' scores
    none = dict(zip(labels, cost_matrix(grid, "full", k=2, probe_prm=None)[0]))
    assert none["majority@4"] == pytest.approx(48)
    assert none["best_of_n@4 [v, last]"] == pytest.approx(2 * 12 + 2 * 12 + 4 * 3)


# ------------------------------------------------------------------ cross-fitted evaluation


def test_savings_by_hand():
    # the adaptive curve reaches each fixed accuracy at half the cost
    acc_f = np.array([[0.2, 0.4, 0.6]] * 3).T  # budgets x problems
    cost_f = np.array([[1.0, 2.0, 4.0]] * 3).T
    sav, lo, hi = policies.savings(acc_f, cost_f / 2, acc_f, cost_f, reps=200)
    assert sav.tolist() == [2.0, 2.0, 2.0] and lo.tolist() == [2.0] * 3 and hi.tolist() == [2.0] * 3
    sav, lo, _ = policies.savings(acc_f * 0, cost_f, acc_f, cost_f, reps=50)
    assert np.isnan(sav).all() and (lo == 0).all()
    # a fixed choice that does worse at the top budget does not lower the target
    acc_f = np.array([[0.2, 0.6, 0.4]] * 3).T
    target_a, target_c = policies.fixed_targets(acc_f.mean(axis=1), cost_f.mean(axis=1))
    assert target_a.tolist() == pytest.approx([0.2, 0.6, 0.6]) and target_c.tolist() == [1.0, 2.0, 2.0]
    sav, _, _ = policies.savings(acc_f, cost_f / 2, acc_f, cost_f, reps=10)
    assert sav.tolist() == pytest.approx([2.0, 2.0, 2.0])


def _easy_hard_case(rng, m=200):
    """Half the problems easy, half hard; three points of equal cost on every problem:
    cheap (1): easy 0.9 / hard 0.1, mid (4): 0.9 / 0.35, search (6): 0.5 / 0.75.
    Easy problems want the cheap point, hard ones the search; the feature is the true
    difficulty plus noise."""
    hard = np.arange(m) % 2 == 1
    means = np.where(hard[:, None], [0.1, 0.35, 0.75], [0.9, 0.9, 0.5])
    acc = np.clip(means + rng.normal(0, 0.15, size=(m, 3)), 0, 1)
    cost = np.broadcast_to([1.0, 4.0, 6.0], (m, 3)).copy()
    feature = hard + rng.normal(0, 0.3, size=m)
    return acc, cost, feature


def test_adaptive_beats_every_fixed_point_when_difficulty_matters():
    rng = np.random.default_rng(7)
    acc, cost, feature = _easy_hard_case(rng)
    folds = np.arange(acc.shape[0]) % 4
    budgets = np.array([3.5])
    ad = policies.cross_fit(acc, cost, folds, budgets, difficulty=lambda train: feature, bins=2)
    fx = policies.cross_fit(acc, cost, folds, budgets, difficulty=None)
    held_cost = ad.cost[0].mean()
    assert held_cost <= 3.5 * 1.05  # within the budget on held-out problems too
    assert ad.accuracy[0].mean() > 0.75
    for j in range(3):  # every fixed point, whatever it costs
        assert stats.paired(ad.accuracy[0], acc[:, j]).ci_low > 0, j
    assert stats.paired(ad.accuracy[0], fx.accuracy[0]).ci_low > 0
    mix, _, _, mix_se = policies.cross_fit_mixture(acc, cost, folds, budgets)
    assert (mix_se == 0).all()
    assert stats.paired(ad.accuracy[0], mix[0]).ci_low > 0
    assert ad.in_sample.choices[0].tolist() == [0, 2]  # easy bin: cheap, hard bin: search
    # the FLOPs saving at the best fixed point's accuracy (0.625 at 4 or 6) is real:
    # cheap + mid reach it at 2.5, cheap + search beat it at 3.5
    budgets = np.array([1.0, 2.5, 3.5, 4.0, 6.0])
    ad = policies.cross_fit(acc, cost, folds, budgets, difficulty=lambda train: feature, bins=2)
    fx = policies.cross_fit(acc, cost, folds, budgets, difficulty=None)
    sav, lo, _ = policies.savings(ad.accuracy, ad.cost, fx.accuracy, fx.cost, reps=300)
    assert sav[-1] > 1.1 and lo[-1] > 1.0


def test_no_gain_on_held_out_folds_when_difficulty_is_noise():
    """Accuracies do not depend on the feature, so the bins are noise. Between two fixed
    points' costs any split of the problems fills the budget (a mix of the two points),
    so the adaptive policy is compared with the best such mix (`cross_fit_mixture`), and
    at a budget on a fixed point's cost also with that point. Held out, the gain is
    zero on average (it may be a loss); in sample it is visibly positive."""
    rng = np.random.default_rng(8)
    held_mix, held_point, inside, excludes = [], [], [], 0
    sims = 60
    for _ in range(sims):
        m = 80
        acc = rng.beta(2, 2, size=(m, 4)) * np.array([0.6, 0.8, 0.9, 1.0])
        cost = np.broadcast_to([1.0, 2.0, 4.0, 8.0], (m, 4)).copy()
        feature = rng.random(m)
        folds = rng.permutation(m) % 4
        budgets = np.array([3.0, 4.0])
        ad = policies.cross_fit(acc, cost, folds, budgets, difficulty=lambda train, f=feature: f, bins=5)
        fx = policies.cross_fit(acc, cost, folds, budgets, difficulty=None)
        mix, _, ok, _ = policies.cross_fit_mixture(acc, cost, folds, budgets)
        assert ok.all()
        d = stats.paired(ad.accuracy[0], mix[0])
        held_mix.append(d.diff)
        excludes += d.ci_low > 0
        held_point.append(stats.paired(ad.accuracy[1], fx.accuracy[1]).diff)
        inside.append(ad.in_sample_accuracy[0] - fx.in_sample_accuracy[0])
    for held in (np.array(held_mix), np.array(held_point)):
        assert held.mean() < 2 * held.std(ddof=1) / math.sqrt(sims)  # no gain
    assert excludes <= 0.1 * sims  # a "significant gain" no more often than chance allows
    assert np.mean(inside) > 0.01 and np.mean(inside) > np.mean(held_mix) + 0.01


def test_hull_mixture_by_hand():
    acc = np.array([0.3, 0.4, 0.35, 0.5])  # the third is below the chord of its neighbours
    cost = np.array([1.0, 2.0, 3.0, 6.0])
    first, second, w = policies.hull_mixtures(acc, cost, np.array([0.5, 1.0, 4.0, 10.0]))
    assert first.tolist() == [-1, 0, 1, 3] and second.tolist() == [-1, 1, 3, 3]
    assert w[1] == pytest.approx(1.0) and w[2] == pytest.approx(0.5)
    # held out: the mixture's Monte Carlo SE from its two points' (independent draws)
    acc, cost = np.tile([0.3, 0.5], (4, 1)), np.tile([1.0, 3.0], (4, 1))
    se = np.tile([0.1, 0.2], (4, 1))
    a, c, ok, s = policies.cross_fit_mixture(acc, cost, np.array([0, 1, 0, 1]), np.array([2.0, 5.0]), se)
    assert ok.all() and a[0] == pytest.approx([0.4] * 4) and c[0] == pytest.approx([2.0] * 4)
    assert s[0] == pytest.approx([math.sqrt(0.25 * 0.01 + 0.25 * 0.04)] * 4)
    assert s[1] == pytest.approx([0.2] * 4)  # the costliest point alone


# ------------------------------------------------------------------ the whole replay


def synthetic_tables(seed=0, m=48, N=12, dataset="d", model="toy"):
    """Grades, PRM scores and replay rows made by the real replay estimators: problem i
    is solved with probability q_i; the PRM's last step score leans towards correct
    samples; a tree-search point does a bit better than majority@8 at 4 samples' cost."""
    rng = np.random.default_rng(seed)
    grades, scores, tokens = [], [], []
    q = rng.uniform(0.05, 0.95, size=m)
    for i in range(m):
        for s in range(N):
            u = rng.random()
            cls = -1 if u < 0.05 else 0 if u < 0.05 + 0.95 * q[i] else int(rng.integers(1, 5))
            pid = f"p{i:03d}"
            grades.append((pid, s, None if cls < 0 else str(cls), cls, cls == 0))
            last = float(1 / (1 + np.exp(-(rng.normal() + 1.5 * (cls == 0) - 0.5))))
            scores.append((pid, s, [float(rng.uniform(0.3, 0.9)), last] if cls >= 0 else [], 40))
            tokens.append(("sampled", pid, s, 30, int(rng.integers(20, 60))))
    g = pl.DataFrame(grades, schema={"problem_id": pl.String, "sample_idx": pl.Int32, "answer": pl.String,
                                     "answer_class": pl.Int32, "correct": pl.Boolean}, orient="row")
    sc = pl.DataFrame(scores, schema={"problem_id": pl.String, "sample_idx": pl.Int32,
                                      "scores": pl.List(pl.Float64), "prm_tokens": pl.Int32}, orient="row")
    tok = pl.DataFrame(tokens, schema=["source", "problem_id", "sample_idx", "prompt_tokens", "output_tokens"],
                       orient="row")
    with contextlib.redirect_stderr(io.StringIO()):
        r1 = voting.replay(g, None, tok, params=1_000_000)
        steps = sc.select("problem_id", "sample_idx", pl.when(pl.col("scores").list.len() == 0)
                          .then(pl.lit([0.0], pl.List(pl.Float64))).otherwise(pl.col("scores")).alias("scores"))
        r2 = replay_prm.replay_prm(g, steps, tok, params=1_000_000, prm="v", prm_params=500_000,
                               prm_tokens=sc.select("problem_id", "sample_idx", "prm_tokens"))
    search = r1.filter((pl.col("strategy") == "majority") & (pl.col("n") == 8)).with_columns(
        strategy=pl.lit("rebase_majority"), prm=pl.lit("v"), aggregation=pl.lit(None, pl.String),
        accuracy=(pl.col("accuracy") + 0.1).clip(0, 1), n=pl.lit(4, pl.Int32),
        flops_paper=pl.col("flops_paper") / 2, flops_full=pl.col("flops_full") / 2)
    tags = {"dataset": pl.lit(dataset), "model": pl.lit(model)}
    return {
        "replay": aggregate._replay_table([pl.concat([r1, r2, search], how="diagonal_relaxed").with_columns(**tags)]),
        "grades": g.with_columns(**tags, kind=pl.lit("sampled"), key=pl.lit("k")),
        "scores": sc.with_columns(**tags, key=pl.lit("k"), prm=pl.lit("v"), prm_params=pl.lit(500_000)),
    }


@pytest.fixture(scope="module")
def tables():
    return synthetic_tables()


def test_allocate_frames(tables, tmp_path):
    folds = stats.folds_table(tables["grades"].select("dataset", "problem_id"), 4, 0)
    res = allocation.allocate(tables, folds=folds, bootstrap=200)
    s = res.summary
    assert s.schema == pl.Schema(allocation.SUMMARY_SCHEMA)
    assert set(s["source"]) == {"predicted", "oracle"} and set(s["convention"]) == {"paper", "full"}
    assert s.filter(pl.col("oracle"))["source"].unique().to_list() == ["oracle"]
    assert (s["num_problems"] == 48).all() and (s["num_folds"] == 4).all()
    assert (s["probe_samples"] == 4).all() and (s["probe_prm"] == "v").all()
    assert s["choices"].str.starts_with("bin1: ").all()
    assert s.filter(pl.col("source") == "predicted")["choices"].str.contains("bin2: ").any()
    # held-out accuracy and the fixed policy's, paired over the same problems (pipeline.analysis.stats)
    p = res.problems
    assert p.schema == pl.Schema(allocation.problems_schema())
    for (source, conv, budget), g in s.group_by(["source", "convention", "budget"]):
        row = g.row(0, named=True)
        ad = p.filter((pl.col("source") == source) & (pl.col("convention") == conv)
                      & (pl.col("budget") == budget) & (pl.col("policy") == "adaptive")).sort("problem_id")
        fx = p.filter(pl.col("source").is_null() & (pl.col("convention") == conv)
                      & (pl.col("budget") == budget)).sort("problem_id")
        assert ad.height == fx.height == 48 and ad["problem_id"].n_unique() == 48
        assert (ad["point"] == row["point"]).all() and fx["point"].is_null().all()
        assert (row["accuracy"], row["accuracy_se"]) == pytest.approx(stats.mean_se(ad["accuracy"], ad["accuracy_se"]))
        assert row["flops"] == pytest.approx(ad["cost"].mean())
        assert row["fixed_accuracy"] == pytest.approx(fx["accuracy"].mean())
        d = stats.paired(ad["accuracy"], fx["accuracy"], ad["accuracy_se"], fx["accuracy_se"])
        assert (row["diff"], row["diff_se"], row["diff_ci_low"], row["diff_ci_high"]) == pytest.approx(
            (d.diff, d.diff_se, d.ci_low, d.ci_high))
        assert row["mix_diff_ci_low"] <= row["mix_diff"] <= row["mix_diff_ci_high"]
    # sampling points given the probe carry a Monte Carlo SE where they are not exact
    assert p.filter(pl.col("policy") == "adaptive")["accuracy_se"].is_not_null().all()
    for conv, col in allocation.CONVENTIONS.items():
        rows = p.filter(pl.col("convention") == conv)
        assert rows["cost"].to_list() == rows[col].to_list()
    # every predicted-policy point pays at least the probe: 4 samples' policy FLOPs and tokens
    one = tables["replay"].filter((pl.col("strategy") == "majority") & (pl.col("n") == 1))
    pred = s.filter((pl.col("source") == "predicted") & (pl.col("convention") == "paper"))
    assert pred["flops"].min() >= 0.9 * 4 * one["flops_paper"].mean()
    adaptive_rows = p.filter(pl.col("policy") == "adaptive")
    assert adaptive_rows["output_tokens"].min() >= 0.5 * 4 * one["output_tokens"].min()
    d = res.difficulty
    assert d.height == 48 and d["oracle"].to_list() == pytest.approx((1 - d["pass1"]).to_list())
    assert d.select(pl.corr("predicted", "oracle")).item() > 0.3  # the probe says something
    # the replay rows: one set of 48 per distinct point, n the budget's grid index
    r = res.replay
    assert r.schema == pl.Schema(allocation.replay_schema())
    labels = r.select(pl.concat_str([pl.col("model"), pl.lit("/"), pl.col("strategy"), pl.lit("[v]@"),
                                     pl.col("n").cast(pl.String)]).alias("x"))["x"]
    assert set(labels) == set(s["point"]) and r.group_by("strategy", "n").len()["len"].unique().to_list() == [48]
    assert set(r["strategy"]) == {"adaptive_paper", "adaptive_full", "adaptive_oracle_paper", "adaptive_oracle_full"}
    for row in s.iter_rows(named=True):
        n = int(row["point"].rsplit("@", 1)[1])
        assert 10 ** (n / 8) <= row["budget"] * (1 + 1e-9)  # the first budget with these choices
    lines = report.adaptive_lines(s)
    assert len(lines) == 1 and "d / toy" in lines[0] and "oracle difficulty" in lines[0]
    assert "95% bootstrap interval" in lines[0]
    out = tmp_path / "adaptive.png"
    figures.adaptive(s, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_allocate_naive_replay_and_given_folds(tables):
    folds = stats.folds_table(tables["grades"].select("dataset", "problem_id"), 2, 5)
    res = allocation.allocate(tables, folds=folds, bootstrap=0, conventions={"paper": "flops_paper"},
                              conditional=False)
    assert (res.summary["num_folds"] == 2).all() and set(res.summary["convention"]) == {"paper"}
    assert res.summary["saving_ci_low"].is_null().all()  # no bootstrap
    with pytest.raises(ValueError, match="no fold for problem"):
        allocation.allocate(tables, folds=folds.head(3), bootstrap=0)
    # without folds: the analysis' seeded split (pipeline.analysis.stats) with num_folds and seed
    a = allocation.allocate(tables, bootstrap=0, num_folds=3, seed=2, conventions={"paper": "flops_paper"})
    b = allocation.allocate(tables, folds=stats.folds_table(tables["grades"].select("dataset", "problem_id"), 3, 2),
                            bootstrap=0, conventions={"paper": "flops_paper"})
    assert a.summary.equals(b.summary)


def test_probe_larger_than_the_cache_is_a_config_error(tables):
    with pytest.raises(ValueError, match="probe_samples = 13 must lie in 1..N = 12"):
        allocation.allocate(tables, probe_samples=13, bootstrap=0)
    config = {"sampling": {"n": 2}, "prms": {"v": {}}, "analysis": {"adaptive": {"probe_samples": 4}}}
    with pytest.raises(ValueError, match="probe_samples = 4 exceeds sampling.n = 2"):
        allocation.check_config(config)
    # a model's own, smaller cache (models.<m>.n) is checked too
    config["sampling"]["n"] = 16
    config["models"] = {"big": {"n": 2}, "small": {}}
    with pytest.raises(ValueError, match="probe_samples = 4 exceeds models.big.n = 2"):
        allocation.check_config(config)
    config["analysis"]["adaptive"] = {"probe_samples": 2, "probe_prm": "w"}
    with pytest.raises(ValueError, match="probe_prm = 'w' is not one of prms"):
        allocation.check_config(config)
    config["analysis"]["adaptive"] = {"enabled": False, "probe_samples": 4}
    allocation.check_config(config)  # off: nothing to check
    with pytest.raises(ValueError, match="unknown key"):
        allocation.settings({"k": 4})


def test_six_problems_five_folds_five_bins_do_not_crash():
    """The embedded tiny workflow's shape: 6 problems, 4 samples, 5 folds (sizes 2, 1, 1,
    1, 1), 5 bins: a training set of 4 or 5 problems gets at most that many bins, each
    holding one at least; every budget row is still held out on all 6 problems."""
    t = synthetic_tables(seed=3, m=6, N=4)
    folds = stats.folds_table(t["grades"].select("dataset", "problem_id"), 5, 0)
    assert sorted(np.bincount(folds["fold"].to_numpy()).tolist()) == [1, 1, 1, 1, 2]
    res = allocation.allocate(t, folds=folds, probe_samples=4, bins=5, bootstrap=100)
    s = res.summary
    assert s.height > 0 and (s["num_problems"] == 6).all() and (s["num_folds"] == 5).all()
    assert (s["num_bins"] <= 5).all() and s["accuracy"].is_not_null().all()
    assert res.replay.group_by("strategy", "n").len()["len"].unique().to_list() == [6]
    assert len(report.adaptive_lines(s)) == 1
    # one problem: no fold to hold out, the dataset is left out (not an error)
    one = {k: v.filter(pl.col("problem_id") == "p000") for k, v in t.items()}
    with contextlib.redirect_stderr(io.StringIO()) as err:
        res = allocation.allocate(one, bootstrap=0)
    assert res.summary.is_empty() and "none to hold out" in err.getvalue()


def test_main_prints_the_table_from_a_database(tables, tmp_path, capsys):
    db = tmp_path / "r.duckdb"
    aggregate.write_duckdb(dict(tables), db, analysis={"folds": 3, "adaptive": {"bins": 3}})
    png = tmp_path / "a.png"
    with contextlib.redirect_stderr(io.StringIO()):
        allocation.main(["--db", str(db), "--plot", str(png), "--bootstrap", "100"])
    out = capsys.readouterr().out
    assert "**d / toy** (paper FLOPs; held out over 3 folds; probe k = 4, 3 difficulty bins)" in out
    assert "**d / toy** (full FLOPs" in out
    assert png.exists()
    # the database's replay holds the adaptive policies: the CLI does not choose among them
    allocation.main(["--db", str(db), "--bins", "2", "--bootstrap", "0"])
    assert "2 difficulty bins" in capsys.readouterr().out
