"""Difficulty-adaptive compute-optimal allocation, replayed from the caches.

A fixed strategy spends one point (strategy, prm, aggregation, n) on every problem. The
adaptive policy first draws a probe of k samples per problem, predicts the problem's
difficulty from it without the reference answer (pipeline.analysis.difficulty), puts the problem
into a difficulty bin and spends that bin's point. For a mean-cost budget per problem the
bins' points are chosen to maximise expected accuracy (Snell et al., arXiv 2408.03314),
by an exact multiple-choice knapsack (pipeline.analysis.knapsack). All of it replays what the
workflow cached: grades, PRM step scores and the per-problem `replay` rows (tree search
included); no model runs, CPU only. The aggregate job runs it (`database_tables`) with
the config's `analysis.adaptive` settings (DEFAULTS where missing).

Points and their cost to the adaptive policy (pipeline.analysis.point_grid): every non-oracle
point of `replay` with a row for every graded problem (the headline aggregations); a
voting or best-of-n point reuses the probe's k samples (max(n, k) samples, the probe's
PRM scores charged once), any other point (greedy, tree search) pays probe + its own
run. The fixed policy pays no probe.

Accuracy: the fixed policy uses replay's accuracies. The adaptive policy scores sampling
points *given the probe* (pipeline.analysis.difficulty.conditional_accuracy: the probe plus random
fresh samples from the rest of the cache), since its bins are functions of the probe;
greedy and tree-search runs are independent of the probe given the problem, so their
replay accuracy stands. (`conditional=False` uses replay's unconditional accuracies
instead: the naive replay, to measure the selection effect.) Every per-problem accuracy
keeps its Monte Carlo SE (0 where exact).

Difficulty sources: "predicted" bins by the probe's predicted difficulty; "oracle" bins
by 1 - pass@1 over all N samples, which needs the reference answers, with the same
points, costs and accuracies, so the two differ only in what the bins know. The oracle
is a reference, not a guaranteed upper bound: it knows the problem's difficulty exactly
but not how this probe's own samples came out, which the predicted bins see (and which
decides what reusing them is worth).

Choosing and scoring (pipeline.analysis.policies): per budget the bins' points are fitted on
the training folds and scored on the held-out fold. Folds: the `folds` table of the
analysis (pipeline.analysis.stats.folds_table from `analysis.folds` and `analysis.seed`), the
same split every held-out choice of the views uses. The comparisons are the best fixed
point and the best fixed mixture within the same budget, chosen the same way; held-out
means and their SEs by pipeline.analysis.stats.mean_se, paired differences by
pipeline.analysis.stats.paired (95% normal intervals); the FLOPs the adaptive policy saves at the
best fixed point's held-out accuracy, with a bootstrap interval (`analysis.bootstrap`
resamples of the problems). A dataset with fewer than 2 folds is left out (note on
stderr).

Outputs of `allocate` (polars frames; `database_tables` adds the `strategies` rows):
    summary    table `adaptive`: one row per dataset x model x source ("predicted" |
               "oracle") x convention x budget: SUMMARY_SCHEMA, see README "Querying the
               results". A budget has a row when both policies can meet it in every fold;
               budgets form a log grid, `budgets_per_decade` per decade (budget =
               10^(j / budgets_per_decade)) from the cheapest fixed point to the costliest
               point of either policy on any fold's training problems. `point` names the
               `replay` point that holds the held-out rows.
    problems   table `adaptive_problems`: per held-out problem, dataset, model, source
               (null for fixed), policy ("adaptive" | "fixed"), convention, budget, point
               (adaptive only), problem_id, fold, bin (1-based; null for fixed), choice
               (point label), accuracy, accuracy_se, cost, and the chosen point's cost
               (probe included) in every convention's column and the token columns.
    difficulty table `difficulty`: per problem: dataset, model, problem_id, fold,
               agreement, prm_mean, pass1, predicted (fitted on all problems), oracle
               (1 - pass1).

The adaptive policy in `replay` (`Allocation.replay`): strategy views.adaptive_strategy(c)
("adaptive_paper", "adaptive_full"; "adaptive_oracle_<c>" with oracle bins, flagged
oracle, so never on the front), family "difficulty-adaptive"; prm = the PRM the probe
reads (NULL: agreement only); aggregation NULL (the bins' points use the headline
aggregations, so the rows are headline points); n = the budget's grid index j; the
accuracy, accuracy_se and costs are the *held-out* per-problem results (each problem
under the policy fitted on the other folds), so the point's accuracy is already a
held-out accuracy. Budgets whose held-out choices equal a cheaper budget's give no new
point. Each convention's policy is chosen for that convention's budget, and its rows
carry its real costs in every convention, so it enters every convention's front like
any other point (the paper-chosen policy with its full costs in the full front too).
The views' held-out choices (`held_out_problems`, pipeline.analysis.stats.crossfit over every
headline non-oracle point) treat an adaptive point like any other candidate. Strictly,
a fold's choice between it and a fixed point then reads held-out values that the other
folds' policies fitted with this fold's problems among their training problems: a
second-order leak that nested cross-fitting would remove. The paper's claims (table
`claims`) are tested on the fixed strategies only.

Run on a finished database: `python -m pipeline.analysis.allocation --db results/inference.duckdb
[--plot out.png]` (settings from its `analysis` table unless given).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.analysis import stats, views
from pipeline.analysis.difficulty import (
    conditional_accuracy,
    fit_difficulty,
    probe_features,
    sample_arrays,
)
from pipeline.analysis.point_grid import (
    CARRIED_COLUMNS,
    CONVENTIONS,
    cost_matrix,
    point_grid,
)
from pipeline.analysis.policies import (
    CrossFit,
    Difficulty,
    cross_fit,
    cross_fit_mixture,
    fixed_targets,
    savings,
)

SOURCES = ("predicted", "oracle")
EXACT_LIMIT = 2000  # conditional accuracies by enumeration up to this many subsets

# `analysis.adaptive` (config/config.schema.yaml describes every key).
DEFAULTS = {"enabled": True, "probe_samples": 4, "bins": 5, "probe_prm": None, "probe_aggregation": "last",
            "budgets_per_decade": 8, "shrink": 1.0, "num_draws": 1000}
# ... as recorded in the database (`analysis.adaptive`, a STRUCT)
SETTINGS_SCHEMA = pl.Struct({
    "enabled": pl.Boolean, "probe_samples": pl.Int32, "bins": pl.Int32, "probe_prm": pl.String,
    "probe_aggregation": pl.String, "budgets_per_decade": pl.Int32, "shrink": pl.Float64, "num_draws": pl.Int32,
})


def settings(adaptive: Mapping | None) -> dict:
    """`analysis.adaptive` over DEFAULTS."""
    unknown = set(adaptive or {}) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"analysis.adaptive: unknown key(s) {sorted(unknown)}")
    return {**DEFAULTS, **(adaptive or {})}


def check_config(config: Mapping) -> None:
    """What the schema cannot check, before any job: the probe fits in the sampled cache
    and reads a configured PRM."""
    s = settings((config.get("analysis") or {}).get("adaptive"))
    if not s["enabled"]:
        return
    # the smallest cache of any model (models.<m>.n over sampling.n)
    n, where = min([(int(config["sampling"]["n"]), "sampling.n")]
                   + [(int(m["n"]), f"models.{name}.n") for name, m in (config.get("models") or {}).items() if "n" in m])
    if s["probe_samples"] > n:
        raise ValueError(f"analysis.adaptive.probe_samples = {s['probe_samples']} exceeds {where} = {n}: "
                         "the probe is the first probe_samples cached samples (lower it, or set "
                         "analysis.adaptive.enabled: false)")
    prms = config.get("prms") or {}
    if s["probe_prm"] is not None and s["probe_prm"] not in prms:
        raise ValueError(f"analysis.adaptive.probe_prm = {s['probe_prm']!r} is not one of prms "
                         f"({sorted(prms)})")


# --------------------------------------------------------------------------- budgets


def budget_grid(lo: float, hi: float, per_decade: int) -> np.ndarray:
    """10^(j / per_decade) from the grid value at or below lo to the one at or above hi."""
    a = math.floor(per_decade * math.log10(lo) + 1e-9)
    b = math.ceil(per_decade * math.log10(hi) - 1e-9)
    return 10.0 ** (np.arange(a, b + 1) / per_decade)


# --------------------------------------------------------------------------- schemas

SUMMARY_SCHEMA = {
    "dataset": pl.String, "model": pl.String, "source": pl.String, "oracle": pl.Boolean,
    "convention": pl.String, "budget": pl.Float64, "log10_budget": pl.Float64, "point": pl.String,
    "probe_samples": pl.Int32, "probe_prm": pl.String, "num_bins": pl.Int32, "num_folds": pl.Int32,
    "num_problems": pl.Int32, "accuracy": pl.Float64, "accuracy_se": pl.Float64, "flops": pl.Float64,
    "in_sample_accuracy": pl.Float64, "in_sample_flops": pl.Float64, "choices": pl.String,
    "fixed_choice": pl.String, "fixed_accuracy": pl.Float64, "fixed_accuracy_se": pl.Float64,
    "fixed_flops": pl.Float64, "fixed_in_sample_accuracy": pl.Float64,
    "diff": pl.Float64, "diff_se": pl.Float64, "diff_ci_low": pl.Float64, "diff_ci_high": pl.Float64,
    "diff_p": pl.Float64,
    "mix_accuracy": pl.Float64, "mix_accuracy_se": pl.Float64, "mix_flops": pl.Float64,
    "mix_diff": pl.Float64, "mix_diff_se": pl.Float64, "mix_diff_ci_low": pl.Float64,
    "mix_diff_ci_high": pl.Float64, "mix_diff_p": pl.Float64,
    "target_accuracy": pl.Float64, "target_flops": pl.Float64,
    "saving": pl.Float64, "saving_ci_low": pl.Float64, "saving_ci_high": pl.Float64,
}
DIFFICULTY_SCHEMA = {
    "dataset": pl.String, "model": pl.String, "problem_id": pl.String, "fold": pl.Int32,
    "agreement": pl.Float64, "prm_mean": pl.Float64, "pass1": pl.Float64, "predicted": pl.Float64,
    "oracle": pl.Float64,
}


def replay_schema(conventions: Mapping[str, str] = CONVENTIONS) -> dict:
    """The `replay` columns (pipeline.aggregate.REPLAY_COLUMNS) of the adaptive rows."""
    return {"dataset": pl.String, "model": pl.String, "prm": pl.String, "aggregation": pl.String,
            "problem_id": pl.String, "strategy": pl.String, "n": pl.Int32, "accuracy": pl.Float64,
            "accuracy_se": pl.Float64, **{c: pl.Float64 for c in CARRIED_COLUMNS},
            **{c: pl.Float64 for c in conventions.values()}}


def problems_schema(conventions: Mapping[str, str] = CONVENTIONS) -> dict:
    return {
        "dataset": pl.String, "model": pl.String, "source": pl.String, "policy": pl.String,
        "convention": pl.String, "budget": pl.Float64, "point": pl.String, "problem_id": pl.String,
        "fold": pl.Int32, "bin": pl.Int32, "choice": pl.String, "accuracy": pl.Float64,
        "accuracy_se": pl.Float64, "cost": pl.Float64,
        **{col: pl.Float64 for col in [*conventions.values(), *CARRIED_COLUMNS]},
    }


# --------------------------------------------------------------------------- the whole replay


@dataclass(frozen=True)
class Allocation:
    summary: pl.DataFrame
    problems: pl.DataFrame
    difficulty: pl.DataFrame
    replay: pl.DataFrame  # the adaptive policies' `replay` rows (module docstring)


def _sampled_cache(grades: pl.DataFrame, dataset: str, model: str) -> pl.DataFrame:
    g = grades.filter((pl.col("dataset") == dataset) & (pl.col("model") == model))
    if "kind" in g.columns:
        g = g.filter(pl.col("kind") == "sampled")
    if "key" in g.columns and g["key"].n_unique() > 1:
        raise ValueError(f"allocation: {dataset}/{model} has {g['key'].n_unique()} sampled caches "
                         f"(keys {sorted(g['key'].unique().to_list())}); replay holds one per model")
    return g


def _fold_array(folds: pl.DataFrame, dataset: str, problems: Sequence[str]) -> np.ndarray:
    f = dict(folds.filter(pl.col("dataset") == dataset).select(pl.col("problem_id").cast(pl.String), "fold")
             .iter_rows())
    missing = [p for p in problems if p not in f]
    if missing:
        raise ValueError(f"allocation: no fold for problem {missing[0]!r} of dataset {dataset!r} "
                         f"({len(missing)} missing)")
    return np.array([f[p] for p in problems], dtype=np.int64)


def _pick(matrix: np.ndarray, choice: np.ndarray) -> np.ndarray:
    """(budgets, problems) values of the chosen points (choice -1: NaN)."""
    m = matrix.shape[0]
    return np.where(choice >= 0, matrix[np.arange(m)[None, :], np.maximum(choice, 0)], np.nan)


def _choices_text(choices: np.ndarray, labels: Sequence[str]) -> str:
    return "; ".join(f"bin{i + 1}: {labels[j]}" for i, j in enumerate(choices))


def allocate(tables: Mapping[str, pl.DataFrame], *, folds: pl.DataFrame | None = None,
             probe_samples: int = 4, bins: int = 5, aggregations: Sequence[str] | None = ("last",),
             probe_prm: str | None = None, probe_aggregation: str = "last",
             conventions: Mapping[str, str] = CONVENTIONS, budgets_per_decade: int = 8, num_folds: int = 5,
             seed: int = 0, num_draws: int = 1000, bootstrap: int = 1000, conditional: bool = True,
             shrink: float = 1.0) -> Allocation:
    """The adaptive policies of every dataset x model in `tables` (frames as in the
    database: replay, grades, and scores when there is a PRM).

    folds: (dataset, problem_id, fold), the analysis' `folds` table; None: made by
    pipeline.analysis.stats.folds_table with `num_folds` and `seed`. probe_prm: the PRM the probe
    reads (None: the first by name that scored this model's samples; none at all: the
    probe uses answer agreement alone). aggregations: the points' step aggregations
    (None: all). conditional: score sampling points given the probe (see the module
    docstring); False reproduces the naive replay. shrink: see policies.fit_policy.
    num_draws: see difficulty.conditional_accuracy. bootstrap, seed: the saving's
    bootstrap resamples and their seed."""
    replay, grades = tables["replay"], tables["grades"]
    scores = tables.get("scores")
    k = probe_samples
    if folds is None:
        folds = stats.folds_table(grades.select("dataset", pl.col("problem_id").cast(pl.String)), num_folds, seed)
    summary, per_problem, difficulty, replay_parts = [], [], [], []
    pairs_models = (grades.filter(pl.col("kind") == "sampled") if "kind" in grades.columns else grades) \
        .select("dataset", "model").unique().sort("dataset", "model").rows()
    for dataset, model in pairs_models:
        g = _sampled_cache(grades, dataset, model)
        r = replay.filter((pl.col("dataset") == dataset) & (pl.col("model") == model))
        if r.is_empty():
            continue
        problems = g["problem_id"].cast(pl.String).unique(maintain_order=True).to_list()
        fold = _fold_array(folds, dataset, problems)
        if np.unique(fold).size < 2:
            print(f"allocation: {dataset}/{model} left out: {len(problems)} problem(s) in "
                  f"{np.unique(fold).size} fold(s), none to hold out", file=sys.stderr)
            continue
        s = None if scores is None else scores.filter((pl.col("dataset") == dataset) & (pl.col("model") == model))
        prm = probe_prm
        if prm is None and s is not None and s.height:
            prm = sorted(s["prm"].unique().to_list())[0]
        grid = point_grid(r, problems, aggregations=aggregations, conventions=conventions)
        needed = {(p, a) for p, a, smp in grid.points.select("prm", "aggregation", "sampling").rows()
                  if smp and p is not None}
        if prm is not None:
            needed.add((prm, probe_aggregation))
        samples = sample_arrays(g, s, sorted(needed))
        if not 1 <= k <= samples.answer_class.shape[1]:
            raise ValueError(f"allocation: analysis.adaptive.probe_samples = {k} must lie in 1..N = "
                             f"{samples.answer_class.shape[1]}, the cached samples of {dataset}/{model}")
        feats = probe_features(samples, k=k, prm=prm, aggregation=probe_aggregation)
        acc_adapt, se_adapt = grid.accuracy, grid.accuracy_se
        if conditional:
            cond, cond_se = conditional_accuracy(samples, grid.points, k=k, num_draws=num_draws,
                                                 exact_limit=EXACT_LIMIT, seed=seed)
            acc_adapt = np.where(np.isnan(cond), grid.accuracy, cond)
            se_adapt = np.where(np.isnan(cond), grid.accuracy_se, cond_se)
        X = feats.select("agreement", *(["prm_mean"] if prm is not None else [])).to_numpy()
        pass1 = feats["pass1"].to_numpy()
        predict: Difficulty = lambda train: fit_difficulty(X, pass1, train)  # noqa: E731
        oracle: Difficulty = lambda train: 1.0 - pass1  # noqa: E731
        everyone = np.ones(len(problems), dtype=bool)
        difficulty.append(feats.with_columns(
            pl.lit(dataset).alias("dataset"), pl.lit(model).alias("model"), pl.Series("fold", fold),
            pl.Series("predicted", predict(everyone)), pl.Series("oracle", oracle(everyone))))
        labels = grid.points["label"].to_list()
        adapt_costs = {c: cost_matrix(grid, c, k=k, probe_prm=prm) for c in grid.cost}
        # per-problem rows carry the chosen point's cost in every cost column
        carry = {"fixed": grid.cost, "adaptive": adapt_costs}
        column = {c: conventions.get(c, c) for c in grid.cost}
        tags = {"dataset": dataset, "model": model}
        for conv in conventions:
            cost_fixed, cost_adapt = grid.cost[conv], adapt_costs[conv]
            lo = float(np.nanmin(cost_fixed.mean(axis=0)))
            # up to a budget that affords the costliest point on every fold's training problems
            hi = max(float(np.nanmax(c[fold != f].mean(axis=0))) for c in (cost_fixed, cost_adapt)
                     for f in np.unique(fold))
            budgets = budget_grid(lo, hi, budgets_per_decade)
            fixed = cross_fit(grid.accuracy, cost_fixed, fold, budgets, difficulty=None)
            fixed_se = _pick(grid.accuracy_se, fixed.choice)
            mix = cross_fit_mixture(grid.accuracy, cost_fixed, fold, budgets, grid.accuracy_se)
            for t in np.flatnonzero(fixed.feasible):
                per_problem.append(_problem_rows(
                    {**tags, "source": None, "policy": "fixed", "convention": conv, "budget": budgets[t],
                     "point": None},
                    problems, fold, None, fixed.choice[t], fixed.accuracy[t], fixed_se[t], fixed.cost[t],
                    {column[c]: v for c, v in carry["fixed"].items()}, labels))
            for source in SOURCES:
                cf = cross_fit(acc_adapt, cost_adapt, fold, budgets, difficulty=predict if source == "predicted"
                               else oracle, bins=bins, shrink=shrink)
                ok = np.flatnonzero(cf.feasible & fixed.feasible & mix[2])
                if ok.size == 0:
                    continue
                cf_se = _pick(se_adapt, cf.choice)
                sav = savings(cf.accuracy[ok], cf.cost[ok], fixed.accuracy[ok], fixed.cost[ok],
                              reps=bootstrap, seed=seed)
                target = fixed_targets(fixed.accuracy[ok].mean(axis=1), fixed.cost[ok].mean(axis=1))
                strategy = views.adaptive_strategy(conv, oracle=source == "oracle")
                seen: dict[tuple, str] = {}
                for i, t in enumerate(ok):
                    # a budget whose held-out choices equal a cheaper one's is that point again
                    n = round(budgets_per_decade * math.log10(budgets[t]))
                    point = seen.get(tuple(cf.choice[t]))
                    if point is None:
                        point = seen[tuple(cf.choice[t])] = views.point_label(model, prm, strategy, None, n)
                        replay_parts.append(pl.DataFrame({
                            **{c: [v] * len(problems) for c, v in (("dataset", dataset), ("model", model),
                                                                   ("prm", prm), ("strategy", strategy), ("n", n))},
                            "problem_id": problems, "accuracy": cf.accuracy[t], "accuracy_se": cf_se[t],
                            **{column[c]: _pick(v, cf.choice[t:t + 1])[0] for c, v in adapt_costs.items()},
                        }, schema_overrides={"prm": pl.String, "n": pl.Int32}))
                    summary.append({
                        **tags, "source": source, "oracle": source == "oracle", "convention": conv,
                        "budget": float(budgets[t]), "log10_budget": float(np.log10(budgets[t])), "point": point,
                        "probe_samples": k, "probe_prm": prm, "num_bins": int(cf.in_sample.edges.size + 1),
                        "num_folds": int(np.unique(fold).size), "num_problems": len(problems),
                        **_compare(cf, cf_se[t], fixed, fixed_se[t], mix, t, labels),
                        "target_accuracy": float(target[0][i]), "target_flops": float(target[1][i]),
                        "saving": float(sav[0][i]), "saving_ci_low": float(sav[1][i]),
                        "saving_ci_high": float(sav[2][i]),
                    })
                    per_problem.append(_problem_rows(
                        {**tags, "source": source, "policy": "adaptive", "convention": conv, "budget": budgets[t],
                         "point": point},
                        problems, fold, cf.bins[t] + 1, cf.choice[t], cf.accuracy[t], cf_se[t], cf.cost[t],
                        {column[c]: v for c, v in carry["adaptive"].items()}, labels))
    # NULL, not NaN, where undefined (no saving where the target is never reached)
    return Allocation(pl.DataFrame(summary, schema=SUMMARY_SCHEMA).fill_nan(None),
                      _frame(per_problem, problems_schema(conventions)), _frame(difficulty, DIFFICULTY_SCHEMA),
                      _frame(replay_parts, replay_schema(conventions)))


def _frame(parts: list[pl.DataFrame], schema: Mapping) -> pl.DataFrame:
    """The parts in one frame of `schema` (a column no part has: null)."""
    if not parts:
        return pl.DataFrame(schema=schema)
    df = pl.concat(parts, how="diagonal_relaxed")
    df = df.select([pl.col(c).cast(t) if c in df.columns else pl.lit(None, t).alias(c) for c, t in schema.items()])
    return df.with_columns(pl.col(pl.Float64).fill_nan(None))  # NULL where unmeasured (seconds), not NaN


def _compare(cf: CrossFit, cf_se: np.ndarray, fixed: CrossFit, fixed_se: np.ndarray, mix: tuple, t: int,
             labels: Sequence[str]) -> dict:
    """The summary columns of budget t: the adaptive policy, the fixed point and mixture
    (pipeline.analysis.stats: means with their SE, paired differences)."""
    mix_acc, mix_cost, _, mix_se = mix
    acc, acc_se = stats.mean_se(cf.accuracy[t], cf_se)
    f_acc, f_se = stats.mean_se(fixed.accuracy[t], fixed_se)
    m_acc, m_se = stats.mean_se(mix_acc[t], mix_se[t])
    d = stats.paired(cf.accuracy[t], fixed.accuracy[t], cf_se, fixed_se)
    dm = stats.paired(cf.accuracy[t], mix_acc[t], cf_se, mix_se[t])
    return {
        "accuracy": acc, "accuracy_se": acc_se, "flops": float(cf.cost[t].mean()),
        "in_sample_accuracy": float(cf.in_sample_accuracy[t]), "in_sample_flops": float(cf.in_sample_cost[t]),
        "choices": _choices_text(cf.in_sample.choices[t], labels),
        "fixed_choice": labels[fixed.in_sample.choices[t, 0]],
        "fixed_accuracy": f_acc, "fixed_accuracy_se": f_se, "fixed_flops": float(fixed.cost[t].mean()),
        "fixed_in_sample_accuracy": float(fixed.in_sample_accuracy[t]),
        "diff": d.diff, "diff_se": d.diff_se, "diff_ci_low": d.ci_low, "diff_ci_high": d.ci_high,
        "diff_p": d.p_value,
        "mix_accuracy": m_acc, "mix_accuracy_se": m_se, "mix_flops": float(mix_cost[t].mean()),
        "mix_diff": dm.diff, "mix_diff_se": dm.diff_se, "mix_diff_ci_low": dm.ci_low,
        "mix_diff_ci_high": dm.ci_high, "mix_diff_p": dm.p_value,
    }


def _problem_rows(tags: dict, problems: Sequence[str], fold: np.ndarray, bins: np.ndarray | None,
                  choice: np.ndarray, acc: np.ndarray, acc_se: np.ndarray, cost: np.ndarray,
                  by_column: Mapping[str, np.ndarray], labels: Sequence[str]) -> pl.DataFrame:
    idx = np.arange(len(problems))
    return pl.DataFrame({
        **{k: [v] * len(problems) for k, v in tags.items()},
        "problem_id": list(problems), "fold": fold,
        "bin": None if bins is None else np.asarray(bins, dtype=np.int64),
        "choice": [labels[j] for j in choice], "accuracy": acc, "accuracy_se": acc_se, "cost": cost,
        **{col: mat[idx, choice] for col, mat in by_column.items()},
    }, schema_overrides={"source": pl.String, "point": pl.String, "budget": pl.Float64, "fold": pl.Int64,
                         "bin": pl.Int64})


# --------------------------------------------------------------------------- into the database


def strategy_rows(conventions: Mapping[str, str] = CONVENTIONS) -> pl.DataFrame:
    """`strategies` rows of the adaptive policies: their own family (figure panel)."""
    names = [views.adaptive_strategy(c, oracle=o) for c in conventions for o in (False, True)]
    return pl.DataFrame({"strategy": names, "family": [views.ADAPTIVE_FAMILY] * len(names),
                         "algorithm": [None] * len(names), "selection": [None] * len(names)},
                        schema={"strategy": pl.String, "family": pl.String, "algorithm": pl.String,
                                "selection": pl.String})


def database_tables(tables: Mapping[str, pl.DataFrame], folds: pl.DataFrame, *, adaptive: Mapping | None,
                    aggregations: Sequence[str], bootstrap: int, seed: int) -> dict[str, pl.DataFrame]:
    """What the aggregate job stores: the tables `adaptive`, `adaptive_problems` and
    `difficulty`, and the rows the adaptive policies add to `replay` and `strategies`
    (empty without grades, or with `enabled: false`)."""
    s = settings(adaptive)
    conventions = CONVENTIONS
    res = Allocation(*(pl.DataFrame(schema=sc) for sc in (SUMMARY_SCHEMA, problems_schema(conventions),
                                                          DIFFICULTY_SCHEMA, replay_schema(conventions))))
    if s["enabled"] and "grades" in tables:
        res = allocate(tables, folds=folds, aggregations=aggregations, conventions=conventions,
                       bootstrap=bootstrap, seed=seed, **{k: v for k, v in s.items() if k != "enabled"})
    return {"adaptive": res.summary, "adaptive_problems": res.problems, "difficulty": res.difficulty,
            "replay": res.replay, "strategies": strategy_rows(conventions)}


# --------------------------------------------------------------------------- entry point


def read_tables(db: str | Path) -> dict[str, pl.DataFrame]:
    """replay, grades, and when present scores, folds and analysis from the database."""
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        have = {t for (t,) in con.sql("SELECT table_name FROM information_schema.tables").fetchall()}
        for need in ("replay", "grades"):
            if need not in have:
                raise ValueError(f"allocation: {db} has no {need!r} table")
        queries = {"replay": "SELECT * FROM replay",
                   "grades": "SELECT dataset, model, kind, key, problem_id, sample_idx, answer_class, correct "
                             "FROM grades WHERE kind = 'sampled'"}
        if "scores" in have:
            queries["scores"] = "SELECT dataset, model, prm, problem_id, sample_idx, scores FROM scores"
        for name in ("folds", "analysis"):
            if name in have:
                queries[name] = f"SELECT * FROM {name}"
        return {name: pl.from_arrow(con.sql(q).to_arrow_table()) for name, q in queries.items()}


def main(argv: list[str] | None = None) -> None:
    from pipeline.analysis import figures, report

    ap = argparse.ArgumentParser(description="difficulty-adaptive compute-optimal allocation, replayed from a "
                                             "results database (prints the table and summary lines); settings "
                                             "not given come from the database's `analysis` table")
    ap.add_argument("--db", required=True, help="results/inference.duckdb (opened read-only)")
    ap.add_argument("--probe-samples", type=int, help="probe size: the first k samples of each problem")
    ap.add_argument("--bins", type=int, help="difficulty quantile bins")
    ap.add_argument("--probe-prm", help="the PRM the probe reads (default: the first by name)")
    ap.add_argument("--probe-aggregation")
    ap.add_argument("--budgets-per-decade", type=int, help="budgets per decade of FLOPs")
    ap.add_argument("--shrink", type=float,
                    help="pseudo-problems shrinking each bin's accuracy towards the point's overall mean")
    ap.add_argument("--num-draws", type=int)
    ap.add_argument("--aggregations", nargs="*", help="step aggregations of the PRM points (none given: all)")
    ap.add_argument("--bootstrap", type=int)
    ap.add_argument("--unconditional", action="store_true",
                    help="score sampling points by replay's unconditional accuracy (the naive replay)")
    ap.add_argument("--plot", help="write the figure here (PNG)")
    a = ap.parse_args(argv)
    tables = read_tables(a.db)
    analysis = tables["analysis"].row(0, named=True) if "analysis" in tables else {}
    s = settings({k: v for k, v in (analysis.get("adaptive") or {}).items() if k in DEFAULTS})
    s.update({k: v for k, v in vars(a).items() if k in DEFAULTS and v is not None})
    s.pop("enabled")
    aggregations = analysis.get("aggregations", ["last"]) if a.aggregations is None else (a.aggregations or None)
    res = allocate(tables, folds=tables.get("folds"), aggregations=aggregations,
                   num_folds=analysis.get("folds", 5), seed=analysis.get("seed", 0),
                   bootstrap=analysis.get("bootstrap", 1000) if a.bootstrap is None else a.bootstrap, conditional=not a.unconditional, **s)
    if a.plot:
        figures.adaptive(res.summary, a.plot)
    cols = ["dataset", "model", "source", "convention", "budget", "accuracy", "accuracy_se", "flops",
            "in_sample_accuracy", "fixed_choice", "fixed_accuracy", "fixed_flops", "diff", "diff_ci_low",
            "diff_ci_high", "saving", "saving_ci_low", "saving_ci_high", "choices"]
    with pl.Config(tbl_rows=400, tbl_cols=len(cols), tbl_width_chars=400, fmt_str_lengths=200,
                   float_precision=3):
        print(res.summary.select(cols))
    for conv in CONVENTIONS:
        for line in report.adaptive_lines(res.summary, convention=conv):
            print(line)


if __name__ == "__main__":
    main()
