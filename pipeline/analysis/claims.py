"""The paper's qualitative claims (Wu et al., Inference Scaling Laws), tested on the run at hand.

Every test compares points at matched compute on the same problems, paired (each
problem's Monte Carlo SE counted; pipeline.analysis.stats), on the headline points only
(strategies without a PRM, and PRM strategies under the `analysis.aggregations`; FLOPs in
the paper convention). Each line states its test (`test`), the statistic with its 95%
interval, the `margin` where the claim is an inequality with a tolerance, the decision
rule (`criterion`) and the verdict: "supported", "refuted", "inconclusive at <n>
problems", or "not testable (<reason>)" when the run lacks what the test needs or the
data are degenerate (fewer than two problems, NaN values; a constant non-zero
difference is tested by the exact sign test, never with p = 0). Verdicts are per line at
95%, not corrected for the number of lines. `mde` is the smallest true difference the
line's test detects with 80% power at two-sided 5% (stats.mde with that line's sd).

saturation  "Voting saturates as n grows." Per model, for majority voting and for weighted
            majority voting (each PRM and headline aggregation), on the replay's grid
            n_0 < ... < n_m (1, 2, 4, ..., N): the gain of the LAST doubling,
                d_i = acc_i(n_m) - acc_i(n_{m-1}),
            against the margin SATURATION_MARGIN (accuracy per doubling of n):
            supported when the 95% interval lies below the margin (the last doubling gains
            less than it), refuted when it lies above (the curve still rises by more).
            A flat curve is supported once the interval is narrow enough; a curve
            rising steadily by more than the margin per doubling is refuted, never
            supported. `note` gives coverage@N - voting@N beside it (pass@N, an oracle:
            what better selection among the same N samples could still gain).
weighted_vs_majority
            "Weighted voting is at least as accurate as majority voting." A non-inferiority
            test with margin NONINFERIORITY_MARGIN, at every n >= 2 both have, per model,
            PRM and headline aggregation: d_i = weighted_i(n) - majority_i(n); supported
            when the interval's lower end is above -margin (weighted is not worse by
            the margin or more), refuted when its upper end is below -margin (worse by
            more than the margin). `note` says where weighted voting is also better
            (interval above 0). At n = 1 the two are the same sample, so n = 1 is left out.
rebase_vs_sampling
            "REBASE reaches a given accuracy with fewer FLOPs than sampling." Per model,
            PRM, REBASE search entry, budget and selection rule (majority, best-of-n,
            weighted majority; headline aggregations), against the sampling curve of the
            same rule (majority voting; best_of_n / weighted_majority with the same PRM and
            aggregation), pipeline.analysis.matched_compute:
              ratio = FLOPs the sampling curve needs to reach REBASE's accuracy (piecewise
                      linear in FLOPs: a mixture of adjacent n) / REBASE's FLOPs, with a
                      paired percentile-bootstrap 95% interval over problems;
              diff  = REBASE - the sampling mixture of the same mean FLOPs, paired.
            Supported when the ratio's interval lies above 1 (sampling needs more
            FLOPs), refuted when it lies below 1 (REBASE needs more); the accuracy
            difference at equal FLOPs is reported beside it.
small_model_optimal
            "With two or more model sizes, the smaller model plus its best strategy is
            compute-optimal at small budgets." For each pair of consecutive sizes S < L,
            on the budget grid (pipeline.analysis.size, table `model_size`): each model's
            best point within the budget chosen on K - 1 folds and scored on the K-th,
            d_i = S_i - L_i, nested cross-validation SE (pipeline.analysis.nested_cv).
            The line tests the smallest budget at which both models run (supported:
            interval above 0; refuted: below 0); `note` lists the budgets where S wins,
            ties and loses.

`power` gives, per dataset and model, the minimum detectable difference of best-of-N
against majority voting at the largest n (the first PRM and headline aggregation):
MDE = (z_0.975 + z_0.80) sd(d) / sqrt(n), with its inputs.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from pipeline.analysis import matched_compute, size, stats

CLAIMS = {
    "saturation": "Voting saturates as n grows",
    "weighted_vs_majority": "Weighted voting >= majority voting (non-inferiority, every n)",
    "rebase_vs_sampling": "REBASE reaches a given accuracy with fewer FLOPs than sampling",
    "small_model_optimal": "A smaller model with a better strategy is compute-optimal at small budgets",
}
SATURATION_MARGIN = 0.02  # accuracy gained by the last doubling of n that still counts as saturated
NONINFERIORITY_MARGIN = 0.02  # how much less accurate weighted voting may be and still count as "at least"

SCHEMA = {
    "dataset": pl.String, "claim": pl.String, "subject": pl.String, "test": pl.String,
    "num_problems": pl.Int64, "diff": pl.Float64, "diff_se": pl.Float64, "ci_low": pl.Float64,
    "ci_high": pl.Float64, "p_value": pl.Float64, "method": pl.String, "margin": pl.Float64,
    "ratio": pl.Float64, "ratio_ci_low": pl.Float64, "ratio_ci_high": pl.Float64,
    "criterion": pl.String, "mde": pl.Float64, "verdict": pl.String, "note": pl.String,
}
POWER_SCHEMA = {
    "dataset": pl.String, "model": pl.String, "comparison": pl.String, "num_problems": pl.Int64,
    "sd_diff": pl.Float64, "z_alpha": pl.Float64, "z_power": pl.Float64, "mde": pl.Float64,
}
COST = "flops_paper"


def inconclusive(n: int) -> str:
    return f"inconclusive at {n} problems"


def not_testable(reason: str) -> str:
    return f"not testable ({reason})" if reason else "not testable"


def verdict(p: stats.Paired, *, above: float = 0.0, below: float = 0.0) -> str:
    """supported when the 95% interval lies above `above`, refuted when it lies below
    `below`, else inconclusive; not testable (with the reason) without a test."""
    if not p.testable():
        return not_testable(p.reason)
    if p.ci_low > above:
        return "supported"
    if p.ci_high < below:
        return "refuted"
    return inconclusive(p.num_problems)


def _row(dataset: str, claim: str, subject: str, test: str, p: stats.Paired | None, *, mde: float = math.nan,
         note: str = "", margin: float = math.nan, criterion: str = "", verdict_: str | None = None,
         ratio: matched_compute.Ratio | None = None) -> dict:
    if p is None:
        p = stats.untestable(note or "not testable")
    return {"dataset": dataset, "claim": claim, "subject": subject, "test": test,
            "num_problems": p.num_problems, "diff": p.diff, "diff_se": p.diff_se, "ci_low": p.ci_low,
            "ci_high": p.ci_high, "p_value": p.p_value, "method": p.method, "margin": margin,
            "ratio": ratio.ratio if ratio else math.nan, "ratio_ci_low": ratio.ci_low if ratio else math.nan,
            "ratio_ci_high": ratio.ci_high if ratio else math.nan, "criterion": criterion, "mde": mde,
            "verdict": verdict(p) if verdict_ is None else verdict_, "note": note}


def _untestable(dataset: str, claim: str, why: str, subject: str = "") -> dict:
    return _row(dataset, claim, subject, "", stats.untestable(why), verdict_=not_testable(why), note=why)


def _contrast(rows: pl.DataFrame, coefs: dict[str, float]) -> tuple[stats.Paired, float]:
    """sum_j coef_j acc_j(point j) per problem (problems every point has), and its MDE."""
    sub = rows.filter(pl.col("point").is_in(list(coefs)))
    # the problems every point has a row for (a tree search may cover fewer); a NULL value
    # on one of them is kept (as NaN), so the test says it is not testable
    common = sub.group_by("problem_id").agg(pl.col("point").n_unique().alias("k")).filter(pl.col("k") == len(coefs))
    wide = sub.filter(pl.col("problem_id").is_in(common["problem_id"].implode())).pivot(
        on="point", index="problem_id", values=["accuracy", "accuracy_se"], aggregate_function="first")
    acc = {p: f"accuracy_{p}" for p in coefs}
    se = {p: f"accuracy_se_{p}" for p in coefs}
    if any(acc[p] not in wide.columns for p in coefs):
        return stats.untestable("a point of the test is missing"), math.nan
    # a NULL value stays in (as NaN): the test then says it is not testable
    wide = wide.with_columns([pl.col(c).cast(pl.Float64).fill_null(math.nan) for c in wide.columns if c != "problem_id"])
    d = sum(c * wide[acc[p]].to_numpy() for p, c in coefs.items())
    v = sum(c * c * wide[se[p]].to_numpy() ** 2 for p, c in coefs.items())
    d = np.asarray(d, dtype=float) if len(wide) else np.array([])
    result = stats.contrast(d, v if len(wide) else None)
    sd = float(np.std(d, ddof=1)) if d.size > 1 and np.isfinite(d).all() else math.nan
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


def _ci(p: stats.Paired) -> str:
    return f"{p.diff:+.3f} [{p.ci_low:+.3f}, {p.ci_high:+.3f}]" if p.testable() else "–"


def _coverage_note(oracle: pl.DataFrame | None, rows: pl.DataFrame, model: str, n: int, label: str) -> str:
    """'coverage@N - <label> = +0.42 [+0.33, +0.51]' from the oracle rows (pass@N)."""
    if oracle is None or oracle.is_empty():
        return ""
    cov = oracle.filter((pl.col("model") == model) & (pl.col("strategy") == "coverage") & (pl.col("n") == n))
    if cov.is_empty():
        return ""
    both = pl.concat([rows.select("point", "problem_id", "accuracy", "accuracy_se"),
                      cov.select("point", "problem_id", "accuracy", "accuracy_se")], how="vertical_relaxed")
    p, _ = _contrast(both, {cov["point"][0]: 1, label: -1})
    return f"coverage@{n} - this@{n} = {_ci(p)} (what choosing better among the same {n} samples could gain)"


def _saturation(dataset, rows, pts, oracle, margin: float) -> list[dict]:
    out = []
    curves = pts.filter(pl.col("strategy").is_in(["majority", "weighted_majority"])).select(
        "model", "strategy", "prm", "aggregation").unique(maintain_order=True).rows()
    criterion = f"supported if ci_high < {margin:g}; refuted if ci_low > {margin:g}"
    for model, strategy, prm, agg in curves:
        c = _curve(pts, model, strategy, prm, agg)
        subject = c["point"][0].rsplit("@", 1)[0]
        ns, labels = c["n"].to_list(), c["point"].to_list()
        if len(ns) < 2:
            out.append(_untestable(dataset, "saturation", f"only {len(ns)} value of n", subject))
            continue
        p, mde = _contrast(rows, {labels[-1]: 1, labels[-2]: -1})
        test = (f"gain of the last doubling, acc@{ns[-1]} - acc@{ns[-2]}, below the margin "
                f"{margin:g} with 95% confidence")
        note = _coverage_note(oracle, rows, model, ns[-1], labels[-1])
        # supported = the interval lies BELOW the margin; refuted = above it (still rising)
        v = None
        if p.testable():
            v = "refuted" if p.ci_low > margin else "supported" if p.ci_high < margin else inconclusive(p.num_problems)
        out.append(_row(dataset, "saturation", subject, test, p, mde=mde, margin=margin, criterion=criterion,
                        verdict_=v, note=note))
    if not out:
        out.append(_untestable(dataset, "saturation", "no voting strategy in this run"))
    return out


def _weighted(dataset, rows, pts, margin: float) -> list[dict]:
    out = []
    criterion = f"supported if ci_low > -{margin:g}; refuted if ci_high < -{margin:g}"
    for model in pts["model"].unique(maintain_order=True).to_list():
        maj = _curve(pts, model, "majority", None, None)
        wm = pts.filter((pl.col("model") == model) & (pl.col("strategy") == "weighted_majority"))
        if maj.is_empty() or wm.is_empty():
            continue
        maj_at = dict(zip(maj["n"], maj["point"]))
        for (prm, agg), g in wm.group_by("prm", "aggregation", maintain_order=True):
            subject = f"{model}: weighted_majority[{prm},{agg}] vs majority"
            ns = sorted(n for n in set(g["n"]) & set(maj_at) if n >= 2)
            if not ns:
                out.append(_untestable(dataset, "weighted_vs_majority", "no common n >= 2", subject))
                continue
            at = dict(zip(g["n"], g["point"]))
            for n in ns:
                p, mde = _contrast(rows, {at[n]: 1, maj_at[n]: -1})
                note = "also better: interval above 0" if p.testable() and p.ci_low > 0 else ""
                out.append(_row(dataset, "weighted_vs_majority", f"{subject} @{n}",
                                f"non-inferiority: wm@{n} - maj@{n} > -{margin:g}", p, mde=mde, margin=margin,
                                criterion=criterion, verdict_=verdict(p, above=-margin, below=-margin), note=note))
    if not out:
        out.append(_untestable(dataset, "weighted_vs_majority",
                               "needs majority and weighted majority voting (a PRM) for one model"))
    return out


def _rebase(dataset, rows, pts, strategies: pl.DataFrame, *, seed: int) -> list[dict]:
    out = []
    rebase = strategies.filter(pl.col("algorithm") == "rebase")
    selection = dict(zip(strategies["strategy"], strategies["selection"]))
    r = pts.filter(pl.col("strategy").is_in(rebase["strategy"].to_list()))
    criterion = "supported if ratio_ci_low > 1; refuted if ratio_ci_high < 1"
    for (model, prm, strategy, agg), g in r.group_by("model", "prm", "strategy", "aggregation", maintain_order=True):
        rule = selection.get(strategy)
        subject = f"{model}: {strategy}" + (f"[{prm},{agg}]" if agg else f"[{prm}]")
        sampling = (_curve(pts, model, "majority", None, None) if rule == "majority"
                    else _curve(pts, model, rule, prm, agg))
        if sampling.height < 2:
            out.append(_untestable(dataset, "rebase_vs_sampling", f"fewer than two sampling points with rule {rule}",
                                   subject))
            continue
        curve = sampling["point"].to_list()
        cost_rows = rows.filter(pl.col("point").is_in([*curve, *g["point"].to_list()]))
        for w in g.sort("n").iter_rows(named=True):
            ratio = matched_compute.flops_ratio(cost_rows, w["point"], curve, cost=COST, seed=seed)
            m = matched_compute.matched_difference(cost_rows, w["point"], curve, cost=COST)
            p = m.paired
            mde = math.nan
            if p.testable() and p.num_problems > 1:
                mde = stats.mde(p.diff_se * math.sqrt(p.num_problems), p.num_problems)
            bound = {"at most": "<= ", "more than": "> "}.get(ratio.censored, "")
            test = (f"FLOPs {rule} sampling needs to reach {strategy}@{w['n']}'s accuracy / its "
                    f"{ratio.point_flops:.3g} FLOPs = {bound}{ratio.ratio:.2f} (bootstrap over problems); "
                    f"accuracy at equal FLOPs vs " + (m.mixture or "no sampling mixture of that cost"))
            if not ratio.num_problems or math.isnan(ratio.ratio):
                v = not_testable("no common problems")
            elif ratio.ci_low > 1:
                v = "supported"
            elif ratio.ci_high < 1:
                v = "refuted"
            else:
                v = inconclusive(ratio.num_problems)
            notes = []
            if ratio.censored == "more than":
                notes.append(f"no sampling point reaches its accuracy: the ratio is a lower bound (> {ratio.ratio:.2f})")
            elif ratio.censored == "at most":
                notes.append(f"sampling's cheapest point already reaches its accuracy: the ratio is an upper bound "
                             f"(<= {ratio.ratio:.2f})")
            if not p.testable():
                notes.append(f"accuracy difference at equal FLOPs not testable: {p.reason}")
            note = "; ".join(notes)
            out.append(_row(dataset, "rebase_vs_sampling", f"{subject}@{w['n']}", test, p, mde=mde,
                            criterion=criterion, verdict_=v, ratio=ratio, note=note))
    if not out:
        out.append(_untestable(dataset, "rebase_vs_sampling", "no REBASE search in this run"))
    return out


def _small_model(dataset, model_size: pl.DataFrame | None, present: list[str]) -> list[dict]:
    if len(present) < 2:
        return [_untestable(dataset, "small_model_optimal", f"{len(present)} model size(s) in this run")]
    rows = model_size.filter(pl.col("dataset") == dataset) if model_size is not None else pl.DataFrame()
    if rows.is_empty():
        return [_untestable(dataset, "small_model_optimal", "no budget at which both models run")]
    out = []
    criterion = "supported if ci_low > 0; refuted if ci_high < 0 (at the smallest common budget)"
    for (small, large), g in rows.group_by("small", "large", maintain_order=True):
        g = g.sort("budget")
        first = g.row(0, named=True)
        p = stats.Paired(first["num_problems"] or 0, first["small_held_out"], first["large_held_out"],
                         _nan(first["diff"]), _nan(first["diff_se"]), _nan(first["ci_low"]), _nan(first["ci_high"]),
                         _nan(first["p_value"]), method=first["method"] or "",
                         reason="" if first["method"] else first["outcome"].removeprefix("not testable (")[:-1])
        by = {o: g.filter(pl.col("outcome") == o)["budget"].to_list() for o in (size.SMALLER, size.TIE, size.LARGER)}
        note = "; ".join(f"{o} at {len(b)} budget(s)" + (": " + ", ".join(f"{x:.3g}" for x in b) if b else "")
                         for o, b in by.items()) + f" (of {g.height}; table model_size)"
        test = (f"held-out best of {small} within {first['budget']:.3g} FLOPs - held-out best of {large} "
                f"(cross-fitted, nested-CV SE)")
        mde = stats.mde(p.diff_se * math.sqrt(p.num_problems), p.num_problems) if p.testable() else math.nan
        out.append(_row(dataset, "small_model_optimal", f"{small} vs {large}", test, p, mde=mde,
                        criterion=criterion, note=note))
    return out


def _nan(v) -> float:
    return math.nan if v is None else float(v)


def evaluate(cand: pl.DataFrame, *, folds: pl.DataFrame, strategies: pl.DataFrame,
             models: pl.DataFrame | None = None, model_size: pl.DataFrame | None = None,
             oracle: pl.DataFrame | None = None, seed: int = 0,
             saturation_margin: float = SATURATION_MARGIN,
             noninferiority_margin: float = NONINFERIORITY_MARGIN) -> pl.DataFrame:
    """The `claims` table from the headline non-oracle per-problem rows `cand` (with their
    `point` label; aggregate.candidate_rows), the `folds`, `strategies` and `models`
    tables, the `model_size` table (pipeline.analysis.size; computed here when None) and
    the oracle (coverage) rows for the saturation notes."""
    if model_size is None and models is not None:
        model_size = size.table(cand, folds, models, seed=seed)
    out = []
    for (dataset,), rows in cand.group_by("dataset", maintain_order=True):
        pts = _points(rows)
        orc = oracle.filter(pl.col("dataset") == dataset) if oracle is not None else None
        out += _saturation(dataset, rows, pts, orc, saturation_margin)
        out += _weighted(dataset, rows, pts, noninferiority_margin)
        out += _rebase(dataset, rows, pts, strategies, seed=seed)
        out += _small_model(dataset, model_size, pts["model"].unique().to_list())
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
