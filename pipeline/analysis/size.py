"""The model-size axis: which model size is compute-optimal at each budget, and does the
smaller model (with its best strategy) beat the larger one (with its best) at equal FLOPs.

For each pair of consecutive model sizes S < L (params_total) of a dataset, on a budget
grid of BUDGETS_PER_DECADE values per decade (the `compute_optimal` view's: budget =
10^(k / 4) FLOPs per problem, paper convention) from the first grid value at which both
models have a point within the budget to the first at or above the costliest point of
either:

    each model's best point within the budget, chosen on K - 1 folds and scored on the
    K-th (pipeline.analysis.stats.crossfit, the `folds` split, every fold), so a model
    is not credited with its luckiest point; the paired per-problem difference
    d_i = S_i - L_i; its standard error by nested cross-validation
    (pipeline.analysis.nested_cv: the choices are part of the procedure; the naive SE
    under-covers), 95% normal interval, two-sided p; outcome "smaller wins" (interval
    above 0), "larger wins" (below 0) or "tie" (interval contains 0).

Beside it, the in-sample compute-optimal model over all models at that budget (the
`compute_optimal` view's choice; `optimal_model`, `optimal_params`), and
`larger_optimal_share`: in how many of RESAMPLES bootstrap resamples of the problems the
larger model's in-sample best beats the smaller's (the uncertainty of the optimal size at
that budget, which stays defined where a log-log fit is not). Table `model_size`
(SCHEMA). The claim `small_model_optimal` (pipeline.analysis.claims) reads it.

What a pair of sizes can show: at which budgets the smaller model's best strategy is
more, equally or less accurate than the larger model's, at equal FLOPs. What it cannot:
a scaling law. With two sizes the log-log fit of the compute-optimal size against the
budget has two possible sizes and is determined by where (if anywhere) the optimum
switches; and two models from different families (`family`) differ in training data,
tokenizer and tuning as well as size, so the comparison is of these two models, not of
size alone.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from pipeline.analysis import nested_cv, stats

BUDGETS_PER_DECADE = 4  # as pipeline.analysis.views.BUDGETS_PER_DECADE (the compute_optimal grid)
COST = "flops_paper"

# Families of the embedded models (README "Model size"); other paths: "" (not known).
FAMILIES = {
    "embedded:smollm2-135m": "SmolLM2 (Hugging Face; Llama architecture, instruction-tuned)",
    "embedded:gemma3-270m": "Gemma 3 (Google; base model, 262k-token vocabulary)",
}

SCHEMA = {
    "dataset": pl.String, "small": pl.String, "large": pl.String, "small_params": pl.Int64,
    "large_params": pl.Int64, "budget": pl.Float64, "log10_budget": pl.Float64,
    "optimal_model": pl.String, "optimal_params": pl.Int64, "optimal_point": pl.String,
    "small_point": pl.String, "small_accuracy": pl.Float64, "small_held_out": pl.Float64,
    "small_held_out_se": pl.Float64, "large_point": pl.String, "large_accuracy": pl.Float64,
    "large_held_out": pl.Float64, "large_held_out_se": pl.Float64, "num_problems": pl.Int64,
    "diff": pl.Float64, "diff_se": pl.Float64, "naive_se": pl.Float64, "ci_low": pl.Float64,
    "ci_high": pl.Float64, "p_value": pl.Float64, "method": pl.String, "se_method": pl.String,
    "outcome": pl.String, "larger_optimal_share": pl.Float64,
}
RESAMPLES = 1000

SMALLER, LARGER, TIE = "smaller wins", "larger wins", "tie"


def family(path: str | None) -> str:
    """The model family of a models.path ('' when not known)."""
    return FAMILIES.get(path or "", "")


def budget_grid(lo: float, hi: float, per_decade: int = BUDGETS_PER_DECADE) -> np.ndarray:
    """10^(k / per_decade) from the first grid value >= lo to the first >= hi."""
    a = math.ceil(per_decade * math.log10(lo) - 1e-9)
    b = math.ceil(per_decade * math.log10(hi) - 1e-9)
    return 10.0 ** (np.arange(a, max(a, b) + 1) / per_decade)


def _with_se(p: stats.Paired, se: float, what: str) -> tuple[stats.Paired, str]:
    """`p` with the nested-CV standard error where there is one (else the naive SE)."""
    if not p.testable() or not math.isfinite(se) or se <= 0:
        return p, "naive" if p.testable() else ""
    se = max(se, p.diff_se)  # never below the naive SE (nested_cv: `reported_se`)
    lo, hi = p.diff - stats.Z95 * se, p.diff + stats.Z95 * se
    return stats.Paired(p.num_problems, p.accuracy_a, p.accuracy_b, p.diff, se, lo, hi,
                        stats.two_sided_p(p.diff / se), stats.NORMAL), what


def outcome(p: stats.Paired) -> str:
    if not p.testable():
        return f"not testable ({p.reason})"
    return SMALLER if p.ci_low > 0 else LARGER if p.ci_high < 0 else TIE


def compare(rows: pl.DataFrame, folds: pl.DataFrame, models: pl.DataFrame, *, dataset: str = "",
            reps: int = nested_cv.REPS, seed: int = 0) -> pl.DataFrame:
    """The `model_size` rows of one dataset (module docstring). rows: the headline
    non-oracle per-problem rows (point, model, problem_id, accuracy, accuracy_se, and
    COST); folds: problem_id, fold; models: model, params_total."""
    present = rows["model"].unique().to_list()
    sizes = models.filter(pl.col("model").is_in(present)).sort("params_total", "model")
    if sizes.height < 2:
        return pl.DataFrame(schema=SCHEMA)
    params = dict(zip(sizes["model"], sizes["params_total"]))
    r = rows.select("point", "model", pl.col("problem_id").cast(pl.String), "accuracy",
                    pl.col("accuracy_se").fill_null(0.0), cost=pl.col(COST))
    everything = stats.candidates(r)
    model_of = dict(zip(r["point"], r["model"]))
    k = int(folds["fold"].n_unique())
    out = []
    for small, large in zip(sizes["model"].to_list(), sizes["model"].to_list()[1:]):
        rs, rl = r.filter(pl.col("model") == small), r.filter(pl.col("model") == large)
        cs, cl = (rs.group_by("point").agg(pl.col("cost").mean())["cost"],
                  rl.group_by("point").agg(pl.col("cost").mean())["cost"])
        grid = budget_grid(max(cs.min(), cl.min()), max(cs.max(), cl.max()))
        budgets = pl.DataFrame({"budget": grid})
        hs = stats.crossfit(rs, folds, budgets)
        hl = stats.crossfit(rl, folds, budgets)
        pair = stats.candidates(pl.concat([rs, rl]))
        ids = np.arange(len(pair.points))
        is_small = np.array([model_of[p] == small for p in pair.points])
        cost = pair.mean_cost()
        kw = {"reps": reps, "seed": seed}
        se_pair = nested_cv.nested_se(pair.accuracy, cost, grid, k, groups=[(ids[is_small], 1.0), (ids[~is_small], -1.0)], **kw)
        se_s = nested_cv.nested_se(pair.accuracy, cost, grid, k, groups=[(ids[is_small], 1.0)], **kw)
        se_l = nested_cv.nested_se(pair.accuracy, cost, grid, k, groups=[(ids[~is_small], 1.0)], **kw)
        share = larger_optimal_share(pair.accuracy, cost, is_small, grid, seed=seed)
        best_all = stats.best_within(everything.mean_accuracy(), everything.mean_cost(), grid)
        best_s = stats.in_sample(rs, grid)
        best_l = stats.in_sample(rl, grid)
        acc_all = dict(zip(everything.points, everything.mean_accuracy()))
        for j, b in enumerate(grid):
            s_j, l_j = hs.filter(pl.col("budget") == b), hl.filter(pl.col("budget") == b)
            joined = s_j.join(l_j, on="problem_id", suffix="_l")
            naive = stats.paired(joined["accuracy"], joined["accuracy_l"], joined["accuracy_se"], joined["accuracy_se_l"])
            p, method = _with_se(naive, float(se_pair.se[j]), "nested CV")
            sm, ssd = stats.mean_se(s_j["accuracy"], s_j["accuracy_se"]) if s_j.height else (math.nan, math.nan)
            lm, lsd = stats.mean_se(l_j["accuracy"], l_j["accuracy_se"]) if l_j.height else (math.nan, math.nan)
            opt = everything.points[best_all[j]] if best_all[j] >= 0 else None
            out.append({
                "dataset": dataset, "small": small, "large": large, "small_params": params[small],
                "large_params": params[large], "budget": float(b),
                "log10_budget": round(math.log10(b), 6), "optimal_model": model_of.get(opt),
                "optimal_params": params.get(model_of.get(opt)), "optimal_point": opt,
                "small_point": best_s[j], "small_accuracy": acc_all.get(best_s[j]),
                "small_held_out": sm, "small_held_out_se": _pick(se_s.se[j], ssd),
                "large_point": best_l[j], "large_accuracy": acc_all.get(best_l[j]),
                "large_held_out": lm, "large_held_out_se": _pick(se_l.se[j], lsd),
                "num_problems": p.num_problems, "diff": p.diff, "diff_se": p.diff_se, "naive_se": naive.diff_se,
                "ci_low": p.ci_low, "ci_high": p.ci_high, "p_value": p.p_value, "method": p.method,
                "se_method": method,
                "outcome": outcome(p), "larger_optimal_share": share[j],
            })
    return pl.DataFrame(out, schema=SCHEMA).fill_nan(None)


def larger_optimal_share(acc: np.ndarray, cost: np.ndarray, is_small: np.ndarray, budgets: np.ndarray, *,
                         resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """Per budget, the share of bootstrap resamples of the problems in which the larger
    model's in-sample best point within the budget is more accurate than the smaller
    model's: the uncertainty of the compute-optimal size (a band on N_opt where no line can
    be fitted). acc (P, n) per-problem values of both models' points, cost (P,) their mean
    costs (fixed, as the choice's budget constraint), is_small (P,) which are the smaller
    model's."""
    n = acc.shape[1]
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(float)  # (B, n)
    valid = ~np.isnan(acc)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (w @ np.where(valid, acc, 0.0).T) / (w @ valid.T.astype(float))  # (B, P)
    out = np.full(budgets.size, np.nan)
    for j, b in enumerate(budgets):
        fits = cost <= b * (1 + 1e-9)
        s_ok, l_ok = fits & is_small, fits & ~is_small
        if not s_ok.any() or not l_ok.any():
            continue
        best_s = np.nanmax(np.where(s_ok, means, -np.inf), axis=1)
        best_l = np.nanmax(np.where(l_ok, means, -np.inf), axis=1)
        out[j] = float(np.mean(best_l > best_s))
    return out


def _pick(nested: float, naive: float) -> float:
    return nested_cv.reported_se(nested, naive)


def table(cand: pl.DataFrame, folds: pl.DataFrame, models: pl.DataFrame | None, *,
          reps: int = nested_cv.REPS, seed: int = 0) -> pl.DataFrame:
    """The `model_size` table over every dataset of the headline non-oracle rows `cand`
    (pipeline.aggregate.candidate_rows of the fixed strategies)."""
    if models is None:
        return pl.DataFrame(schema=SCHEMA)
    parts = [compare(rows, folds.filter(pl.col("dataset") == dataset), models, dataset=dataset, reps=reps, seed=seed)
             for (dataset,), rows in cand.group_by("dataset", maintain_order=True)]
    parts = [p for p in parts if p.height]
    return pl.concat(parts) if parts else pl.DataFrame(schema=SCHEMA)
