"""PRM strategies (best-of-n, weighted majority) vs brute-force enumeration; replay_prm()."""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import pytest

from pipeline.core import schemas
from pipeline.strategies.selection import (
    REPLAY_PRM,
    aggregate_steps,
    best_of_n_accuracy,
    best_of_n_curve,
    replay_prm,
    weighted_majority_accuracy,
)
from pipeline.strategies.voting import replay

# ------------------------------------------------------------------ brute force


def brute_best_of_n(scores, correct, n: int) -> float:
    total, num = 0.0, 0
    for subset in itertools.combinations(range(len(scores)), n):
        num += 1
        top = max(scores[i] for i in subset)
        tied = [i for i in subset if scores[i] == top]
        total += sum(bool(correct[i]) for i in tied) / len(tied)
    return total / num


def brute_weighted(scores, answer_class, good, n: int) -> float:
    """Totals summed left to right over the sorted subset, exactly as float64 adds them."""
    total, num = 0.0, 0
    for subset in itertools.combinations(range(len(scores)), n):
        num += 1
        votes: dict[int, float] = {}
        for i in subset:
            c = int(answer_class[i])
            if c >= 0:
                votes[c] = votes.get(c, 0.0) + float(scores[i])
        if not votes:
            continue
        top = max(votes.values())
        tied = [c for c, v in votes.items() if v == top]
        total += sum(bool(good[c]) for c in tied) / len(tied)
    return total / num


def _random_case(rng: np.random.Generator, max_n: int = 9):
    """Scores with ties (dyadic grid, or a coarse non-dyadic grid) or continuous;
    a few answer classes, some unanswered, one or more correct classes (or none)."""
    num = int(rng.integers(1, max_n + 1))
    kind = rng.integers(0, 3)
    if kind == 0:
        scores = rng.integers(0, 5, size=num) / 4.0
    elif kind == 1:
        scores = rng.choice([0.1, 0.2, 0.3, 0.7], size=num)
    else:
        scores = rng.random(num)
    num_classes = int(rng.integers(1, 4))
    answer = rng.integers(-1, num_classes, size=num)
    good = rng.random(num_classes) < 0.4
    correct = np.array([c >= 0 and good[c] for c in answer])
    return scores, answer, good, correct


# ------------------------------------------------------------------ best of n


def test_best_of_n_matches_enumeration_random_cases():
    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(300):
        scores, _answer, _good, correct = _random_case(rng)
        curve = best_of_n_curve(scores, correct, range(1, scores.size + 1))
        for n in range(1, scores.size + 1):
            want = brute_best_of_n(scores, correct, n)
            assert curve[n - 1] == pytest.approx(want, abs=1e-12), (scores, correct, n)
            assert best_of_n_accuracy(scores, correct, n) == pytest.approx(want, abs=1e-12)
            checked += 1
    assert checked > 1000


def test_best_of_n_edges():
    scores = np.array([0.9, 0.1, 0.5, 0.5])
    correct = np.array([False, True, True, False])
    assert best_of_n_accuracy(scores, correct, 1) == pytest.approx(0.5, abs=1e-15)
    assert best_of_n_accuracy(scores, correct, 4) == 0.0  # top sample is wrong
    # all tied: every n picks uniformly -> the fraction correct
    for n in range(1, 5):
        assert best_of_n_accuracy(np.full(4, 0.3), correct, n) == pytest.approx(0.5, abs=1e-15)
    # large N runs and stays a probability; N > 1020 is fine (no binomial overflow)
    rng = np.random.default_rng(0)
    big = rng.random(2000)
    ok = rng.random(2000) < 0.3
    curve = best_of_n_curve(big, ok, [1, 2, 1000, 2000])
    assert np.all((curve >= 0) & (curve <= 1))
    assert curve[0] == pytest.approx(ok.mean(), abs=1e-12)
    assert curve[-1] == float(ok[np.argmax(big)])
    with pytest.raises(ValueError):
        best_of_n_accuracy(scores, correct, 5)
    with pytest.raises(ValueError):
        best_of_n_accuracy(scores, correct, 0)
    with pytest.raises(ValueError, match="index 1"):
        best_of_n_accuracy(np.array([0.1, np.nan]), np.array([True, False]), 1)
    with pytest.raises(ValueError):
        best_of_n_accuracy(np.array([0.1, np.inf]), np.array([True, False]), 1)


# ------------------------------------------------------------------ weighted majority


def test_weighted_majority_exact_matches_enumeration_random_cases():
    rng = np.random.default_rng(11)
    checked = 0
    for _ in range(300):
        scores, answer, good, _correct = _random_case(rng)
        for n in range(1, scores.size + 1):
            got, se = weighted_majority_accuracy(scores, answer, good, n, rng=0, num_draws=10)
            want = brute_weighted(scores, answer, good, n)
            assert se == 0.0
            assert got == pytest.approx(want, abs=1e-12), (scores, answer, good, n)
            checked += 1
    assert checked > 1000


def test_weighted_majority_structured():
    # equal weights -> plain majority; ties between two classes split
    cls = np.array([0, 0, 1, 1, -1])
    assert weighted_majority_accuracy(np.ones(5), cls, [True, False], 5)[0] == 0.5
    # a heavier minority beats a light majority
    s = np.array([0.2, 0.2, 0.9, 0.0])
    assert weighted_majority_accuracy(s, np.array([0, 0, 1, -1]), [False, True], 4)[0] == 1.0
    # zero-weight votes still count as votes: the voted class beats unanswered
    assert weighted_majority_accuracy(np.zeros(3), np.array([0, -1, -1]), [True], 3)[0] == 1.0
    # all unanswered: wrong; no correct class: wrong
    assert weighted_majority_accuracy(np.ones(3), np.array([-1, -1, -1]), [True], 2) == (0.0, 0.0)
    assert weighted_majority_accuracy(np.ones(3), np.array([0, 1, 0]), [False, False], 2) == (0.0, 0.0)
    with pytest.raises(ValueError):
        weighted_majority_accuracy(np.ones(3), np.array([0, 2, 0]), [True, False], 2)
    with pytest.raises(ValueError):
        weighted_majority_accuracy(np.array([0.5, np.nan]), np.array([0, 0]), [True], 1)
    with pytest.raises(ValueError):
        weighted_majority_accuracy(np.ones(3), np.array([0, 0, 0]), [True], 4)


def _mc_case():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 9, size=14) / 8.0  # ties, exactly summable
    answer = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, -1, -1, 1])
    good = np.array([False, True, False])
    return scores, answer, good


def test_weighted_majority_monte_carlo_close_to_exact_and_seeded():
    scores, answer, good = _mc_case()
    n = 7  # C(14, 7) = 3432 subsets
    exact, se0 = weighted_majority_accuracy(scores, answer, good, n, exact_limit=5000)
    assert se0 == 0.0
    assert exact == pytest.approx(brute_weighted(scores, answer, good, n), abs=1e-12)
    assert 0.05 < exact < 0.95  # a case with real spread
    est, se = weighted_majority_accuracy(
        scores, answer, good, n, rng=np.random.default_rng(42), num_draws=4000, exact_limit=100
    )
    assert 0 < se < 0.02
    assert abs(est - exact) <= 4 * se
    again = weighted_majority_accuracy(
        scores, answer, good, n, rng=np.random.default_rng(42), num_draws=4000, exact_limit=100
    )
    assert again == (est, se)
    other = weighted_majority_accuracy(
        scores, answer, good, n, rng=np.random.default_rng(43), num_draws=4000, exact_limit=100
    )
    assert other != (est, se)
    # default exact_limit = 2000 < 3432: Monte Carlo
    assert weighted_majority_accuracy(scores, answer, good, n, rng=1)[1] > 0
    with pytest.raises(ValueError):
        weighted_majority_accuracy(scores, answer, good, n, rng=1, num_draws=1)


# ------------------------------------------------------------------ aggregate_steps


def test_aggregate_steps():
    steps = [[0.5, 0.25, 1.0], [0.75], [1.0, 0.0]]
    np.testing.assert_array_equal(aggregate_steps(steps, "min"), [0.25, 0.75, 0.0])
    np.testing.assert_array_equal(aggregate_steps(steps, "last"), [1.0, 0.75, 0.0])
    np.testing.assert_array_equal(aggregate_steps(steps, "prod"), [0.125, 0.75, 0.0])
    np.testing.assert_allclose(aggregate_steps(steps, "mean"), [1.75 / 3, 0.75, 0.5], rtol=1e-15)
    series = pl.Series("scores", steps, dtype=pl.List(pl.Float64))
    np.testing.assert_array_equal(aggregate_steps(series, "min"), [0.25, 0.75, 0.0])
    assert aggregate_steps([], "mean").shape == (0,)
    assert aggregate_steps([[1, 1]], "prod").dtype == np.float64


@pytest.mark.parametrize(
    "steps, match",
    [
        ([[0.5], [], [0.1]], "row 1"),
        ([[0.5], [0.2, float("nan")]], "row 1"),
        ([[0.5, float("inf")], [0.1]], "row 0"),
        ([[0.5], [0.1], [-float("inf")]], "row 2"),
        ([[0.5], [0.1, 1.5]], "row 1"),
        ([[0.5], None], "row 1"),
        ([[0.5], [0.3, None]], "row 1"),
    ],
)
def test_aggregate_steps_rejects_bad_scores(steps, match):
    for how in ("min", "last", "prod", "mean"):
        with pytest.raises(ValueError, match=match):
            aggregate_steps(steps, how)


def test_aggregate_steps_unknown_method():
    with pytest.raises(ValueError, match="median"):
        aggregate_steps([[0.5]], "median")


# ------------------------------------------------------------------ replay_prm()

GRADES = {
    # (answer_class, correct, step scores)
    "p1": [(0, True, [0.5, 0.75]), (0, True, [1.0]), (1, False, [0.25, 1.0]), (-1, False, [0.5])],
    "p0": [(0, False, [0.5]), (1, True, [0.75, 0.75, 0.5]), (1, True, [0.25]), (2, False, [1.0, 0.0])],
}


def _frames(spec=GRADES):
    grades = pl.DataFrame(
        [
            (pid, idx, None if cls < 0 else str(cls), cls, ok)
            for pid, samples in spec.items()
            for idx, (cls, ok, _s) in enumerate(samples)
        ],
        schema=schemas.GRADES,
        orient="row",
    )
    steps = pl.DataFrame(
        [(pid, idx, s) for pid, samples in spec.items() for idx, (_c, _o, s) in enumerate(samples)],
        schema={"problem_id": pl.String, "sample_idx": pl.Int32, "scores": pl.List(pl.Float64)},
        orient="row",
    )
    tokens = pl.DataFrame(
        [
            (pid, idx, "sampled", 50 + idx, base + idx)
            for pid, base in (("p1", 10), ("p0", 100))
            for idx in range(4)
        ]
        + [("p1", 0, "greedy", 1, 1)],
        schema={
            "problem_id": pl.String,
            "sample_idx": pl.Int32,
            "source": pl.String,
            "prompt_tokens": pl.Int32,
            "output_tokens": pl.Int32,
        },
        orient="row",
    )
    prm_tokens = pl.DataFrame(
        [(pid, idx, 200 + 10 * idx) for pid in ("p1", "p0") for idx in range(4)],
        schema={"problem_id": pl.String, "sample_idx": pl.Int32, "prm_tokens": pl.Int64},
        orient="row",
    )
    return grades, steps, tokens, prm_tokens


def _prm(**kw):
    grades, steps, tokens, prm_tokens = _frames()
    args = dict(params=1000, prm="toy-prm", prm_params=300, prm_tokens=prm_tokens)
    args.update(kw)
    return replay_prm(grades, steps, tokens, **args)


def test_replay_prm_frame():
    out = _prm()
    assert out.schema == pl.Schema(REPLAY_PRM)
    assert list(out.columns[: len(schemas.REPLAY)]) == list(schemas.REPLAY)
    # budgets(4) = [1, 2, 4]; 2 strategies x 4 aggregations x 3 budgets per problem
    assert out.height == 2 * 4 * 3 * 2
    assert out.get_column("problem_id").to_list() == ["p1"] * 24 + ["p0"] * 24
    first = out.filter(pl.col("problem_id") == "p1")
    assert first.get_column("strategy").to_list() == ["best_of_n"] * 12 + ["weighted_majority"] * 12
    assert first.get_column("aggregation").to_list()[:12] == [a for a in ("min", "last", "prod", "mean") for _ in range(3)]
    assert first.get_column("n").to_list()[:3] == [1, 2, 4]
    assert (out.get_column("prm") == "toy-prm").all()
    # N = 4: every C(4, n) <= 2000 is enumerated exactly
    assert (out.get_column("accuracy_se") == 0.0).all()

    for pid, samples in GRADES.items():
        cls = np.array([c for c, _o, _s in samples])
        ok = np.array([o for _c, o, _s in samples])
        good = np.array([any(o for c2, o, _s in samples if c2 == c) for c in range(cls.max() + 1)])
        for how in ("min", "last", "prod", "mean"):
            w = aggregate_steps([s for _c, _o, s in samples], how)
            for n in (1, 2, 4):
                sel = out.filter(
                    (pl.col("problem_id") == pid) & (pl.col("aggregation") == how) & (pl.col("n") == n)
                )
                bon = sel.filter(pl.col("strategy") == "best_of_n").row(0, named=True)
                wm = sel.filter(pl.col("strategy") == "weighted_majority").row(0, named=True)
                assert bon["accuracy"] == pytest.approx(brute_best_of_n(w, ok, n), abs=1e-12)
                assert wm["accuracy"] == pytest.approx(brute_weighted(w, cls, good, n), abs=1e-12)

    # tokens and FLOPs: n * per-problem means; PRM reads 200..230 tokens -> mean 215
    r = out.filter(
        (pl.col("problem_id") == "p0") & (pl.col("strategy") == "weighted_majority")
        & (pl.col("aggregation") == "prod") & (pl.col("n") == 4)
    ).row(0, named=True)
    assert r["output_tokens"] == pytest.approx(4 * 101.5)
    assert r["prompt_tokens"] == pytest.approx(4 * 51.5)
    assert r["flops_paper"] == pytest.approx(2 * 1000 * 4 * 101.5)
    assert r["flops_full"] == pytest.approx(2 * 1000 * 4 * (101.5 + 51.5) + 2 * 300 * 4 * 215)


def test_replay_prm_flops_match_replay_without_prm_tokens():
    grades, steps, tokens, _ = _frames()
    out = replay_prm(grades, steps, tokens, params=7, prm="x", prm_params=10**9, prm_tokens=None, ns=[2, 3])
    assert sorted(set(out.get_column("n").to_list())) == [2, 3]
    assert out.height == 2 * 4 * 2 * 2
    base = replay(grades, None, tokens, params=7, ns=[2, 3]).filter(pl.col("strategy") == "majority")
    joined = out.join(base, on=["problem_id", "n"], suffix="_r")
    assert joined.height == out.height
    for col in ("output_tokens", "prompt_tokens", "flops_paper", "flops_full"):
        np.testing.assert_allclose(joined[col].to_numpy(), joined[f"{col}_r"].to_numpy(), rtol=1e-15)


def test_replay_prm_subset_of_aggregations_and_monte_carlo_is_order_free():
    grades, steps, tokens, prm_tokens = _frames()
    args = dict(params=1, prm="x", prm_params=1, prm_tokens=prm_tokens, num_draws=50, exact_limit=1)
    out = replay_prm(grades, steps, tokens, aggregations=("mean", "min"), **args)
    assert out.height == 2 * 2 * 3 * 2
    assert out.filter(pl.col("problem_id") == "p1")["aggregation"].to_list()[:6] == ["mean"] * 3 + ["min"] * 3
    wm = out.filter(pl.col("strategy") == "weighted_majority")
    # exact_limit=1: n < N is Monte Carlo (SE > 0 somewhere), n = N (one subset) exact
    assert (wm.filter(pl.col("n") == 4)["accuracy_se"] == 0.0).all()
    assert (wm.filter(pl.col("n") < 4)["accuracy_se"] > 0).any()
    # shuffled inputs, another aggregation order, a single problem: same numbers
    perm = np.random.default_rng(0).permutation(grades.height)
    shuffled = replay_prm(
        grades[perm], steps[perm[::-1]], tokens.sample(fraction=1.0, shuffle=True, seed=1),
        aggregations=("min", "mean", "last"), **args,
    )
    only_p0 = replay_prm(
        grades.filter(pl.col("problem_id") == "p0"), steps.filter(pl.col("problem_id") == "p0"),
        tokens, aggregations=("min",), ns=[2], **{**args, "prm_tokens": prm_tokens.filter(pl.col("problem_id") == "p0")},
    )
    key = ["problem_id", "strategy", "aggregation", "n"]
    a = out.join(shuffled, on=key, suffix="_s")
    assert a.height == out.height
    assert (a["accuracy"] == a["accuracy_s"]).all() and (a["accuracy_se"] == a["accuracy_se_s"]).all()
    b = only_p0.join(out, on=key, suffix="_o")
    assert b.height == 2 and (b["accuracy"] == b["accuracy_o"]).all()
    # another seed moves the Monte Carlo estimates
    other = replay_prm(grades, steps, tokens, aggregations=("mean", "min"), seed=5, **args)
    assert not other["accuracy"].equals(out["accuracy"])


def test_replay_prm_validation():
    grades, steps, tokens, prm_tokens = _frames()
    args = dict(params=1, prm="x", prm_params=1, prm_tokens=prm_tokens)
    # a graded sample without step scores, and a step-score row that is not graded
    missing = steps.filter(~((pl.col("problem_id") == "p0") & (pl.col("sample_idx") == 2)))
    with pytest.raises(ValueError, match="'p0' sample 2"):
        replay_prm(grades, missing, tokens, **args)
    extra = pl.concat([steps, pl.DataFrame({"problem_id": ["p7"], "sample_idx": [0], "scores": [[0.5]]}, schema=steps.schema)])
    with pytest.raises(ValueError, match="p7"):
        replay_prm(grades, extra, tokens, **args)
    with pytest.raises(ValueError, match="duplicate"):
        replay_prm(grades, pl.concat([steps, steps.head(1)]), tokens, **args)
    # mismatched sample counts name the problem
    short = grades.filter(~((pl.col("problem_id") == "p0") & (pl.col("sample_idx") == 3)))
    with pytest.raises(ValueError, match="p0"):
        replay_prm(short, steps, tokens, **args)
    # bad step scores name problem and sample
    bad = steps.with_columns(
        scores=pl.when((pl.col("problem_id") == "p1") & (pl.col("sample_idx") == 2))
        .then(pl.lit([0.5, float("nan")], dtype=pl.List(pl.Float64)))
        .otherwise(pl.col("scores"))
    )
    with pytest.raises(ValueError, match="'p1' sample 2"):
        replay_prm(grades, bad, tokens, **args)
    empty = steps.with_columns(
        scores=pl.when(pl.col("sample_idx") == 1).then(pl.lit([], dtype=pl.List(pl.Float64))).otherwise(pl.col("scores"))
    )
    with pytest.raises(ValueError, match="'p1' sample 1.*empty"):
        replay_prm(grades, empty, tokens, **args)
    # prm_tokens must cover the same samples; tokens must cover every graded sample
    with pytest.raises(ValueError, match="p1"):
        replay_prm(grades, steps, tokens, **{**args, "prm_tokens": prm_tokens.filter(pl.col("problem_id") == "p0")})
    with pytest.raises(ValueError, match="p0"):
        replay_prm(grades, steps, tokens.filter(pl.col("problem_id") == "p1"), **args)
    # correctness all-or-none per answer class
    flip = grades.with_columns(
        correct=pl.when((pl.col("problem_id") == "p1") & (pl.col("sample_idx") == 1)).then(False).otherwise(pl.col("correct"))
    )
    with pytest.raises(ValueError, match="p1"):
        replay_prm(flip, steps, tokens, **args)
    with pytest.raises(ValueError):
        replay_prm(grades, steps, tokens, ns=[5], **args)
    with pytest.raises(ValueError, match="median"):
        replay_prm(grades, steps, tokens, aggregations=("min", "median"), **args)
    with pytest.raises(ValueError):
        replay_prm(grades, steps, tokens, aggregations=("min", "min"), **args)
    with pytest.raises(ValueError, match="missing column"):
        replay_prm(grades, steps.drop("scores"), tokens, **args)


def test_replay_prm_monte_carlo_close_to_exact():
    scores, answer, good = _mc_case()
    spec = {
        "q": [(int(c), bool(c >= 0 and good[c]), [float(s), 1.0]) for c, s in zip(answer, scores)]
    }
    grades, steps, _, _ = _frames(spec)
    tokens = pl.DataFrame(
        {"problem_id": "q", "sample_idx": np.arange(14, dtype=np.int32), "source": "sampled",
         "prompt_tokens": 1, "output_tokens": 1}
    )
    args = dict(params=1, prm="x", prm_params=1, prm_tokens=None, ns=[7], aggregations=("min",))
    exact = replay_prm(grades, steps, tokens, exact_limit=5000, **args)
    mc = replay_prm(grades, steps, tokens, exact_limit=100, num_draws=4000, **args)
    e = exact.filter(pl.col("strategy") == "weighted_majority").row(0, named=True)
    m = mc.filter(pl.col("strategy") == "weighted_majority").row(0, named=True)
    assert e["accuracy"] == pytest.approx(brute_weighted(scores, answer, good, 7), abs=1e-12)
    assert e["accuracy_se"] == 0.0 and 0 < m["accuracy_se"] < 0.02
    assert abs(m["accuracy"] - e["accuracy"]) <= 4 * m["accuracy_se"]
