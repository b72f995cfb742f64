"""Difficulty without the answer: the probe, its features, the predicted difficulty and
its bins, and the accuracy of sampling points that reuse the probe.

A deployed system that adapts its compute per problem can only look at what it has
generated before it chooses. Here that is a *probe*: the first k sampled solutions of a
problem (sample_idx < k) in the workflow's cache.

Per problem (`probe_features`):
    agreement    the share of the probe in its most frequent answer class; an unanswered
                 sample agrees with nothing (all unanswered: 0).
    prm_mean     the mean PRM score of the probe's samples, steps aggregated by one step
                 aggregation (a sample without steps scores 0, as in the PRM replay).
    pass1        the share of correct samples among all N: the target the prediction is
                 fitted to (training problems only) and the oracle difficulty (1 - pass1,
                 which needs the reference answers: a reference, not a deployable signal).
Predicted difficulty (`fit_difficulty`): 1 - the least-squares fit of pass1 on
(1, agreement[, prm_mean]) over the training problems; only its order matters.
Bins (`bin_edges`, `assign_bins`): quantiles of the training problems' difficulties, at
most `bins` (fewer when values tie), every bin holding training problems; held-out
problems are binned by the same edges, bin 0 the easiest.

Accuracy under reuse (`conditional_accuracy`). A sampling point (majority, best_of_n,
weighted_majority at n) that reuses the probe votes over the probe plus n - k fresh
samples, so its accuracy *given the probe* is the expectation over (n - k)-subsets of
the other N - k cached samples (n < k: over n-subsets of the probe): exact by enumeration
when there are at most `exact_limit` of them, else over `num_draws` seeded random ones
(with a Monte Carlo SE). Without this, a replay would mix the probe into both the
difficulty and the score: bins are functions of the probe, and replay's unconditional
accuracy averages over subsets that include the probe's samples, so bins would look more
informative than a deployed probe is. With k = 0 the function gives replay's own
unconditional estimators (the tests check it against pipeline.replay).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from pipeline.strategies.selection import aggregate_steps


@dataclass(frozen=True)
class Samples:
    """The sampled cache of one dataset x model as problems x samples arrays: answer
    class (-1 = none), correctness, and aggregated PRM scores per (prm, aggregation)."""

    problems: list[str]
    answer_class: np.ndarray
    correct: np.ndarray
    weights: dict[tuple[str, str], np.ndarray]


def sample_arrays(grades: pl.DataFrame, scores: pl.DataFrame | None,
                  pairs: Sequence[tuple[str, str]] = ()) -> Samples:
    """grades (problem_id, sample_idx, answer_class, correct) of one sampled cache, and
    scores (prm, problem_id, sample_idx, scores) aggregated for each (prm, aggregation)
    in `pairs`. Every problem needs the same samples 0..N-1; every sample its scores."""
    g = grades.select("problem_id", pl.col("sample_idx").cast(pl.Int64), "answer_class", "correct")
    problems = g["problem_id"].unique(maintain_order=True).to_list()
    counts = g.group_by("problem_id").agg(pl.len(), pl.col("sample_idx").max().alias("top"),
                                          pl.col("sample_idx").n_unique().alias("uniq"))
    N = int(counts["len"].max())
    bad = counts.filter((pl.col("len") != N) | (pl.col("uniq") != N) | (pl.col("top") != N - 1))
    if bad.height:
        raise ValueError(f"allocation: grades of problem {bad['problem_id'][0]!r} do not hold samples "
                         f"0..{N - 1} once each (the other problems have {N})")
    rank = pl.DataFrame({"problem_id": problems, "_i": np.arange(len(problems))})
    g = g.join(rank, on="problem_id").sort("_i", "sample_idx")
    shape = (len(problems), N)
    cls = g["answer_class"].fill_null(-1).to_numpy().astype(np.int64).reshape(shape)
    ok = g["correct"].to_numpy().astype(bool).reshape(shape)
    weights = {}
    if pairs and scores is None:
        raise ValueError(f"allocation: PRM scores needed for {sorted(set(p for p, _ in pairs))}, but there is "
                         "no scores table")
    for prm, agg in pairs:
        s = (scores.filter(pl.col("prm") == prm)
             .select("problem_id", pl.col("sample_idx").cast(pl.Int64), "scores")
             .join(g.select("problem_id", "sample_idx", "_i"), on=["problem_id", "sample_idx"], how="right")
             .sort("_i", "sample_idx"))
        missing = s.filter(pl.col("scores").is_null())
        if missing.height:
            raise ValueError(f"allocation: no {prm!r} scores for problem {missing['problem_id'][0]!r} "
                             f"sample {missing['sample_idx'][0]}")
        # a sample without steps (an empty generation) ranks last, as in the PRM replay
        steps = s.select(pl.when(pl.col("scores").list.len() == 0).then(pl.lit([0.0], pl.List(pl.Float64)))
                         .otherwise(pl.col("scores")).alias("scores"))["scores"]
        weights[(prm, agg)] = aggregate_steps(steps, agg).reshape(shape)
    return Samples(problems, cls, ok, weights)


def probe_features(samples: Samples, *, k: int, prm: str | None = None,
                   aggregation: str = "last") -> pl.DataFrame:
    """Per problem: agreement and prm_mean of the probe (samples 0..k-1; see the module
    docstring; prm_mean null without a PRM) and pass1, the share of correct samples
    among all N (for fitting and for the oracle only)."""
    N = samples.answer_class.shape[1]
    if not 1 <= k <= N:
        raise ValueError(f"allocation: probe size k={k} must lie in 1..N={N}")
    probe = samples.answer_class[:, :k]
    K = int(samples.answer_class.max()) + 1
    agreement = np.zeros(len(samples.problems))
    if K > 0:
        counts = np.stack([(probe == c).sum(axis=1) for c in range(K)], axis=1)
        agreement = counts.max(axis=1) / k
    prm_mean = None
    if prm is not None:
        prm_mean = samples.weights[(prm, aggregation)][:, :k].mean(axis=1)
    return pl.DataFrame({
        "problem_id": samples.problems, "agreement": agreement,
        "prm_mean": prm_mean if prm_mean is not None else [None] * len(samples.problems),
        "pass1": samples.correct.mean(axis=1),
    }, schema={"problem_id": pl.String, "agreement": pl.Float64, "prm_mean": pl.Float64, "pass1": pl.Float64})


def _rng(seed: int, problem_id: str, *extra: int) -> np.random.Generator:
    """A generator depending only on (seed, problem_id, extra): a stable hash, not
    python's salted hash(), so draws do not depend on row order or the process."""
    digest = hashlib.blake2b(problem_id.encode("utf-8"), digest_size=16).digest()
    words = [int.from_bytes(digest[i: i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng(np.random.SeedSequence([int(seed), *words, *map(int, extra)]))


def _subsets(N: int, k: int, n: int, rng: np.random.Generator, *, num_draws: int,
             exact_limit: int) -> tuple[np.ndarray, bool]:
    """Rows of sample indices the point at n votes over, given the probe 0..k-1: the
    probe plus every (n - k)-subset of k..N-1 (n < k: every n-subset of the probe),
    or `num_draws` random ones when there are more than `exact_limit`. (rows, exact)"""
    fixed, pool, draw = (np.arange(k), np.arange(k, N), n - k) if n >= k else (np.arange(0), np.arange(k), n)
    if draw == 0:
        picks, exact = np.zeros((1, 0), dtype=np.intp), True
    elif math.comb(pool.size, draw) <= exact_limit:
        picks = np.fromiter(itertools.chain.from_iterable(itertools.combinations(range(pool.size), draw)),
                            dtype=np.intp).reshape(-1, draw)
        exact = True
    else:
        perm = rng.permuted(np.tile(np.arange(pool.size), (num_draws, 1)), axis=1)
        picks, exact = np.sort(perm[:, :draw], axis=1), False
    rows = np.concatenate([np.broadcast_to(fixed, (picks.shape[0], fixed.size)), pool[picks]], axis=1)
    return rows, exact


def vote_outcomes(rows: np.ndarray, answer_class: np.ndarray, good: np.ndarray,
                  weights: np.ndarray | None = None) -> np.ndarray:
    """Per row of sample indices: the chance a (weighted) plurality vote is correct.

    Answered samples vote for their class (weight 1, or their score; a zero-weight vote
    still counts), unanswered ones cast none; the largest total wins, exact ties split
    uniformly, a row without votes is wrong. Weighted totals are summed left to right,
    as the PRM replay sums them. good[c]: class c is correct."""
    R = rows.shape[0]
    K = good.size
    if K == 0 or R == 0:
        return np.zeros(R)
    lab = answer_class[rows]
    voted = lab >= 0
    flat = (lab + (np.arange(R) * K)[:, None])[voted]
    counts = np.bincount(flat, minlength=R * K).reshape(R, K)
    if weights is None:
        totals = counts.astype(float)
    else:
        totals = np.bincount(flat, weights=weights[rows][voted], minlength=R * K).reshape(R, K)
    totals[counts == 0] = -np.inf
    best = totals.max(axis=1)
    tied = totals == best[:, None]
    acc = (tied & good[None, :]).sum(axis=1) / tied.sum(axis=1)
    acc[best == -np.inf] = 0.0
    return acc


def best_outcomes(rows: np.ndarray, correct: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per row: the chance the top-scored sample is correct (ties split uniformly)."""
    s = scores[rows]
    tied = s == s.max(axis=1, keepdims=True)
    return (tied & correct[rows]).sum(axis=1) / tied.sum(axis=1)


def conditional_accuracy(samples: Samples, points: pl.DataFrame, *, k: int, num_draws: int = 1000,
                         exact_limit: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per problem x sampling point of `points` (rows with sampling true): the accuracy
    given that the probe (samples 0..k-1) is part of what it votes over, and its Monte
    Carlo SE (0 when exact). Other points' columns are NaN. k = 0 gives the replay's
    unconditional accuracies (the tests check this against pipeline.replay)."""
    m, N = samples.answer_class.shape
    out = np.full((m, points.height), np.nan)
    se = np.full((m, points.height), np.nan)
    pts = [r for r in points.iter_rows(named=True) if r["sampling"]]
    by_n: dict[int, list[dict]] = {}
    for r in pts:
        if not 1 <= r["n"] <= N:
            raise ValueError(f"allocation: point {r['label']} needs n in 1..N={N}")
        by_n.setdefault(int(r["n"]), []).append(r)
    for i, pid in enumerate(samples.problems):
        cls, ok = samples.answer_class[i], samples.correct[i]
        good = np.zeros(int(cls.max()) + 1, dtype=bool)
        good[cls[ok & (cls >= 0)]] = True
        for n, rs in by_n.items():
            rows, exact = _subsets(N, k, n, _rng(seed, pid, N, k, n, num_draws),
                                   num_draws=num_draws, exact_limit=exact_limit)
            for r in rs:
                w = None if r["prm"] is None else samples.weights[(r["prm"], r["aggregation"])][i]
                if r["strategy"] == "best_of_n":
                    acc = best_outcomes(rows, ok, w)
                else:
                    acc = vote_outcomes(rows, cls, good, w if r["strategy"] == "weighted_majority" else None)
                out[i, r["j"]] = acc.mean()
                se[i, r["j"]] = 0.0 if exact or acc.size < 2 else acc.std(ddof=1) / math.sqrt(acc.size)
    return out, se


# --------------------------------------------------------------------------- difficulty


def fit_difficulty(features: np.ndarray, pass1: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Predicted difficulty of every problem: 1 - the least-squares fit of pass@1 on
    (1, features), fitted on the `train` rows only."""
    X = np.column_stack([np.ones(len(pass1)), np.asarray(features, dtype=float).reshape(len(pass1), -1)])
    w, *_ = np.linalg.lstsq(X[train], np.asarray(pass1, dtype=float)[train], rcond=None)
    return 1.0 - X @ w


def bin_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Upper edges of up to `bins` quantile bins of `values` (training problems): the
    values at ranks ceil(i m / bins) for i = 1..bins-1, duplicates and the maximum
    dropped, so that every bin (e_{i-1}, e_i] holds at least one of `values`."""
    v = np.sort(np.asarray(values, dtype=float))
    if v.size == 0 or bins < 1:
        raise ValueError(f"allocation: need training values and bins >= 1, got {v.size} values, {bins} bins")
    idx = np.ceil(np.arange(1, bins) * v.size / bins).astype(int) - 1
    edges = np.unique(v[idx])
    return edges[edges < v[-1]]


def assign_bins(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """0-based bin of each value: bin i holds edges[i-1] < value <= edges[i]."""
    return np.searchsorted(edges, np.asarray(values, dtype=float), side="left")
