"""Exact replay estimators vs brute-force enumeration, and the replay() frame contract."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import polars as pl
import pytest

from pipeline.core import schemas
from pipeline.strategies.shared import budgets
from pipeline.strategies.voting import majority_accuracy, pass_at_k, replay, summarize

# ------------------------------------------------------------------ brute force


def _labels(class_sizes: list[int], unanswered: int) -> list[int]:
    """One label per cached sample: its class index, or -1 for no answer."""
    out = [j for j, s in enumerate(class_sizes) for _ in range(s)]
    return out + [-1] * unanswered


def brute_majority(class_sizes: list[int], correct: int | None, unanswered: int, n: int) -> float:
    """Average over ALL n-subsets; ties score 1/#tied when the correct class is tied."""
    labels = _labels(class_sizes, unanswered)
    total, num = Fraction(0), 0
    for subset in itertools.combinations(range(len(labels)), n):
        num += 1
        votes: dict[int, int] = {}
        for i in subset:
            if labels[i] >= 0:
                votes[labels[i]] = votes.get(labels[i], 0) + 1
        if not votes or correct is None:
            continue
        top = max(votes.values())
        tied = [c for c, v in votes.items() if v == top]
        if correct in tied:
            total += Fraction(1, len(tied))
    return float(total / num)


def brute_pass(num_samples: int, num_correct: int, k: int) -> float:
    hits = sum(
        any(i < num_correct for i in subset)
        for subset in itertools.combinations(range(num_samples), k)
    )
    return hits / math.comb(num_samples, k)


def _random_case(rng: np.random.Generator) -> tuple[list[int], int | None, int]:
    num_classes = int(rng.integers(1, 5))
    sizes = [int(x) for x in rng.integers(0, 4, size=num_classes)]
    unanswered = int(rng.integers(0, 4))
    if sum(sizes) + unanswered == 0:
        sizes[0] = 1
    while sum(sizes) + unanswered > 10:
        j = int(np.argmax(sizes))
        if sizes[j] == 0:
            unanswered -= 1
        else:
            sizes[j] -= 1
    correct = None if rng.random() < 0.15 else int(rng.integers(0, num_classes))
    return sizes, correct, unanswered


# ------------------------------------------------------------------ estimators


def test_pass_at_k_matches_enumeration():
    for num_samples in range(1, 10):
        for c in range(num_samples + 1):
            for k in range(1, num_samples + 1):
                assert pass_at_k(num_samples, c, k) == pytest.approx(
                    brute_pass(num_samples, c, k), abs=1e-12
                )


def test_pass_at_k_edges():
    assert pass_at_k(256, 0, 256) == 0.0
    assert pass_at_k(256, 1, 256) == 1.0
    assert pass_at_k(256, 3, 1) == pytest.approx(3 / 256, abs=1e-15)
    assert pass_at_k(256, 128, 64) == pytest.approx(
        1 - math.comb(128, 64) / math.comb(256, 64), abs=1e-12
    )
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_majority_matches_enumeration_random_cases():
    rng = np.random.default_rng(12345)
    checked = 0
    for _ in range(250):
        sizes, correct, unanswered = _random_case(rng)
        total = sum(sizes) + unanswered
        for n in range(1, total + 1):
            got = majority_accuracy(sizes, correct, unanswered, n)
            want = brute_majority(sizes, correct, unanswered, n)
            assert got == pytest.approx(want, abs=1e-12), (sizes, correct, unanswered, n)
            checked += 1
    assert checked > 500


@pytest.mark.parametrize(
    "sizes, correct, unanswered",
    [
        ([2, 2], 0, 0),  # two-way tie at n = N
        ([3, 3, 3], 1, 1),  # three-way ties
        ([1, 1, 1, 1, 1], 2, 0),  # all singletons: every subset is a full tie
        ([4, 1, 1], 1, 2),  # correct minority class
        ([0, 3, 2], 0, 1),  # empty correct class
        ([3, 2], None, 3),  # nothing correct
        ([5], 0, 4),  # single class plus unanswered
        ([2, 0, 3, 2], 3, 2),  # empty class in the middle
    ],
)
def test_majority_matches_enumeration_structured(sizes, correct, unanswered):
    for n in range(1, sum(sizes) + unanswered + 1):
        assert majority_accuracy(sizes, correct, unanswered, n) == pytest.approx(
            brute_majority(sizes, correct, unanswered, n), abs=1e-12
        )


def test_majority_edges():
    # n = N: the whole cache votes, deterministic up to tie-breaking
    assert majority_accuracy([5, 3], 0, 2, 10) == 1.0
    assert majority_accuracy([5, 3], 1, 2, 10) == 0.0
    assert majority_accuracy([4, 4, 1], 1, 0, 9) == pytest.approx(0.5, abs=1e-15)
    # n = 1: the single sample's class wins iff it answered
    for sizes, u in [([5, 3, 2], 4), ([1, 1], 0), ([7], 9)]:
        total = sum(sizes) + u
        for c in range(len(sizes)):
            assert majority_accuracy(sizes, c, u, 1) == pytest.approx(sizes[c] / total, abs=1e-15)
    # all unanswered: never a vote, always wrong
    for n in range(1, 6):
        assert majority_accuracy([0], 0, 5, n) == 0.0
        assert majority_accuracy([], None, 5, n) == 0.0
    # single class, no unanswered: always right
    for n in range(1, 7):
        assert majority_accuracy([6], 0, 0, n) == pytest.approx(1.0, abs=1e-15)
    # single class with unanswered: wrong only if the subset is all unanswered
    assert majority_accuracy([2], 0, 4, 3) == pytest.approx(1 - math.comb(4, 3) / math.comb(6, 3))
    assert majority_accuracy([3, 1], None, 0, 2) == 0.0
    with pytest.raises(ValueError):
        majority_accuracy([2, 1], 0, 0, 4)
    with pytest.raises(ValueError):
        majority_accuracy([2, 1], 0, 0, 0)
    with pytest.raises(ValueError):
        majority_accuracy([2, 1], 2, 0, 1)


def test_majority_symmetry_and_large_cache_runs():
    # equal classes are exchangeable: each wins 1/10 of the subsets that hold a vote
    for n in (1, 3, 16, 128, 256):
        want = (1 - math.comb(6, n) / math.comb(256, n)) / 10
        assert majority_accuracy([25] * 10, 3, 6, n) == pytest.approx(want, abs=1e-12)
    # N = 256 with 10 uneven classes: runs (no timing assertion), probabilities over
    # all classes plus the no-vote event sum to one
    sizes = [60, 50, 40, 30, 25, 20, 10, 5, 3, 1]
    unanswered = 256 - sum(sizes)
    for n in budgets(256):
        wins = [majority_accuracy(sizes, c, unanswered, n) for c in range(len(sizes))]
        assert all(0.0 <= w <= 1.0 for w in wins)
        no_vote = math.comb(unanswered, n) / math.comb(256, n)
        assert sum(wins) + no_vote == pytest.approx(1.0, abs=1e-10)
    assert wins[0] == 1.0


def test_budgets():
    assert budgets(1) == [1]
    assert budgets(8) == [1, 2, 4, 8]
    assert budgets(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert budgets(10) == [1, 2, 4, 8, 10]
    assert budgets(3) == [1, 2, 3]


# ------------------------------------------------------------------ replay()


def _grades(spec: dict[str, list[tuple[str | None, int, bool]]]) -> pl.DataFrame:
    rows = [
        (pid, idx, ans, cls, ok)
        for pid, samples in spec.items()
        for idx, (ans, cls, ok) in enumerate(samples)
    ]
    return pl.DataFrame(rows, schema=schemas.GRADES, orient="row")


SAMPLED = {
    # 4 samples each: classes 0 (correct, 2 samples), 1 (1 sample), one unanswered
    "p1": [("4", 0, True), ("4", 0, True), ("5", 1, False), (None, -1, False)],
    # nothing correct; a tie between two wrong answers
    "p0": [("a", 0, False), ("b", 1, False), ("a", 0, False), ("b", 1, False)],
}
GREEDY = {"p1": [("4", 0, True)], "p0": [("a", 0, False)]}


def _tokens() -> pl.DataFrame:
    rows = []
    for pid, out_base in (("p1", 10), ("p0", 100)):
        for idx in range(4):
            rows.append((pid, idx, "sampled", 50 + idx, out_base + idx))  # means: 51.5, base+1.5
    rows.append(("p1", 0, "greedy", 50, 7))
    rows.append(("p0", 0, "greedy", 60, 90))
    return pl.DataFrame(
        rows,
        schema={
            "problem_id": pl.String,
            "sample_idx": pl.Int32,
            "source": pl.String,
            "prompt_tokens": pl.Int32,
            "output_tokens": pl.Int32,
        },
        orient="row",
    )


def test_replay_frame():
    params = 1_000
    out = replay(_grades(SAMPLED), _grades(GREEDY), _tokens(), params=params)
    assert out.schema == pl.Schema(schemas.REPLAY)
    # budgets(4) = [1, 2, 4] for two strategies, plus one greedy row, per problem
    assert out.height == 2 * (2 * 3 + 1)
    # problem order of first appearance, then strategy, then n
    assert out.get_column("problem_id").to_list()[:7] == ["p1"] * 7
    first = out.filter(pl.col("problem_id") == "p1")
    assert first.get_column("strategy").to_list() == ["coverage"] * 3 + ["greedy"] + ["majority"] * 3
    assert first.get_column("n").to_list() == [1, 2, 4, 1, 1, 2, 4]

    def row(pid: str, strategy: str, n: int) -> dict:
        hit = out.filter(
            (pl.col("problem_id") == pid) & (pl.col("strategy") == strategy) & (pl.col("n") == n)
        )
        assert hit.height == 1
        return hit.row(0, named=True)

    assert row("p1", "coverage", 2)["accuracy"] == pytest.approx(pass_at_k(4, 2, 2))
    assert row("p1", "majority", 2)["accuracy"] == pytest.approx(brute_majority([2, 1], 0, 1, 2))
    assert row("p1", "majority", 4)["accuracy"] == 1.0
    assert row("p1", "greedy", 1)["accuracy"] == 1.0
    assert row("p0", "greedy", 1)["accuracy"] == 0.0
    assert out.filter(pl.col("problem_id") == "p0").get_column("accuracy").max() == 0.0

    # tokens: n * per-problem mean for sampled strategies, own sample for greedy
    r = row("p0", "majority", 4)
    assert r["output_tokens"] == pytest.approx(4 * 101.5)
    assert r["prompt_tokens"] == pytest.approx(4 * 51.5)
    assert r["flops_paper"] == pytest.approx(2 * params * 4 * 101.5)
    assert r["flops_full"] == pytest.approx(2 * params * 4 * (101.5 + 51.5))
    r = row("p1", "coverage", 2)
    assert r["output_tokens"] == pytest.approx(2 * 11.5)
    g = row("p1", "greedy", 1)
    assert (g["output_tokens"], g["prompt_tokens"]) == (7.0, 50.0)
    assert g["flops_full"] == pytest.approx(2 * params * 57)


def test_replay_without_greedy_and_custom_budgets():
    out = replay(_grades(SAMPLED), None, _tokens(), params=7, ns=[3, 1])
    assert out.height == 2 * 2 * 2
    assert "greedy" not in out.get_column("strategy").to_list()
    assert sorted(set(out.get_column("n").to_list())) == [1, 3]
    with pytest.raises(ValueError):
        replay(_grades(SAMPLED), None, _tokens(), params=7, ns=[5])


def test_replay_mismatched_sample_counts():
    spec = dict(SAMPLED)
    spec["p9"] = SAMPLED["p0"][:3]
    with pytest.raises(ValueError, match="p9"):
        replay(_grades(spec), None, _tokens(), params=1)


def test_replay_rejects_bad_inputs():
    # correctness must be all-or-none per answer class
    spec = {"p1": [("4", 0, True), ("4", 0, False), ("5", 1, False), (None, -1, False)]}
    with pytest.raises(ValueError, match="p1"):
        replay(_grades(spec), None, _tokens(), params=1)
    # every graded sample needs token counts
    tok = _tokens().filter(~((pl.col("problem_id") == "p0") & (pl.col("sample_idx") == 3)))
    with pytest.raises(ValueError, match="p0"):
        replay(_grades(SAMPLED), None, tok, params=1)
    # greedy must cover the same problems
    with pytest.raises(ValueError):
        replay(_grades(SAMPLED), _grades({"p1": GREEDY["p1"]}), _tokens(), params=1)


def test_replay_several_correct_classes_add():
    # two classes both graded correct (e.g. "1/2" vs "0.5" not merged): wins add up
    spec = {"p1": [("x", 0, True), ("y", 1, True), ("z", 2, False), ("z", 2, False)]}
    out = replay(_grades(spec), None, _tokens(), params=1, ns=[2, 4])
    maj = out.filter(pl.col("strategy") == "majority").get_column("accuracy").to_list()
    for got, n in zip(maj, [2, 4]):
        want = brute_majority([1, 1, 2], 0, 0, n) + brute_majority([1, 1, 2], 1, 0, n)
        assert got == pytest.approx(want, abs=1e-12)


def test_summarize():
    out = replay(_grades(SAMPLED), _grades(GREEDY), _tokens(), params=3)
    s = summarize(out)
    assert s.height == 7
    g = s.filter(pl.col("strategy") == "greedy").row(0, named=True)
    assert g["n"] == 1 and g["num_problems"] == 2
    assert g["accuracy"] == pytest.approx(0.5)
    assert g["accuracy_se"] == pytest.approx(np.std([1.0, 0.0], ddof=1) / math.sqrt(2))
    assert g["output_tokens"] == pytest.approx((7 + 90) / 2)
    assert g["flops_paper"] == pytest.approx(2 * 3 * (7 + 90) / 2)
    assert g["flops_full"] == pytest.approx(2 * 3 * (7 + 50 + 90 + 60) / 2)
    one = summarize(out.filter(pl.col("problem_id") == "p1"))
    assert (one.get_column("accuracy_se") == 0.0).all()
    assert (one.get_column("num_problems") == 1).all()
