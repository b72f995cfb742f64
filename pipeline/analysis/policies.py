"""Binned policies over a grid of problems x points, and how they are judged.

A *policy* gives every problem a point (strategy, n, ...) by its difficulty bin. Inputs
are matrices over problems x points: accuracy (per problem, an expectation) and cost in
one convention; a `Difficulty` maps a training mask to every problem's difficulty (None:
one bin, the fixed policy). pipeline.analysis.allocation builds the matrices from the caches.

Choices (`fit_policy`): per bin, a point's training accuracy is shrunk towards its mean
over all training problems (`shrink` pseudo-problems, default 1): with a handful of
problems per bin many points tie, and the raw maximum would pick by noise, and among
exact ties the cheapest point however poor it is elsewhere. (The default was set on
synthetic caches, not on a results database.)

Honest evaluation (`cross_fit`). The problems are split into folds. For each fold the
difficulty fit, the bin edges and the knapsack choices are made on the other folds and
scored on it, so each problem is held out once. Per budget: held-out mean accuracy and its SE
across problems, held-out mean cost (which may differ from the budget: choices meet it
on the training folds), the in-sample accuracy (everything fitted and scored on all
problems: optimistic) and the paired difference adaptive - fixed over the same problems,
where "fixed" is the best single point within the budget chosen the same cross-fitted
way (the knapsack with one bin; like every choice here its costs are those of the
training folds). pipeline.analysis.allocation summarises held-out accuracies and paired
differences with pipeline.analysis.stats (`mean_se`, `paired`: each problem's Monte Carlo SE
counted).

Between two fixed points' costs a policy can fill the budget by giving each problem one
of the two at random: on the concave hull of the fixed points that beats the best single
point within the budget without knowing anything about difficulty. So the adaptive
policy is also compared with that *fixed mixture* (`hull_mixtures`, `cross_fit_mixture`,
chosen on the training folds the same way): the gain over the mixture is the gain due to
difficulty, the gain over the best point also counts the filled budget.

FLOPs saving (`savings`, `fixed_targets`). The target at budget B is the best held-out
accuracy of the fixed policy at any budget <= B, a_T(B), at its held-out mean cost
c_T(B) (the first budget reaching it). (Not simply the fixed policy at B: chosen among
many points on the training folds, the costliest budgets' fixed choice can do worse held
out than a cheaper one, and a deflated target would flatter the adaptive policy; the
best over budgets is a selection on held-out means in the fixed policy's favour.) The
adaptive policy's cost to reach it is the lowest held-out mean cost over the budgets B'
whose held-out accuracy is >= a_T(B); saving = c_T(B) / that (> 1: the adaptive policy
needs fewer FLOPs; NaN: it never reaches a_T(B)). The headline is the largest budget:
a_T is then the best fixed strategy's held-out accuracy. The 95% interval is the
percentile interval of the same statistic over `bootstrap` resamples of the problems
(per-problem held-out rows kept, choices not refitted; a resample where the target is
never reached counts as saving 0). Reading the cheapest budget that reaches the target
is a selection on noisy held-out means in the adaptive policy's favour; the paired
difference at equal budget is the test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.analysis.difficulty import assign_bins, bin_edges
from pipeline.analysis.knapsack import choose, pareto_assignments

_TOL = 1e-12  # accuracy differences below this are ties


@dataclass(frozen=True)
class Policy:
    """Choices fitted on some problems: bin edges, the difficulty of every problem and,
    per budget, the point of every bin (-1 where no assignment fits the budget)."""

    edges: np.ndarray
    difficulty: np.ndarray | None
    choices: np.ndarray  # (budgets, bins)


Difficulty = Callable[[np.ndarray], np.ndarray]  # train mask -> difficulty of every problem


def fit_policy(acc: np.ndarray, cost: np.ndarray, train: np.ndarray, budgets: np.ndarray, *,
               difficulty: Difficulty | None, bins: int, shrink: float = 1.0) -> Policy:
    """Bins and per-bin points from the `train` problems (difficulty None: one bin,
    i.e. the best fixed point).

    A bin's accuracy of a point is its mean over the bin's training problems shrunk
    toward the point's mean over all training problems, as if `shrink` more problems
    with that mean were in the bin: with a few problems per bin many points tie or
    nearly tie, and the raw maximum would pick by noise (and among exact ties the
    cheapest, however poor the point is elsewhere). Costs are not shrunk. With one bin
    the shrunk mean is the plain mean."""
    if difficulty is None:
        d, edges = None, np.zeros(0)
        b = np.zeros(acc.shape[0], dtype=np.intp)
    else:
        d = difficulty(train)
        edges = bin_edges(d[train], bins)
        b = assign_bins(d, edges)
    num_bins, m = edges.size + 1, int(train.sum())
    overall = acc[train].mean(axis=0)
    values, costs = [], []
    for i in range(num_bins):
        rows = train & (b == i)
        size = int(rows.sum())
        values.append((acc[rows].sum(axis=0) + shrink * overall) / (size + shrink) * size / m)
        costs.append(cost[rows].sum(axis=0) / m)
    front = pareto_assignments(values, costs, max_cost=float(np.max(budgets)))
    choices = np.full((len(budgets), num_bins), -1, dtype=np.intp)
    for t, budget in enumerate(budgets):
        s = choose(front, float(budget))
        if s is not None:
            choices[t] = front.choice[s]
    return Policy(edges, d, choices)


def apply_policy(policy: Policy, acc: np.ndarray, cost: np.ndarray,
                 rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For the problems `rows` (bool mask): bin (0-based), chosen point, accuracy and
    cost per budget, each (budgets, rows); NaN / -1 where the budget had no choice."""
    idx = np.flatnonzero(rows)
    b = (np.zeros(idx.size, dtype=np.intp) if policy.difficulty is None
         else assign_bins(policy.difficulty[idx], policy.edges))
    j = policy.choices[:, b]  # (budgets, rows)
    ok = j >= 0
    jj = np.where(ok, j, 0)
    a = np.where(ok, acc[idx[None, :], jj], np.nan)
    c = np.where(ok, cost[idx[None, :], jj], np.nan)
    return np.broadcast_to(b, j.shape), j, a, c


@dataclass(frozen=True)
class CrossFit:
    """Held-out per-problem results (budgets x problems) and the in-sample policy."""

    bins: np.ndarray
    choice: np.ndarray
    accuracy: np.ndarray
    cost: np.ndarray
    in_sample: Policy
    in_sample_accuracy: np.ndarray
    in_sample_cost: np.ndarray
    feasible: np.ndarray  # (budgets,) every fold and the in-sample fit have a choice


def cross_fit(acc: np.ndarray, cost: np.ndarray, folds: np.ndarray, budgets: np.ndarray, *,
              difficulty: Difficulty | None, bins: int = 5, shrink: float = 1.0) -> CrossFit:
    """Choose on the other folds, score on each fold; each problem is held out once."""
    m = acc.shape[0]
    nb = len(budgets)
    out = {key: np.full((nb, m), fill) for key, fill in
           (("bins", -1), ("choice", -1), ("accuracy", np.nan), ("cost", np.nan))}
    out["bins"] = out["bins"].astype(np.intp)
    out["choice"] = out["choice"].astype(np.intp)
    feasible = np.ones(nb, dtype=bool)
    for f in np.unique(folds):
        held = folds == f
        pol = fit_policy(acc, cost, ~held, budgets, difficulty=difficulty, bins=bins, shrink=shrink)
        feasible &= (pol.choices >= 0).all(axis=1)
        b, j, a, c = apply_policy(pol, acc, cost, held)
        out["bins"][:, held], out["choice"][:, held] = b, j
        out["accuracy"][:, held], out["cost"][:, held] = a, c
    everyone = np.ones(m, dtype=bool)
    pol = fit_policy(acc, cost, everyone, budgets, difficulty=difficulty, bins=bins, shrink=shrink)
    feasible &= (pol.choices >= 0).all(axis=1)
    _, _, a, c = apply_policy(pol, acc, cost, everyone)
    # a budget without a choice has NaN for every problem: its means stay NaN
    return CrossFit(out["bins"], out["choice"], out["accuracy"], out["cost"], pol,
                    a.mean(axis=1), c.mean(axis=1), feasible)


def hull_mixtures(mean_acc: np.ndarray, mean_cost: np.ndarray,
                  budgets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best *randomised* fixed policy per budget: on the upper concave hull of the
    points' (mean cost, mean accuracy), the two hull points around the budget, mixed so
    that the mean cost is the budget (the costliest hull point above it). Returns
    (first, second, weight of first) per budget; first = -1 where nothing fits."""
    order = np.lexsort((-mean_acc, mean_cost))
    hull: list[int] = []
    for j in order.tolist():
        if not (np.isfinite(mean_acc[j]) and np.isfinite(mean_cost[j])):
            continue
        if hull and mean_acc[j] <= mean_acc[hull[-1]] + _TOL:
            continue  # costs no less, is no more accurate
        while len(hull) >= 2:
            (c0, a0), (c1, a1) = ((mean_cost[h], mean_acc[h]) for h in hull[-2:])
            if (a1 - a0) * (mean_cost[j] - c0) <= (mean_acc[j] - a0) * (c1 - c0):
                hull.pop()  # on or below the chord: a mix of its neighbours does as well
            else:
                break
        hull.append(j)
    hc = mean_cost[hull]
    first = np.full(len(budgets), -1, dtype=np.intp)
    second = np.full(len(budgets), -1, dtype=np.intp)
    weight = np.ones(len(budgets))
    for t, budget in enumerate(budgets):
        i = int(np.searchsorted(hc, budget * (1 + 1e-9), side="right")) - 1
        if i < 0:
            continue
        if i == len(hull) - 1:
            first[t] = second[t] = hull[i]
            continue
        first[t], second[t] = hull[i], hull[i + 1]
        weight[t] = min(1.0, (hc[i + 1] - budget) / (hc[i + 1] - hc[i]))
    return first, second, weight


def cross_fit_mixture(acc: np.ndarray, cost: np.ndarray, folds: np.ndarray, budgets: np.ndarray,
                      acc_se: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Held-out (budgets, problems) expected accuracy and cost of the hull mixture chosen
    on the other folds, per budget whether every fold could meet it, and the Monte Carlo
    SE of each problem's expected accuracy (from the points' `acc_se`, 0 without). This
    is what the adaptive policy achieves when its bins carry no information (each
    problem gets one of two points at random), so the gain over it is the gain from
    difficulty."""
    nb, m = len(budgets), acc.shape[0]
    var = np.zeros_like(acc) if acc_se is None else np.asarray(acc_se, dtype=float) ** 2
    out_a, out_c = np.full((nb, m), np.nan), np.full((nb, m), np.nan)
    out_v = np.full((nb, m), np.nan)
    feasible = np.ones(nb, dtype=bool)
    for f in np.unique(folds):
        held = folds == f
        first, second, w = hull_mixtures(acc[~held].mean(axis=0), cost[~held].mean(axis=0), budgets)
        ok = first >= 0
        feasible &= ok
        a, b, w = first[ok], second[ok], w[ok][:, None]
        idx = np.flatnonzero(held)
        rows = np.flatnonzero(ok)
        out_a[np.ix_(rows, idx)] = w * acc[idx][:, a].T + (1 - w) * acc[idx][:, b].T
        out_c[np.ix_(rows, idx)] = w * cost[idx][:, a].T + (1 - w) * cost[idx][:, b].T
        # the two points' Monte Carlo errors are independent (a == b: one point, w = 1)
        out_v[np.ix_(rows, idx)] = w**2 * var[idx][:, a].T + (1 - w) ** 2 * var[idx][:, b].T
    return out_a, out_c, feasible, np.sqrt(out_v)


def fixed_targets(acc_f: np.ndarray, cost_f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., budgets) -> the best fixed accuracy at any budget up to each one (the first
    budget reaching it on ties) and its cost: the target the saving is measured at."""
    best_a, best_c = acc_f[..., 0].copy(), cost_f[..., 0].copy()
    out_a, out_c = [best_a], [best_c]
    for t in range(1, acc_f.shape[-1]):
        better = acc_f[..., t] > best_a + _TOL
        best_a = np.where(better, acc_f[..., t], best_a)
        best_c = np.where(better, cost_f[..., t], best_c)
        out_a.append(best_a)
        out_c.append(best_c)
    return np.stack(out_a, axis=-1), np.stack(out_c, axis=-1)


def _saving(acc_a, cost_a, acc_f, cost_f) -> np.ndarray:
    """(..., budgets) curves -> (..., budgets) saving c_T / min{c_A : a_A >= a_T} at the
    fixed target (a_T, c_T) of each budget; 0 where the adaptive curve never reaches it."""
    target_a, target_c = fixed_targets(acc_f, cost_f)
    reach = acc_a[..., None, :] >= target_a[..., :, None] - _TOL  # (..., target, budget')
    need = np.where(reach, cost_a[..., None, :], np.inf).min(axis=-1)
    return np.where(np.isfinite(need), target_c / need, 0.0)


def savings(acc_a: np.ndarray, cost_a: np.ndarray, acc_f: np.ndarray, cost_f: np.ndarray, *,
            reps: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per budget: the saving (NaN if not reached) and its bootstrap percentile
    interval over problems, from per-problem held-out (budgets, problems) matrices."""
    means = [x.mean(axis=1) for x in (acc_a, cost_a, acc_f, cost_f)]
    point = _saving(*means)
    point = np.where(point > 0, point, np.nan)
    m = acc_a.shape[1]
    if reps < 1 or m < 2:
        return point, np.full_like(point, np.nan), np.full_like(point, np.nan)
    w = np.random.default_rng(seed).multinomial(m, np.full(m, 1.0 / m), size=reps) / m  # (reps, m)
    boot = _saving(*[w @ x.T for x in (acc_a, cost_a, acc_f, cost_f)])  # (reps, budgets)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return point, lo, hi
