"""The paper's qualitative claims (Wu et al., Inference Scaling Laws), tested on the run at hand.

Every test is a paired difference over the dataset's problems (pipeline.analysis.stats: each
problem's Monte Carlo SE counted), oriented so that a positive difference is what the
claim says, on the headline points only (strategies without a PRM, and PRM strategies
under the `analysis.aggregations`; FLOPs in the paper convention). Verdict: "supported"
when the 95% interval lies above 0, "refuted" when it lies below 0, otherwise
"inconclusive at <n> problems"; "not testable" (with the reason) when the run lacks what
the test needs. Verdicts are per line at 95%, not corrected for the number of lines.
Each line also gives `mde`, the smallest true difference its test detects with 80%
power at two-sided 5% (pipeline.analysis.stats.mde with that line's own sd of the differences).

saturation  "Voting saturates as n grows." Per model, for majority voting and for weighted
            majority voting (each PRM and headline aggregation), on the replay's grid of
            n, n_0 < n_1 < ... < n_m (1, 2, 4, ..., N), with h = floor(m / 2):
                d_i = [acc_i(n_h) - acc_i(n_0)] - [acc_i(n_m) - acc_i(n_{m-h})],
            the gain of the first h doublings minus the gain of the last h (at N = 16:
            (acc@4 - acc@1) - (acc@16 - acc@4)). Positive: the gains shrink. Needs at
            least three values of n. (A single first doubling would say nothing for
            majority voting: with two samples a split vote is a coin flip, so
            majority@2 equals majority@1 exactly.)
weighted_vs_majority
            "Weighted voting is at least majority voting at the largest n." Per model,
            PRM and headline aggregation: d_i = weighted_majority_i(N) - majority_i(N),
            N the largest n of majority voting.
rebase_vs_sampling
            "REBASE reaches a given accuracy with fewer FLOPs than sampling." Per model,
            PRM, REBASE search entry (algorithm rebase in `strategies`) and selection rule
            (majority, best-of-n, weighted majority; headline aggregations): at the
            largest REBASE budget w for which some sampling point of the same rule
            (majority voting; best_of_n or weighted_majority with the same PRM and
            aggregation) costs at least as many FLOPs, against the cheapest such point
            S: d_i = REBASE_i(w) - S_i. Positive: REBASE is more accurate for no more
            FLOPs (so it reaches S's accuracy with fewer). The budget is picked by cost
            alone, never by accuracy.
small_model_optimal
            "With two or more model sizes, the smaller model plus the better strategy is
            compute-optimal at small budgets." For each pair of consecutive model sizes
            S < L (params_total): the budget B is the FLOPs of L's cheapest point P_L
            (the smallest budget at which L runs at all); S's best point within B is
            chosen on the other folds and scored on each held-out fold
            (pipeline.analysis.stats.crossfit over S's points, the `folds` split), so the choice
            is not rewarded for noise: d_i = S_choice_i - P_L_i. Positive: the smaller
            model with its best strategy beats the larger one at that budget.

`power` gives, per dataset and model, the minimum detectable difference of best-of-N
against majority voting at the largest n (the first PRM and headline aggregation):
MDE = (z_0.975 + z_0.80) sd(d) / sqrt(n), with its inputs.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from pipeline.analysis import stats

CLAIMS = {
    "saturation": "Voting saturates as n grows",
    "weighted_vs_majority": "Weighted voting >= majority voting at the largest n",
    "rebase_vs_sampling": "REBASE reaches a given accuracy with fewer FLOPs than sampling",
    "small_model_optimal": "A smaller model with a better strategy is compute-optimal at small budgets",
}

SCHEMA = {
    "dataset": pl.String, "claim": pl.String, "subject": pl.String, "test": pl.String,
    "num_problems": pl.Int64, "diff": pl.Float64, "diff_se": pl.Float64, "ci_low": pl.Float64,
    "ci_high": pl.Float64, "p_value": pl.Float64, "mde": pl.Float64, "verdict": pl.String,
    "note": pl.String,
}
POWER_SCHEMA = {
    "dataset": pl.String, "model": pl.String, "comparison": pl.String, "num_problems": pl.Int64,
    "sd_diff": pl.Float64, "z_alpha": pl.Float64, "z_power": pl.Float64, "mde": pl.Float64,
}
COST = "flops_paper"


def verdict(p: stats.Paired) -> str:
    if p.num_problems == 0 or math.isnan(p.diff):
        return "not testable"
    if p.ci_low > 0:
        return "supported"
    if p.ci_high < 0:
        return "refuted"
    return f"inconclusive at {p.num_problems} problems"


def _row(dataset: str, claim: str, subject: str, test: str, p: stats.Paired | None, mde: float = math.nan,
         note: str = "") -> dict:
    if p is None:
        p = stats.contrast([])
    return {"dataset": dataset, "claim": claim, "subject": subject, "test": test,
            "num_problems": p.num_problems, "diff": p.diff, "diff_se": p.diff_se, "ci_low": p.ci_low,
            "ci_high": p.ci_high, "p_value": p.p_value, "mde": mde,
            "verdict": verdict(p) if p.num_problems else "not testable", "note": note}


def _untestable(dataset: str, claim: str, why: str, subject: str = "") -> dict:
    return _row(dataset, claim, subject, "", None, note=why)


def _contrast(rows: pl.DataFrame, coefs: dict[str, float]) -> tuple[stats.Paired, float]:
    """sum_j coef_j acc_j(point j) per problem (problems every point has), and its MDE."""
    wide = rows.filter(pl.col("point").is_in(list(coefs))).pivot(
        on="point", index="problem_id", values=["accuracy", "accuracy_se"], aggregate_function="first")
    acc = {p: f"accuracy_{p}" for p in coefs}
    se = {p: f"accuracy_se_{p}" for p in coefs}
    if any(acc[p] not in wide.columns for p in coefs):
        return stats.contrast([]), math.nan
    wide = wide.drop_nulls([acc[p] for p in coefs])
    d = sum(c * wide[acc[p]].to_numpy() for p, c in coefs.items())
    v = sum(c * c * wide[se[p]].to_numpy() ** 2 for p, c in coefs.items())
    d = np.asarray(d, dtype=float) if len(wide) else np.array([])
    result = stats.contrast(d, v if len(wide) else None)
    sd = float(np.std(d, ddof=1)) if d.size > 1 else math.nan
    return result, stats.mde(sd, d.size)


def _points(rows: pl.DataFrame) -> pl.DataFrame:
    """One row per point: its keys, mean accuracy and mean FLOPs (paper)."""
    return rows.group_by("point", maintain_order=True).agg(
        pl.col("model", "prm", "strategy", "aggregation", "n").first(),
        pl.col("accuracy").mean(), pl.col(COST).mean().alias("flops"))


def _curve(pts: pl.DataFrame, model: str, strategy: str, prm, aggregation) -> pl.DataFrame:
    keep = (pl.col("model") == model) & (pl.col("strategy") == strategy)
    keep &= pl.col("prm").is_null() if prm is None else pl.col("prm") == prm
    keep &= pl.col("aggregation").is_null() if aggregation is None else pl.col("aggregation") == aggregation
    return pts.filter(keep).sort("n")


def _saturation(dataset, rows, pts) -> list[dict]:
    out = []
    curves = pts.filter(pl.col("strategy").is_in(["majority", "weighted_majority"])).select(
        "model", "strategy", "prm", "aggregation").unique(maintain_order=True).rows()
    for model, strategy, prm, agg in curves:
        c = _curve(pts, model, strategy, prm, agg)
        subject = c["point"][0].rsplit("@", 1)[0]
        ns, labels = c["n"].to_list(), c["point"].to_list()
        if len(ns) < 3:
            out.append(_untestable(dataset, "saturation", f"only {len(ns)} values of n", subject))
            continue
        m, h = len(ns) - 1, (len(ns) - 1) // 2
        coefs: dict[str, float] = {}
        for label, c_ in ((labels[h], 1), (labels[0], -1), (labels[m], -1), (labels[m - h], 1)):
            coefs[label] = coefs.get(label, 0) + c_
        p, mde = _contrast(rows, {k: v for k, v in coefs.items() if v})
        test = f"(acc@{ns[h]} - acc@{ns[0]}) - (acc@{ns[m]} - acc@{ns[m - h]})"
        out.append(_row(dataset, "saturation", subject, test, p, mde,
                        "positive: the first doublings of n gain more than the last"))
    if not out:
        out.append(_untestable(dataset, "saturation", "no voting strategy in this run"))
    return out


def _weighted(dataset, rows, pts) -> list[dict]:
    out = []
    for model in pts["model"].unique(maintain_order=True).to_list():
        maj = _curve(pts, model, "majority", None, None)
        wm = pts.filter((pl.col("model") == model) & (pl.col("strategy") == "weighted_majority"))
        if maj.is_empty() or wm.is_empty():
            continue
        n_max = maj["n"].max()
        for (prm, agg), g in wm.group_by("prm", "aggregation", maintain_order=True):
            at = g.filter(pl.col("n") == n_max)
            subject = f"{model}: weighted_majority[{prm},{agg}] vs majority"
            if at.is_empty():
                out.append(_untestable(dataset, "weighted_vs_majority",
                                       f"weighted voting has no point at n = {n_max}", subject))
                continue
            p, mde = _contrast(rows, {at["point"][0]: 1, maj.filter(pl.col("n") == n_max)["point"][0]: -1})
            out.append(_row(dataset, "weighted_vs_majority", subject, f"wm@{n_max} - maj@{n_max}", p, mde))
    if not out:
        out.append(_untestable(dataset, "weighted_vs_majority",
                               "needs majority and weighted majority voting (a PRM) for one model"))
    return out


def _rebase(dataset, rows, pts, strategies: pl.DataFrame) -> list[dict]:
    out = []
    rebase = strategies.filter(pl.col("algorithm") == "rebase")
    selection = dict(zip(strategies["strategy"], strategies["selection"]))
    r = pts.filter(pl.col("strategy").is_in(rebase["strategy"].to_list()))
    for (model, prm, strategy, agg), g in r.group_by("model", "prm", "strategy", "aggregation", maintain_order=True):
        rule = selection.get(strategy)
        subject = f"{model}: {strategy}" + (f"[{prm},{agg}]" if agg else f"[{prm}]")
        sampling = (_curve(pts, model, "majority", None, None) if rule == "majority"
                    else _curve(pts, model, rule, prm, agg))
        if sampling.is_empty():
            out.append(_untestable(dataset, "rebase_vs_sampling", f"no sampling point with rule {rule}", subject))
            continue
        for w in g.sort("n", descending=True).iter_rows(named=True):
            dearer = sampling.filter(pl.col("flops") >= w["flops"]).sort("flops", "n")
            if dearer.height:
                s = dearer.row(0, named=True)
                p, mde = _contrast(rows, {w["point"]: 1, s["point"]: -1})
                test = f"{strategy}@{w['n']} ({w['flops']:.3g} FLOPs) - {s['strategy']}@{s['n']} ({s['flops']:.3g} FLOPs)"
                out.append(_row(dataset, "rebase_vs_sampling", subject, test, p, mde,
                                "positive: REBASE more accurate for no more FLOPs"))
                break
        else:
            out.append(_untestable(dataset, "rebase_vs_sampling",
                                   f"every {rule} sampling point costs less than the cheapest REBASE point", subject))
    if not out:
        out.append(_untestable(dataset, "rebase_vs_sampling", "no REBASE search in this run"))
    return out


def _small_model(dataset, rows, pts, folds: pl.DataFrame, models: pl.DataFrame | None) -> list[dict]:
    present = pts["model"].unique().to_list()
    if models is None or len(present) < 2:
        return [_untestable(dataset, "small_model_optimal", f"{len(present)} model size(s) in this run")]
    sizes = models.filter(pl.col("model").is_in(present)).sort("params_total", "model")
    out = []
    for small, large in zip(sizes["model"].to_list(), sizes["model"].to_list()[1:]):
        subject = f"{small} vs {large}"
        first = pts.filter(pl.col("model") == large).sort("flops", "point").row(0, named=True)
        s_rows = rows.filter(pl.col("model") == small).select(
            "point", "problem_id", "accuracy", "accuracy_se", cost=pl.col(COST))
        held = stats.crossfit(s_rows, folds, pl.DataFrame({"budget": [first["flops"]]}))
        if held.is_empty():
            out.append(_untestable(dataset, "small_model_optimal",
                                   f"{small} has no point within {first['flops']:.3g} FLOPs", subject))
            continue
        big = rows.filter(pl.col("point") == first["point"]).select("problem_id", "accuracy", "accuracy_se")
        j = held.join(big, on="problem_id", suffix="_large")
        p = stats.paired(j["accuracy"], j["accuracy_large"], j["accuracy_se"], j["accuracy_se_large"])
        d = (j["accuracy"] - j["accuracy_large"]).to_numpy()
        mde = stats.mde(float(np.std(d, ddof=1)) if d.size > 1 else math.nan, d.size)
        chosen = ", ".join(sorted(set(held["point"])))
        test = f"held-out choice of {small} within {first['flops']:.3g} FLOPs - {first['point']}"
        out.append(_row(dataset, "small_model_optimal", subject, test, p, mde, f"folds chose: {chosen}"))
    return out


def evaluate(cand: pl.DataFrame, *, folds: pl.DataFrame, strategies: pl.DataFrame,
             models: pl.DataFrame | None = None) -> pl.DataFrame:
    """The `claims` table from the headline non-oracle per-problem rows `cand` (with their
    `point` label; aggregate.candidate_rows), the `folds`, `strategies` and `models` tables."""
    out = []
    for (dataset,), rows in cand.group_by("dataset", maintain_order=True):
        pts = _points(rows)
        f = folds.filter(pl.col("dataset") == dataset)
        out += _saturation(dataset, rows, pts)
        out += _weighted(dataset, rows, pts)
        out += _rebase(dataset, rows, pts, strategies)
        out += _small_model(dataset, rows, pts, f, models)
    return pl.DataFrame(out, schema=SCHEMA).fill_nan(None)  # NULL, not NaN, where undefined


def power(cand: pl.DataFrame) -> pl.DataFrame:
    """The `power` table: per dataset and model, the MDE of best-of-N against majority voting
    at the largest n of majority voting (first PRM and aggregation by name), with its
    inputs: number of problems, sd of the per-problem differences, z_0.975 and z_0.80."""
    out = []
    for (dataset,), rows in cand.group_by("dataset", maintain_order=True):
        pts = _points(rows)
        for model in pts["model"].unique(maintain_order=True).to_list():
            maj = _curve(pts, model, "majority", None, None)
            if maj.is_empty():
                continue
            n_max = maj["n"].max()
            bon = pts.filter((pl.col("model") == model) & (pl.col("strategy") == "best_of_n")
                             & (pl.col("n") == n_max)).sort("prm", "aggregation")
            if bon.is_empty():
                continue
            a, b = bon["point"][0], maj.filter(pl.col("n") == n_max)["point"][0]
            wide = rows.filter(pl.col("point").is_in([a, b])).pivot(
                on="point", index="problem_id", values="accuracy").drop_nulls()
            d = (wide[a] - wide[b]).to_numpy()
            sd = float(np.std(d, ddof=1)) if d.size > 1 else math.nan
            out.append({"dataset": dataset, "model": model, "comparison": f"{a} - {b}",
                        "num_problems": int(d.size), "sd_diff": sd, "z_alpha": stats.Z95,
                        "z_power": stats.Z80, "mde": stats.mde(sd, d.size)})
    return pl.DataFrame(out, schema=POWER_SCHEMA).fill_nan(None)
