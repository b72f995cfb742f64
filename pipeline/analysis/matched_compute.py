"""Comparisons at matched compute: a point against a curve at the same mean FLOPs, and the
FLOPs a curve needs to reach a point's accuracy. Pure functions over per-problem rows.

A *curve* is a list of points of one strategy at increasing cost (majority voting at
n = 1, 2, ..., N; best-of-N; a search at several budgets). Between two adjacent points L and
H of mean costs C_L < C_H, the mixture that runs H on a random fraction w of the problems
and L on the others costs (1 - w) C_L + w C_H per problem on average, and its expected
accuracy on problem i is (1 - w) a_L,i + w a_H,i: a policy one can run, so the curve is
defined per problem at every cost between its cheapest and its costliest point
(`curve_at`), piecewise linear in FLOPs, and a point compares with it *paired*, problem by
problem, at exactly the point's own mean cost (`matched_difference`). A point cheaper than
the curve's cheapest or dearer than its costliest point has no match (no extrapolation).

The FLOPs the curve needs to reach a point's accuracy (`flops_ratio`): the first cost at
which the piecewise-linear curve of mean accuracies reaches it, divided by the point's
mean cost (> 1: the curve needs more FLOPs, i.e. the point saves compute). Censored at
the ends: where the curve's cheapest point already reaches it the curve needs *at most*
its cheapest cost (the ratio is an upper bound, "<="); where no point reaches it, *more*
than its costliest (">"). Its 95% interval is a percentile bootstrap over problems (the
point and the curve resampled together, paired), with a censored resample counting as 0
("at most") or infinity ("more than"), so censoring can only widen the interval.

Use (e.g. tree search against sampling):

    m = matched_difference(rows, "s/rebase_majority[v]@8", ["s/majority@1", ..., "s/majority@16"])
    m.paired.diff, m.paired.ci_low, m.paired.ci_high, m.mixture   # accuracy at equal FLOPs
    r = flops_ratio(rows, "s/rebase_majority[v]@8", [...], resamples=2000, seed=0)
    r.ratio, r.ci_low, r.ci_high, r.censored                       # FLOPs sampling needs / point's

`rows` are per-problem rows with columns point, problem_id, accuracy, accuracy_se
(optional: each problem's Monte Carlo SE) and the cost column (`cost`, default
"flops_paper"), e.g. pipeline.aggregate.candidate_rows or the `point_problems` view.
Only problems every involved point has are used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from pipeline.analysis import stats

RESAMPLES = 2000


@dataclass(frozen=True)
class Curve:
    """A curve's points sorted by mean cost, on common problems."""

    points: list[str]
    accuracy: np.ndarray  # (m, n)
    mc_var: np.ndarray  # (m, n) Monte Carlo variances
    cost: np.ndarray  # (m, n) per-problem costs
    problems: list[str]

    @property
    def mean_cost(self) -> np.ndarray:
        return self.cost.mean(axis=1)


@dataclass(frozen=True)
class Matched:
    """A point against the curve at the point's own mean cost (paired)."""

    point: str
    flops: float  # the point's mean cost = the mixture's
    mixture: str  # e.g. "0.35 x majority@8 + 0.65 x majority@16" ("" when no match)
    paired: stats.Paired  # point - mixture, per problem


@dataclass(frozen=True)
class Ratio:
    """FLOPs the curve needs to reach the point's accuracy, over the point's FLOPs."""

    point: str
    ratio: float
    ci_low: float
    ci_high: float
    censored: str  # "" | "at most" (curve's cheapest point reaches it) | "more than" (no point does)
    needed_flops: float
    point_flops: float
    point_accuracy: float
    resamples: int
    num_problems: int


def _wide(rows: pl.DataFrame, points: list[str], cost: str) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(problems, accuracy, mc variance, cost) matrices (len(points), problems) over the
    problems every point has."""
    sub = rows.filter(pl.col("point").is_in(points))
    if "accuracy_se" not in sub.columns:
        sub = sub.with_columns(accuracy_se=pl.lit(0.0))
    sub = sub.select("point", pl.col("problem_id").cast(pl.String), "accuracy",
                     pl.col("accuracy_se").fill_null(0.0), pl.col(cost).alias("_cost"))
    have = sub.group_by("problem_id").agg(pl.col("point").n_unique().alias("k"))
    common = sorted(have.filter(pl.col("k") == len(set(points)))["problem_id"].to_list())
    idx = {q: j for j, q in enumerate(common)}
    shape = (len(points), len(common))
    acc, var, cst = np.full(shape, np.nan), np.zeros(shape), np.full(shape, np.nan)
    row_of = {p: i for i, p in enumerate(points)}
    for p, q, a, se, c in sub.filter(pl.col("problem_id").is_in(common)).iter_rows():
        i, j = row_of[p], idx[q]
        acc[i, j], var[i, j], cst[i, j] = a, (se or 0.0) ** 2, c
    return common, acc, var, cst


def curve(rows: pl.DataFrame, points: list[str], *, cost: str = "flops_paper") -> Curve:
    """The curve of `points` (any order) on their common problems, sorted by mean cost."""
    problems, acc, var, cst = _wide(rows, list(dict.fromkeys(points)), cost)
    pts = list(dict.fromkeys(points))
    order = np.argsort(cst.mean(axis=1) if cst.size else np.zeros(len(pts)), kind="stable")
    return Curve([pts[i] for i in order], acc[order], var[order], cst[order], problems)


def curve_at(c: Curve, target: float) -> tuple[np.ndarray, np.ndarray, str] | None:
    """Per-problem expected accuracy and Monte Carlo variance of the mixture of the two
    adjacent curve points whose mean cost is `target` (module docstring), and its
    description; None outside the curve's cost range."""
    mc = c.mean_cost
    if not len(c.points) or not (mc[0] * (1 - 1e-9) <= target <= mc[-1] * (1 + 1e-9)):
        return None
    j = int(np.searchsorted(mc, target, side="left"))
    if j < len(mc) and math.isclose(mc[j], target, rel_tol=1e-9):
        return c.accuracy[j], c.mc_var[j], c.points[j]
    j = min(max(j, 1), len(mc) - 1)
    lo, hi = j - 1, j
    w = (target - mc[lo]) / (mc[hi] - mc[lo])
    acc = (1 - w) * c.accuracy[lo] + w * c.accuracy[hi]
    var = (1 - w) ** 2 * c.mc_var[lo] + w**2 * c.mc_var[hi]
    return acc, var, f"{1 - w:.2f} x {c.points[lo]} + {w:.2f} x {c.points[hi]}"


def matched_difference(rows: pl.DataFrame, point: str, curve_points: list[str], *,
                       cost: str = "flops_paper") -> Matched:
    """`point` minus the curve of `curve_points` at the point's mean cost, paired over the
    problems all of them have (stats.contrast: Monte Carlo variances of the point and of
    the mixture counted; degenerate inputs not testable). Not testable (with the reason)
    when the point's cost lies outside the curve's range."""
    c = curve(rows, [point, *[p for p in curve_points if p != point]], cost=cost)
    if point not in c.points or not c.problems:
        return Matched(point, math.nan, "", stats.untestable("no common problems"))
    i = c.points.index(point)
    flops = float(c.cost[i].mean())
    rest = [j for j in range(len(c.points)) if j != i]
    sampling = Curve([c.points[j] for j in rest], c.accuracy[rest], c.mc_var[rest], c.cost[rest], c.problems)
    at = curve_at(sampling, flops)
    if at is None:
        mc = sampling.mean_cost
        where = "below the curve's cheapest point" if len(mc) and flops < mc[0] else "beyond the curve's costliest point"
        rng = f" ({mc[0]:.3g} to {mc[-1]:.3g})" if len(mc) else ""
        return Matched(point, flops, "", stats.untestable(f"{flops:.3g} FLOPs is {where}{rng}", len(c.problems)))
    acc, var, mix = at
    p = stats.contrast(c.accuracy[i] - acc, c.mc_var[i] + var, accuracy_a=float(c.accuracy[i].mean()),
                       accuracy_b=float(acc.mean()))
    return Matched(point, flops, mix, p)


def needed_cost(acc: np.ndarray, cost: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised over resamples: acc, cost (B, m) the curve's mean accuracies and costs
    (sorted by cost), target (B,). The first cost where the piecewise-linear curve
    reaches the target, as (lower, upper) bounds: equal where it crosses between two
    points; (0, cost[0]) where its first point already reaches it (censored: at most
    cost[0]); (cost[-1], inf) where no point does (more than cost[-1])."""
    reach = acc >= target[:, None] - 1e-12
    anyr = reach.any(axis=1)
    j = np.argmax(reach, axis=1)
    rows = np.arange(acc.shape[0])
    jm = np.maximum(j - 1, 0)
    a0, a1 = acc[rows, jm], acc[rows, j]
    c0, c1 = cost[rows, jm], cost[rows, j]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(a1 > a0, (target - a0) / (a1 - a0), 1.0)
    at = c0 + np.clip(frac, 0.0, 1.0) * (c1 - c0)
    lower = np.where(anyr, np.where(j == 0, 0.0, at), cost[:, -1])
    upper = np.where(anyr, np.where(j == 0, cost[:, 0], at), np.inf)
    return lower, upper


def flops_ratio(rows: pl.DataFrame, point: str, curve_points: list[str], *, cost: str = "flops_paper",
                resamples: int = RESAMPLES, seed: int = 0) -> Ratio:
    """The FLOPs the curve needs to reach `point`'s mean accuracy over the point's mean
    FLOPs, with a paired percentile-bootstrap 95% interval over problems (module
    docstring): the interval's lower end from the resamples' lower bounds, its upper end
    from their upper bounds, so a censored resample can only widen it. NaN (num_problems
    0) without common problems. A censored estimate is its bound ("at most" / "more than")."""
    c = curve(rows, [point, *[p for p in curve_points if p != point]], cost=cost)
    if point not in c.points or len(c.problems) < 2 or len(c.points) < 2:
        return Ratio(point, math.nan, math.nan, math.nan, "", math.nan, math.nan, math.nan, 0, len(c.problems))
    i = c.points.index(point)
    rest = [j for j in range(len(c.points)) if j != i]
    n = len(c.problems)
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(float) / n  # (B, n)
    w = np.vstack([np.full((1, n), 1.0 / n), w])  # row 0: the sample itself
    acc_p = w @ c.accuracy[i]
    cost_p = w @ c.cost[i]
    order = np.argsort(c.cost[rest].mean(axis=1), kind="stable")
    acc_c = (w @ c.accuracy[rest].T)[:, order]  # (B + 1, m)
    cost_c = (w @ c.cost[rest].T)[:, order]
    lower, upper = needed_cost(acc_c, cost_c, acc_p)
    lo_ratio, hi_ratio = lower / cost_p, upper / cost_p
    censored = "at most" if lower[0] == 0 else "more than" if np.isinf(upper[0]) else ""
    est = float(hi_ratio[0] if censored == "at most" else lo_ratio[0])
    ci_low = float(np.quantile(lo_ratio[1:], 0.025, method="inverted_cdf"))
    ci_high = float(np.quantile(hi_ratio[1:], 0.975, method="inverted_cdf"))
    return Ratio(point, est, ci_low, ci_high, censored, est * float(cost_p[0]), float(cost_p[0]),
                 float(acc_p[0]), resamples, n)
