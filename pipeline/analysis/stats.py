"""Statistics of curve points measured on the same problems: pure functions over numpy / polars.

Every curve point of a dataset (a model, PRM, strategy, step aggregation and n) is
measured on the same problems, one `replay` row per problem, so points are compared
*paired*, problem by problem, and choices among many points are scored on problems the
choice did not see (cross-fitting).

Uncertainty of a mean over problems (`mean_se`, and `paired` for a mean difference):

    Var = var_samp(x) / n + sum(se_i^2) / n^2

where x_i is the problem's value (an accuracy, or the difference of two points'
accuracies) and se_i the Monte Carlo standard error of that value (weighted voting with
C(N, n) too large to enumerate; 0 where the replay is exact; se_a^2 + se_b^2 for a
difference, the draws of the two points being independent). The first term treats the
problems as a random sample from a population; it already contains the Monte Carlo noise
as part of the spread between problems. The second term is the variance of the
estimate for *these* problems, which the first term misses when the spread is small
(at the extreme, every problem with the same difference). Adding both keeps the standard
error valid for either reading at the price of counting the Monte Carlo part twice in
the first: conservative by at most mean(se^2) / n, which is small, since
se_i <= 0.5 / sqrt(num_draws) (0.016 at the default 1000 draws).

Intervals of differences are normal: mean +- 1.96 SE; p-values two-sided,
2 (1 - Phi(|mean| / SE)). With a few dozen problems the t distribution would be a little
wider; at 64 problems its 97.5% quantile is 2.00 instead of 1.96. Degenerate inputs
(`contrast`): no problem, one problem, or a NaN value or Monte Carlo SE give no
p-value and no interval, with the `reason` (a verdict reads "not testable"); a
difference that is the same non-zero value on every problem with no Monte Carlo
error (SE 0, where the normal test would say p = 0) is tested by the exact sign test,
p = 2^(1 - n) (capped at 1: all n differences share one sign), with the sign test's
interval for the median difference, [d, d] once 2^(1 - n) <= 0.05 (n >= 6), else
unbounded.

Intervals of an accuracy (a mean of per-problem values in [0, 1]; `accuracy_interval`)
are Wilson score intervals at the effective number of problems
n_eff = p (1 - p) / SE^2 (the number of 0/1 outcomes that would give this SE; n itself
for 0/1 values without Monte Carlo error), so they stay inside [0, 1] where
mean +- 1.96 SE would not (24 problems, 1 solved: 0.042 [0.007, 0.207], not
[-0.040, 0.123]). At p = 0 or 1 (SE 0) they use n: [0, 3.84 / (n + 3.84)].

Held-out choices (`crossfit`): the problems of each dataset are split into K folds by a
seeded hash of (seed, dataset, problem_id) (`assign_folds`; balanced, independent of row
order). For each fold, a choice (the most accurate candidate within a budget) is made on
the other K - 1 folds and scored on the held-out fold; every problem is held out once,
so each budget gets one held-out accuracy per problem, summarised like any accuracy
(mean, `mean_se`). Because each fold's choice never saw its held-out problems, the
held-out accuracy of the choice is unbiased, whereas the in-sample maximum of many noisy
candidates is biased upwards (tests/test_stats.py simulates both). Its standard error is
NOT `mean_se` of the held-out values, which ignores that each problem also trained the
other folds' choices (the naive 95% interval covers 83-89%): pipeline.analysis.nested_cv
estimates it by nested cross-validation (tests/test_nested_cv.py: coverage).

Also: the minimum detectable paired difference (`mde`) and a bootstrap over problems of
the compute-optimal model-size fit (`bootstrap_size_fit`). The ROC AUC of scores against
labels is pipeline/core/auc.py's (the PRM quality's and the value head's).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import polars as pl

Z95 = 1.959963984540054  # Phi^-1(0.975): two-sided 95%
Z80 = 0.8416212335729143  # Phi^-1(0.80): 80% power
DECIMALS = 12  # per-problem differences are rounded to this many decimals (`contrast`)


# --------------------------------------------------------------------------- normal tail


def normal_cdf(x: float) -> float:
    """Phi(x), the standard normal CDF."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def two_sided_p(z: float) -> float:
    """2 (1 - Phi(|z|)), computed as erfc(|z| / sqrt 2) (no cancellation in the tail)."""
    return math.erfc(abs(z) / math.sqrt(2.0))


# --------------------------------------------------------------------------- means and paired differences


def _arrays(values, se) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(values, dtype=float)
    s = np.zeros_like(x) if se is None else np.asarray(se, dtype=float)
    if s.shape != x.shape:
        raise ValueError(f"values and standard errors differ in shape: {x.shape} vs {s.shape}")
    return x, s


def mean_se(values, se=None) -> tuple[float, float]:
    """(mean, standard error) of per-problem values with per-problem Monte Carlo SEs:
    Var = var_samp / n + sum(se^2) / n^2 (module docstring). NaN for no values."""
    x, s = _arrays(values, se)
    n = x.size
    if n == 0:
        return math.nan, math.nan
    var = (x.var(ddof=1) / n if n > 1 else 0.0) + float(np.sum(s**2)) / n**2
    return float(x.mean()), math.sqrt(var)


NORMAL, SIGN = "normal", "exact sign test"  # Paired.method
SIGN_MIN_PROBLEMS = 6  # 2^(1 - n) <= 0.05 from n = 6: the sign test's interval is then [d, d]


@dataclass(frozen=True)
class Paired:
    """A paired comparison of point a against point b on their common problems."""

    num_problems: int
    accuracy_a: float
    accuracy_b: float
    diff: float  # mean of a - b over problems
    diff_se: float
    ci_low: float
    ci_high: float
    p_value: float  # two-sided, H0: diff = 0; NaN when not testable
    method: str = NORMAL  # NORMAL, or SIGN for a constant non-zero difference; "" when not testable
    reason: str = ""  # why there is no test ("" when there is one)

    def testable(self) -> bool:
        return not self.reason

    def significant(self) -> bool:
        """True when the 95% interval excludes 0."""
        return self.testable() and (self.ci_low > 0 or self.ci_high < 0)

    def as_dict(self) -> dict:
        return asdict(self)


def untestable(reason: str, n: int = 0, diff: float = math.nan, *, accuracy_a: float = math.nan,
               accuracy_b: float = math.nan) -> Paired:
    """A comparison without a test: no SE, interval or p-value, and why."""
    return Paired(n, accuracy_a, accuracy_b, diff, math.nan, math.nan, math.nan, math.nan, "", reason)


def sign_test_p(n: int) -> float:
    """Two-sided exact sign test p-value when all n non-zero differences share one sign."""
    return min(1.0, 2.0 ** (1 - n))


def contrast(d, mc_var=None, *, accuracy_a: float = math.nan, accuracy_b: float = math.nan) -> Paired:
    """Mean of per-problem differences `d` (any contrast of points on the same problems),
    whose Monte Carlo variances are `mc_var`: SE by `mean_se`, 95% interval, two-sided p.
    Degenerate inputs (module docstring): none or one problem, or a NaN, give no test
    (`reason`); a constant non-zero difference with SE 0 gets the exact sign test."""
    # Rounded to 12 decimals (as the SQL does): two exact replays of the same quantity
    # computed in different ways (majority@1 and best_of_n@1 are both the fraction of
    # correct samples) differ in the last bits, which must not read as a difference.
    d = np.round(np.asarray(d, dtype=float), DECIMALS)
    v = np.zeros_like(d) if mc_var is None else np.asarray(mc_var, dtype=float)
    kw = {"accuracy_a": accuracy_a, "accuracy_b": accuracy_b}
    if d.size == 0:
        return untestable("no common problems", **kw)
    if np.isnan(d).any() or np.isnan(v).any():
        return untestable("a NaN (or NULL) value or standard error", int(d.size), math.nan, **kw)
    if d.size < 2:
        return untestable("fewer than two problems", int(d.size), float(d.mean()), **kw)
    diff, se = mean_se(d, np.sqrt(v))
    n = int(d.size)
    if se > 0:
        return Paired(n, accuracy_a, accuracy_b, diff, se, diff - Z95 * se, diff + Z95 * se, two_sided_p(diff / se))
    # every problem has the same difference and no Monte Carlo error: the normal test
    # would give p = 0 at any n; the sign test is exact (its interval is the median's)
    p = 1.0 if diff == 0 else sign_test_p(n)
    lo, hi = (diff, diff) if n >= SIGN_MIN_PROBLEMS else (-math.inf, math.inf)
    return Paired(n, accuracy_a, accuracy_b, diff, 0.0, lo, hi, p, SIGN)


def paired(acc_a, acc_b, se_a=None, se_b=None) -> Paired:
    """Mean paired difference a - b (arrays aligned by problem), its SE (module docstring:
    the Monte Carlo variances of the two points add), 95% interval and two-sided p."""
    a, sa = _arrays(acc_a, se_a)
    b, sb = _arrays(acc_b, se_b)
    if a.shape != b.shape:
        raise ValueError(f"paired: the two points cover different problems ({a.shape} vs {b.shape})")
    if a.size == 0:
        return contrast(a)
    return contrast(a - b, sa**2 + sb**2, accuracy_a=float(a.mean()), accuracy_b=float(b.mean()))


def accuracy_interval(mean, se, n, *, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a mean accuracy (per-problem values in [0, 1]) at the
    effective number of problems n_eff = p (1 - p) / se^2 (module docstring); n where p
    is 0 or 1 or se is 0 (0/1 values). Inside [0, 1]; NaN where the mean is NaN or n < 1.
    Vectorised over numpy arrays (scalars give 0-d arrays; float() them)."""
    p = np.clip(np.asarray(mean, dtype=float), 0.0, 1.0)
    s = np.asarray(se, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        inner = (p > 0) & (p < 1) & (s > 0)
        m = np.where(inner, p * (1 - p) / np.where(s > 0, s, 1.0) ** 2, n)
        # se = 0 inside (0, 1): every problem the same value, no Monte Carlo error
        m = np.where((p > 0) & (p < 1) & (s == 0), np.inf, m)
        z2 = z * z
        k = np.where(np.isinf(m), 0.0, z2 / m)
        centre = (p + k / 2) / (1 + k)
        half = z / (1 + k) * np.sqrt(np.where(np.isinf(m), 0.0, p * (1 - p) / m + z2 / (4 * m * m)))
        bad = np.isnan(p) | np.isnan(s) | ~(n >= 1)
        lo = np.where(bad, np.nan, np.where(p == 0, 0.0, np.clip(centre - half, 0.0, 1.0)))
        hi = np.where(bad, np.nan, np.where(p == 1, 1.0, np.clip(centre + half, 0.0, 1.0)))
    return lo, hi


def mde(sd: float, n: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean paired difference a two-sided level-`alpha` test detects with
    probability `power`, for per-problem differences of standard deviation `sd` over
    `n` problems: (z_{1 - alpha/2} + z_{power}) sd / sqrt(n) (normal approximation)."""
    if n < 1:
        return math.nan
    from statistics import NormalDist

    z = NormalDist()
    return (z.inv_cdf(1 - alpha / 2) + z.inv_cdf(power)) * sd / math.sqrt(n)


# --------------------------------------------------------------------------- ranking


# --------------------------------------------------------------------------- folds


def assign_folds(problem_ids, k: int, seed: int, salt: str = "") -> np.ndarray:
    """Fold (0..K'-1) of each problem, K' = min(k, number of problems): the problems are
    ranked by sha256(seed, salt, problem_id) and dealt round-robin, so folds differ in
    size by at most one, the split depends on nothing but the seed, the salt (the
    dataset's name) and the set of problem ids, and the same seed reproduces it."""
    ids = [str(p) for p in problem_ids]
    if len(set(ids)) != len(ids):
        raise ValueError("assign_folds: problem ids must be unique")
    if k < 2:
        raise ValueError(f"assign_folds: need at least 2 folds, got {k}")
    keys = [hashlib.sha256(f"{seed}\0{salt}\0{p}".encode()).hexdigest() for p in ids]
    order = sorted(range(len(ids)), key=lambda i: (keys[i], ids[i]))
    folds = np.empty(len(ids), dtype=np.int32)
    folds[order] = np.arange(len(ids)) % max(1, min(k, len(ids)))
    return folds


def folds_table(problems: pl.DataFrame, k: int, seed: int) -> pl.DataFrame:
    """The `folds` table: dataset, problem_id, fold, for every (dataset, problem_id) of
    `problems` (the dataset's name salts the hash, so datasets get different splits)."""
    parts = []
    for (dataset,), g in problems.select("dataset", "problem_id").unique().sort("dataset", "problem_id").group_by(
            "dataset", maintain_order=True):
        parts.append(g.with_columns(fold=pl.Series(assign_folds(g["problem_id"], k, seed, dataset))))
    if not parts:
        return pl.DataFrame(schema={"dataset": pl.String, "problem_id": pl.String, "fold": pl.Int32})
    return pl.concat(parts).with_columns(pl.col("problem_id").cast(pl.String))


# --------------------------------------------------------------------------- candidates and choices


@dataclass(frozen=True)
class Candidates:
    """Candidate points x problems: accuracy, its Monte Carlo SE and cost (NaN where a
    point has no result for a problem, e.g. a tree search run on the first `limit`)."""

    points: list[str]
    problems: list[str]
    accuracy: np.ndarray
    accuracy_se: np.ndarray
    cost: np.ndarray

    def mean_accuracy(self, cols: np.ndarray | None = None) -> np.ndarray:
        return _nanmean(self.accuracy if cols is None else self.accuracy[:, cols])

    def mean_cost(self, cols: np.ndarray | None = None) -> np.ndarray:
        return _nanmean(self.cost if cols is None else self.cost[:, cols])


def _nanmean(m: np.ndarray) -> np.ndarray:
    counts = np.sum(~np.isnan(m), axis=1)
    sums = np.nansum(m, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def candidates(rows: pl.DataFrame, *, cost: str = "cost", point: str = "point",
               problem: str = "problem_id", accuracy: str = "accuracy",
               accuracy_se: str | None = "accuracy_se") -> Candidates:
    """Candidates from long per-problem rows (one per point x problem; the point column
    is any unique id, e.g. the `points` view's label). Points keep their first-seen order,
    which breaks ties between equally accurate, equally costly points."""
    if rows.select(point, problem).is_duplicated().any():
        raise ValueError(f"candidates: more than one row per ({point}, {problem})")
    points = rows[point].unique(maintain_order=True).to_list()
    problems = sorted(rows[problem].cast(pl.String).unique().to_list())
    pi = {p: i for i, p in enumerate(points)}
    qi = {q: j for j, q in enumerate(problems)}
    r = rows[point].replace_strict(pi, return_dtype=pl.Int64).to_numpy()
    c = rows[problem].cast(pl.String).replace_strict(qi, return_dtype=pl.Int64).to_numpy()
    shape = (len(points), len(problems))

    def matrix(col: str | None, null: float) -> np.ndarray:
        m = np.full(shape, np.nan)
        m[r, c] = null if col is None else rows[col].cast(pl.Float64).fill_null(null).to_numpy()
        return m

    has_se = accuracy_se is not None and accuracy_se in rows.columns
    return Candidates(points, problems, matrix(accuracy, np.nan),
                      matrix(accuracy_se if has_se else None, 0.0), matrix(cost, np.nan))


def best_within(accuracy: np.ndarray, cost: np.ndarray, budgets, *, rtol: float = 1e-9) -> np.ndarray:
    """Index of the chosen candidate per budget: the most accurate with cost <= budget
    (relative tolerance `rtol`, so a point is within a budget equal to its own cost),
    ties to the cheaper, then to the earlier candidate; -1 where none fits. Candidates
    with a NaN accuracy or cost are never chosen."""
    acc = np.asarray(accuracy, float)
    cst = np.asarray(cost, float)
    budgets = np.atleast_1d(np.asarray(budgets, float))
    ok = ~(np.isnan(acc) | np.isnan(cst))
    # one ranking for all budgets: best first by (accuracy desc, cost asc, index asc)
    order = np.lexsort((np.arange(acc.size), cst, -np.where(ok, acc, -np.inf)))
    order = order[ok[order]]
    out = np.full(budgets.size, -1, dtype=np.int64)
    if order.size == 0:
        return out
    fits = cst[order][None, :] <= budgets[:, None] * (1 + rtol)
    first = np.argmax(fits, axis=1)
    has = fits[np.arange(budgets.size), first]
    out[has] = order[first[has]]
    return out


CostScope = Literal["all", "train"]


def crossfit(rows: pl.DataFrame, folds: pl.DataFrame, budgets: pl.DataFrame, *, cost: str = "cost",
             point: str = "point", cost_scope: CostScope = "all") -> pl.DataFrame:
    """Cross-fitted choice per budget, scored on held-out problems.

    rows     one row per candidate point x problem: `point` (an id), problem_id,
             accuracy, accuracy_se (optional, Monte Carlo SE) and the cost column.
    folds    problem_id, fold (e.g. a dataset's rows of the `folds` table).
    budgets  a `budget` column plus any columns that identify it (carried through).
    cost_scope
             which problems estimate a candidate's cost for the budget constraint:
             "all" (default) every problem: costs (tokens, FLOPs, seconds) need no
             reference answer, so they cannot overfit the accuracy the choice
             maximises, and a point is always within a budget equal to its own cost, as
             in the in-sample choice; "train" the training folds only.

    For every budget and fold: the most accurate candidate on the other folds whose
    cost fits (`best_within`); its result on each problem of the held-out fold is that
    problem's held-out value. Returns one row per budget x problem: the budget's columns,
    problem_id, fold, point (the fold's choice), accuracy, accuracy_se, cost (the chosen
    point's on this problem), train_accuracy (the choice's accuracy on the training
    folds). A budget where some fold has no candidate within it gets no rows (its
    held-out accuracy is undefined); problems where the chosen point has no result are
    left out.
    """
    cand = candidates(rows, cost=cost, point=point)
    fold_of = dict(zip(folds["problem_id"].cast(pl.String).to_list(), folds["fold"].to_list()))
    missing = [p for p in cand.problems if p not in fold_of]
    if missing:
        raise ValueError(f"crossfit: problems without a fold: {missing[:5]}")
    fold = np.array([fold_of[p] for p in cand.problems])
    b = budgets["budget"].cast(pl.Float64).to_numpy()
    ids = budgets.drop("budget")
    chosen = np.full((b.size, cand.accuracy.shape[1]), -1, dtype=np.int64)
    train_acc = np.full(chosen.shape, np.nan)
    all_cost = cand.mean_cost()
    complete = np.ones(b.size, dtype=bool)
    for k in np.unique(fold):
        train, held = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        acc_k = cand.mean_accuracy(train)
        cost_k = cand.mean_cost(train) if cost_scope == "train" else all_cost
        pick = best_within(acc_k, cost_k, b)
        complete &= pick >= 0
        chosen[:, held] = pick[:, None]
        train_acc[:, held] = np.where(pick >= 0, acc_k[np.maximum(pick, 0)], np.nan)[:, None]
    bi, qi = np.nonzero((chosen >= 0) & complete[:, None])
    pi = chosen[bi, qi]
    acc = cand.accuracy[pi, qi]
    keep = ~np.isnan(acc)
    bi, qi, pi = bi[keep], qi[keep], pi[keep]
    out = pl.DataFrame({
        "_b": bi, "problem_id": [cand.problems[j] for j in qi], "fold": fold[qi].astype(np.int32),
        point: [cand.points[i] for i in pi], "accuracy": cand.accuracy[pi, qi],
        "accuracy_se": cand.accuracy_se[pi, qi], cost: cand.cost[pi, qi],
        "train_accuracy": train_acc[bi, qi],
    }, schema_overrides={"problem_id": pl.String, point: pl.String})
    head = ids.with_columns(budget=pl.Series(b)).with_row_index("_b").with_columns(pl.col("_b").cast(pl.Int64))
    return head.join(out.with_columns(pl.col("_b").cast(pl.Int64)), on="_b", how="inner").sort(
        "_b", "problem_id").drop("_b")


def in_sample(rows: pl.DataFrame, budgets, *, cost: str = "cost", point: str = "point") -> list[str | None]:
    """The in-sample choice per budget (all problems; `best_within`), None where none fits."""
    cand = candidates(rows, cost=cost, point=point)
    pick = best_within(cand.mean_accuracy(), cand.mean_cost(), budgets)
    return [cand.points[i] if i >= 0 else None for i in pick]


# --------------------------------------------------------------------------- model-size fit


def fit_loglog(params, budgets) -> tuple[float, float] | None:
    """Least-squares (a, b) of log10 C = a log10 N + b over (optimal size N, budget C)
    pairs; None unless at least two distinct sizes are optimal somewhere."""
    params, budgets = np.asarray(params, float), np.asarray(budgets, float)
    keep = (params > 0) & (budgets > 0) & np.isfinite(params) & np.isfinite(budgets)
    x, y = np.log10(params[keep]), np.log10(budgets[keep])
    if len(np.unique(x)) < 2:
        return None
    a, b = np.polyfit(x, y, 1)
    return float(a), float(b)


@dataclass(frozen=True)
class SizeFit:
    """The compute-optimal model-size fit log10 C = slope log10 N + intercept and its
    bootstrap percentile intervals (95%; NaN when too few resamples gave a fit)."""

    slope: float
    intercept: float
    slope_low: float
    slope_high: float
    intercept_low: float
    intercept_high: float
    resamples: int  # bootstrap resamples drawn
    fitted: int  # of them, how many had two or more optimal sizes (a fit)
    draws: np.ndarray = field(default_factory=lambda: np.empty((0, 2)), repr=False, compare=False)
    # (slope, intercept) of every resample with a fit, for bands on the fitted line


def bootstrap_size_fit(cand: Candidates, params, budgets, *, resamples: int = 1000,
                       seed: int = 0) -> SizeFit | None:
    """The model-size fit on the in-sample compute-optimal choice over `budgets` (each
    candidate's model size in `params`, aligned with `cand.points`), with a bootstrap
    over problems: each resample draws the problems with replacement, recomputes every
    candidate's mean accuracy and cost, the choice per budget and the fit. Percentile
    intervals over the resamples that have a fit. None when the data themselves have
    no fit (one size is optimal at every budget)."""
    params = np.asarray(params, float)
    budgets = np.asarray(budgets, float)

    def fit(cols=None):
        pick = best_within(cand.mean_accuracy(cols), cand.mean_cost(cols), budgets)
        ok = pick >= 0
        return fit_loglog(params[pick[ok]], budgets[ok])

    base = fit()
    if base is None:
        return None
    rng = np.random.default_rng(seed)
    q = len(cand.problems)
    draws = [fit(rng.integers(0, q, q)) for _ in range(resamples)]
    got = np.array([d for d in draws if d is not None], dtype=float).reshape(-1, 2)
    if len(got) >= max(20, resamples // 10):
        lo, hi = np.percentile(got, [2.5, 97.5], axis=0)
    else:
        lo = hi = np.array([math.nan, math.nan])
    return SizeFit(base[0], base[1], float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]),
                   resamples, int(len(got)), got)
