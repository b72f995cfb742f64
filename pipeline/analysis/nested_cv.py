"""Standard errors of cross-fitted (held-out) choices that hold their level: nested
cross-validation (Bates, Hastie & Tibshirani, "Cross-validation: what does it estimate and
how well does it do it?", JASA 2023).

The held-out accuracy of a choice (pipeline.analysis.stats.crossfit: per fold, the most
accurate candidate within a budget on the other folds, scored on this fold) is unbiased,
but the naive standard error of its per-problem values, sqrt(var / n), is too small:
every problem is training data for the other folds' choices, so the folds' held-out means
are positively correlated (two folds that choose the same candidate both chose it for
doing well on the other's problems; two that choose differently both chose against it).
With 20-40 equal candidates, 64 problems and 5 folds the naive 95% interval covers 81-88%
(tests/test_nested_cv.py measures it).

Nested cross-validation estimates the mean squared error of the cross-validation
estimate directly. Per repetition r (a fresh random split into K folds) and outer fold f:

    e_out(r, f)  the mean over fold f of the procedure fitted on the other K - 1 folds
    e_in(r, f)   the (K - 1)-fold cross-validation estimate computed on those K - 1 folds
                 alone (inner folds = the other outer folds: fitted on K - 2, scored on 1)
    a(r, f) = e_in - e_out,   b(r, f) = var(values on fold f) / |f|

    MSE = mean over (r, f) of a^2 - b

a^2 - b is unbiased for the squared error of a (K - 1)-fold cross-validation estimate on
n (K - 1) / K problems; the paper's standard error rescales it to n problems and keeps
it between the naive one and sqrt(K) times it:

    inflation = clip(sqrt(max(MSE, 0)) / (sd / sqrt(n_sub)), 1, sqrt(K)),
    SE = sd / sqrt(n) * inflation

with sd the standard deviation of all inner held-out values and n_sub = floor(n (K - 1)
/ K) (the authors' R package nestedcv, which this follows without its optional bias
correction); the SE reported is never below the naive one (`reported_se`). The interval
is centred on the ordinary cross-fitted estimate, which
estimates the expected accuracy of the choice a training set of n (K - 1) / K problems
makes.

"The procedure" here is a choice per budget and its per-problem value: the candidate
with the highest training mean among those whose cost (a fixed number per candidate, the
mean over all problems: it needs no reference answer) is within the budget, ties to the
cheaper, then the earlier candidate (stats.best_within); with several `groups` (e.g. the
candidates of two models) each group chooses on its own and the value is
sum_g coef_g * value of group g's choice (e.g. +1 smaller model, -1 larger model: the
paired difference of the two models' cross-fitted best points). Everything is
vectorised over budgets, repetitions and (for simulations) independent data sets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

REPS = 50  # repetitions of nested cross-validation (random splits; Bates et al. use 50-200)


@dataclass(frozen=True)
class NestedSE:
    """Per data set x budget: the nested-CV standard error and its parts (NaN where some
    group has no candidate within the budget, or too few problems)."""

    se: np.ndarray  # sd / sqrt(n) * inflation
    inflation: np.ndarray  # in [1, sqrt(K)]
    mse: np.ndarray  # the raw MSE estimate (mean of a^2 - b)
    sd: np.ndarray  # sd of the inner held-out values
    reps: int
    folds: int


def reported_se(nested: float, naive: float) -> float:
    """The standard error a held-out accuracy (or difference) reports: the nested-CV one,
    never below the naive one (Bates et al. bound it below by sd / sqrt(n) of the inner
    values; the naive SE of the actual cross-fitted values is the same kind of bound);
    the naive one where nested CV is not defined (too few problems for K >= 3 folds of
    two or more)."""
    if nested is None or not math.isfinite(nested) or nested <= 0:
        return naive
    return max(float(nested), naive) if naive is not None and math.isfinite(naive) else float(nested)


def _fold_masks(rng: np.random.Generator, reps: int, n: int, k: int) -> np.ndarray:
    """(reps, n, k) one-hot fold membership of random balanced splits."""
    ranks = np.argsort(rng.random((reps, n)), axis=1).argsort(axis=1)
    return (ranks[:, :, None] % k == np.arange(k)[None, None, :]).astype(float)


def _ordered(cost: np.ndarray) -> np.ndarray:
    """Candidate order (cost ascending, then index): argmax takes the first of tied
    maxima, which is then stats.best_within's tie-break (cheaper, then earlier)."""
    return np.lexsort((np.arange(cost.size), cost))


def _choose(means: np.ndarray, admissible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """argmax over the last axis of `means` among `admissible` candidates (candidates
    already in tie-break order); and whether any admissible candidate had a mean."""
    m = np.where(admissible & ~np.isnan(means), means, -np.inf)
    pick = np.argmax(m, axis=-1)
    ok = np.take_along_axis(m, pick[..., None], axis=-1)[..., 0] > -np.inf
    return pick, ok


def nested_se(acc: np.ndarray, cost: np.ndarray, budgets, k: int, *,
              groups: list[tuple[np.ndarray, float]] | None = None, reps: int = REPS,
              seed: int = 0, rtol: float = 1e-9, chunk: int = 25) -> NestedSE:
    """Nested-CV standard error of the cross-fitted choice per budget (module docstring).

    acc      (P, n) per-problem values of P candidates, or (S, P, n) for S independent data
             sets (simulations); NaN where a candidate has no value for a problem
    cost     (P,) each candidate's cost (fixed: the budget constraint never sees labels)
    budgets  (B,) budgets
    k        folds (the outer split; inner splits use the other K - 1 folds)
    groups   [(candidate indices, coef)]: each group chooses within the budget on its own,
             the per-problem value is sum coef * value of the choice; default one group
             of every candidate with coef 1 (the held-out accuracy of the choice)
    Returns arrays of shape (B,) (or (S, B))."""
    x = np.asarray(acc, dtype=float)
    single = x.ndim == 2
    if single:
        x = x[None]
    s_count, p_count, n = x.shape
    cost = np.asarray(cost, dtype=float)
    b = np.atleast_1d(np.asarray(budgets, dtype=float))
    if groups is None:
        groups = [(np.arange(p_count), 1.0)]
    k = min(k, n)
    out = {name: np.full((s_count, b.size), np.nan) for name in ("se", "inflation", "mse", "sd")}
    if k < 3 or n < 2 * k:  # nested folds need K - 1 >= 2 inner folds with problems in each
        return NestedSE(**{key: v[0] if single else v for key, v in out.items()}, reps=reps, folds=k)
    rng = np.random.default_rng(seed)
    folds = _fold_masks(rng, reps, n, k)  # (R, n, K)
    n_sub = math.floor(n * (k - 1) / k)
    # per group: candidates in tie-break order, admissible per budget
    prepared = []
    for idx, coef in groups:
        idx = np.asarray(idx, dtype=np.int64)
        order = idx[_ordered(cost[idx])]
        adm = cost[order][None, :] <= b[:, None] * (1 + rtol)  # (B, Pg)
        prepared.append((order, float(coef), adm))
    for lo in range(0, s_count, chunk):
        xs = x[lo:lo + chunk]
        res = _nested_chunk(xs, folds, prepared, b.size, k, n_sub)
        for name in out:
            out[name][lo:lo + chunk] = res[name]
    return NestedSE(**{key: v[0] if single else v for key, v in out.items()}, reps=reps, folds=k)


def _nested_chunk(x: np.ndarray, folds: np.ndarray, groups, num_budgets: int, k: int, n_sub: int) -> dict:
    s_count, _, n = x.shape
    reps = folds.shape[0]
    valid = ~np.isnan(x)
    x0 = np.where(valid, x, 0.0)
    # fold sums and counts per candidate: (S, R, P, K)
    fsum = np.einsum("spn,rnk->srpk", x0, folds, optimize=True)
    fcnt = np.einsum("spn,rnk->srpk", valid.astype(float), folds, optimize=True)
    tsum, tcnt = fsum.sum(-1), fcnt.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        # training means without fold f (S, R, K, P) and without folds f1, f2 (S, R, K, K, P)
        m1 = np.moveaxis((tsum[..., None] - fsum) / (tcnt[..., None] - fcnt), 2, -1)
        m2 = np.moveaxis((tsum[..., None, None] - fsum[..., :, None] - fsum[..., None, :])
                         / (tcnt[..., None, None] - fcnt[..., :, None] - fcnt[..., None, :]), 2, -1)
    f = np.moveaxis(folds, 2, 1)  # (R, K, n): fold f's problems
    inner = f[:, None, :, :] * (1 - np.eye(k))[None, :, :, None]  # (R, K1, K2, n): f2 != f1
    out = {name: np.full((s_count, num_budgets), np.nan) for name in ("se", "inflation", "mse", "sd")}
    si = np.arange(s_count)[:, None, None]
    for j in range(num_budgets):
        v1 = np.zeros((s_count, reps, k, n))  # value of the procedure fitted without fold f1
        v2 = np.zeros((s_count, reps, k, k, n))  # ... fitted without folds f1 and f2
        h1 = np.ones((s_count, reps, k, n), dtype=bool)  # the value exists
        h2 = np.ones((s_count, reps, k, k, n), dtype=bool)
        ok = np.ones(s_count, dtype=bool)
        for order, coef, adm in groups:
            a = adm[j]
            if not a.any():
                ok[:] = False
                break
            c1, ok1 = _choose(m1[..., order], a)  # (S, R, K)
            c2, ok2 = _choose(m2[..., order], a)  # (S, R, K, K)
            ok &= ok1.all(axis=(1, 2)) & ok2.all(axis=(1, 2, 3))
            xo, vo = x0[:, order, :], valid[:, order, :]
            v1 += coef * xo[si, c1]
            v2 += coef * xo[si[..., None], c2]
            h1 &= vo[si, c1]
            h2 &= vo[si[..., None], c2]
        if not ok.any():
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            # outer: fold f1's values of the procedure fitted on the other folds
            w1 = f[None] * h1
            n1 = w1.sum(-1)
            e_out = (v1 * w1).sum(-1) / n1  # (S, R, K)
            var_out = ((v1 * v1 * w1).sum(-1) - n1 * e_out**2) / (n1 - 1)
            # inner: for outer fold f1, fold f2's values of the procedure fitted without f1, f2
            w2 = inner[None] * h2
            n2 = w2.sum(axis=(-2, -1))
            s2 = (v2 * w2).sum(axis=(-2, -1))
            q2 = (v2 * v2 * w2).sum(axis=(-2, -1))
            a = s2 / n2 - e_out
            mse = np.mean(a * a - var_out / n1, axis=(1, 2))
            # pooled over every inner held-out value
            big_n, big_s, big_q = n2.sum(axis=(1, 2)), s2.sum(axis=(1, 2)), q2.sum(axis=(1, 2))
            sd = np.sqrt(np.maximum(big_q - big_s**2 / big_n, 0.0) / (big_n - 1))
            infl = np.clip(np.sqrt(np.maximum(mse, 0.0)) / (sd / math.sqrt(n_sub)), 1.0, math.sqrt(k))
            infl = np.where(sd > 0, infl, 1.0)
        ok &= np.isfinite(mse)
        out["mse"][:, j] = np.where(ok, mse, np.nan)
        out["sd"][:, j] = np.where(ok, sd, np.nan)
        out["inflation"][:, j] = np.where(ok, infl, np.nan)
        out["se"][:, j] = np.where(ok, sd / math.sqrt(n) * infl, np.nan)
    return out
