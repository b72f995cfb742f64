"""The peer searches (DVTS, particle filtering) against beam search, REBASE and sampling at
matched FLOPs, paired over problems: pure functions over the views' frames.

`compare(candidates, points, strategies)` returns one row per subject point x comparator x
FLOPs convention (paper, full), where

    subject     a headline point of a search entry whose algorithm is in SUBJECTS
                (strategy "<entry>_<rule>", its budget n)
    comparator  a search entry whose algorithm is in COMPARATORS, or "sampling" (the
                replayed strategy of the same rule: majority voting, or best-of-n /
                weighted majority with the same PRM), with the same model, PRM, rule
                and step aggregation

Matched FLOPs, by pipeline.analysis.matched_compute (the claims' implementation). The
subject's cost F is its mean FLOPs per problem in the convention. The comparator runs at
several budgets (n); with adjacent points lo, hi of mean costs F_lo <= F <= F_hi the
comparator at F is the *mixture* that runs hi on a share lam = (F - F_lo) / (F_hi - F_lo)
of the problems and lo on the rest (matched_compute.matched_difference): a policy one can
actually run, whose expected cost is exactly F and whose expected accuracy on problem i is
(1 - lam) lo_i + lam hi_i, compared paired over the problems all points share, Monte Carlo
variances counted (stats.contrast: mean, SE, 95% normal interval, two-sided p; the sign
test for a constant difference). A comparator point within a relative 1e-9 of F is used
alone (`match` exact). When F lies outside the comparator's range no run of it costs F:
the row compares with its nearest point in log FLOPs (`match` "nearest", the same paired
contrast against that point alone, `flops_ratio` = its cost / F).

Beside it, the FLOPs the comparator needs to reach the subject's accuracy over the
subject's FLOPs (matched_compute.flops_ratio: the comparator's piecewise-linear curve,
a paired percentile bootstrap over problems; censored "at most" / "more than" where the
comparator's cheapest point already reaches it / none does): `needed_ratio` > 1 means
the subject saves compute, as the claims table reports it for REBASE against sampling.
NULL where the comparator has one point (no curve: the ratio would only be censored).

Verdict, matched rows: "better" when the 95% interval lies above 0, "worse" below 0,
otherwise "no difference detected at <n> problems". Nearest rows decide only by
dominance: "better with fewer FLOPs" (interval above 0 and the comparator costs at
least as much), "worse with more FLOPs" (below 0, comparator costs at most as much),
otherwise "not matched (comparator <ratio>x the FLOPs)": a difference there mixes the
strategy with the compute.

The summary's section (`summary_lines`, called by pipeline.analysis.report) shows the
table; the aggregate job computes it from the database's views when it writes the
summary (pipeline.aggregate.write_outputs).
"""

from __future__ import annotations

import math

import polars as pl

from pipeline.analysis import matched_compute, stats

SUBJECTS = ("dvts", "particles")
COMPARATORS = ("beam", "rebase")  # and "sampling"
CONVENTIONS = (("paper", "flops_paper"), ("full", "flops_full"))

SCHEMA = {
    "dataset": pl.String, "convention": pl.String, "model": pl.String, "prm": pl.String,
    "aggregation": pl.String, "selection": pl.String, "subject": pl.String, "subject_flops": pl.Float64,
    "comparator": pl.String, "match": pl.String, "comparator_points": pl.String, "comparator_flops": pl.Float64, "flops_ratio": pl.Float64, "num_problems": pl.Int64,
    "accuracy_subject": pl.Float64, "accuracy_comparator": pl.Float64, "diff": pl.Float64,
    "diff_se": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64, "p_value": pl.Float64,
    "verdict": pl.String, "needed_ratio": pl.Float64, "needed_ci_low": pl.Float64, "needed_ci_high": pl.Float64,
    "needed_censored": pl.String,
}


def _curves(candidates: pl.DataFrame, points: pl.DataFrame, strategies: pl.DataFrame) -> pl.DataFrame:
    """Per candidate point: dataset, point, model, prm, aggregation, n, its entry (search
    entry name, or "sampling"), algorithm, selection rule, mean FLOPs in both conventions."""
    algo = strategies.select("strategy", "algorithm", "selection", "family")
    meta = points.select("dataset", "point", "strategy", "prm", "aggregation", "n").join(algo, on="strategy", how="left")
    cost = candidates.group_by("dataset", "point").agg(
        pl.col("model").first(), pl.col("flops_paper").mean(), pl.col("flops_full").mean())
    out = cost.join(meta, on=["dataset", "point"], how="inner")
    searched = pl.col("family") == "tree search"
    entry = pl.col("strategy").str.slice(0, pl.col("strategy").str.len_chars() - pl.col("selection").str.len_chars() - 1)
    return out.with_columns(
        entry=pl.when(searched).then(entry).otherwise(pl.lit("sampling")),
        algorithm=pl.when(searched).then(pl.col("algorithm")).otherwise(pl.lit("sampling")),
        selection=pl.coalesce("selection", "strategy"),
    ).filter(pl.col("selection").is_in(["majority", "best_of_n", "weighted_majority"]))


def _nearest(rows: pl.DataFrame, subject: str, comparator: list[str], flops: float, column: str
             ) -> tuple[str, float, stats.Paired]:
    """The comparator point nearest to cost `flops` in log FLOPs, its mean cost and the
    subject minus it, paired (a point outside the comparator's cost range)."""
    c = matched_compute.curve(rows, comparator, cost=column)
    costs = c.mean_cost
    j = min(range(len(c.points)), key=lambda i: abs(math.log(costs[i] / flops)) if costs[i] > 0 and flops > 0
            else math.inf)
    pair = matched_compute.curve(rows, [subject, c.points[j]], cost=column)
    i, k = pair.points.index(subject), pair.points.index(c.points[j])
    a, b = pair.accuracy[i], pair.accuracy[k]
    p = stats.contrast(a - b, pair.mc_var[i] + pair.mc_var[k], accuracy_a=float(a.mean()) if a.size else math.nan,
                       accuracy_b=float(b.mean()) if b.size else math.nan)
    return c.points[j], float(costs[j]), p


def verdict(match: str, p: stats.Paired, flops_ratio: float = math.nan) -> str:
    """Matched rows: better / worse / no difference detected. A nearest (unmatched) row
    still decides when the subject dominates or is dominated: more accurate for fewer
    FLOPs (comparator dearer, interval above 0) or less accurate for more."""
    if not p.testable():
        return f"not testable: {p.reason}"
    if match == "nearest":
        if flops_ratio >= 1 and p.ci_low > 0:
            return "better with fewer FLOPs"
        if flops_ratio <= 1 and p.ci_high < 0:
            return "worse with more FLOPs"
        return f"not matched (comparator {flops_ratio:.2f}x the FLOPs)"
    if p.ci_low > 0:
        return "better"
    if p.ci_high < 0:
        return "worse"
    return f"no difference detected at {p.num_problems} problems"


def compare(candidates: pl.DataFrame, points: pl.DataFrame, strategies: pl.DataFrame, *,
            subjects: tuple[str, ...] = SUBJECTS, comparators: tuple[str, ...] = (*COMPARATORS, "sampling"),
            resamples: int = matched_compute.RESAMPLES, seed: int = 0) -> pl.DataFrame:
    """The comparison table (module docstring) from the aggregate views: `candidates` (the
    headline non-oracle per-problem rows, aggregate.READ), `points` and `strategies`;
    `resamples` and `seed` of the FLOPs ratio's bootstrap."""
    curves = _curves(candidates, points, strategies)
    out = []
    keys = ["dataset", "model", "prm", "aggregation", "selection"]
    for key, group in curves.group_by(keys, maintain_order=True):
        # majority voting has no PRM: a search's majority rows compare with sampling's
        # majority (prm and aggregation NULL) as well as with other searches'
        dataset, model, prm, aggregation, selection = key
        pool = group
        if selection == "majority":
            pool = pl.concat([group, curves.filter(
                (pl.col("dataset") == dataset) & (pl.col("model") == model) & (pl.col("selection") == "majority")
                & (pl.col("entry") == "sampling"))]).unique("point", maintain_order=True)
        rows = candidates.filter((pl.col("dataset") == dataset) & pl.col("point").is_in(pool["point"].to_list()))
        for subj in pool.filter(pl.col("algorithm").is_in(list(subjects))).sort("entry", "n").iter_rows(named=True):
            for (entry, algorithm), comp in pool.filter(pl.col("algorithm").is_in(list(comparators))).group_by(
                    "entry", "algorithm", maintain_order=True):
                comp_points = comp["point"].to_list()
                for convention, column in CONVENTIONS:
                    m = matched_compute.matched_difference(rows, subj["point"], comp_points, cost=column)
                    f = m.flops if not math.isnan(m.flops) else subj[column]
                    if m.mixture:
                        how = "mixture" if " x " in m.mixture else "exact"
                        shown, cost, p = m.mixture, f, m.paired
                    elif math.isnan(m.flops):
                        how, shown, cost, p = "none", "", math.nan, m.paired
                    else:
                        how = "nearest"
                        shown, cost, p = _nearest(rows, subj["point"], comp_points, f, column)
                    # a single comparator point is no curve: the FLOPs it needs would only be censored
                    r = matched_compute.flops_ratio(rows, subj["point"], comp_points, cost=column,
                                                    resamples=resamples, seed=seed) if len(comp_points) > 1 else None
                    ratio = cost / f if f else math.nan
                    out.append({
                        "dataset": dataset, "convention": convention, "model": model, "prm": subj["prm"],
                        "aggregation": subj["aggregation"], "selection": selection, "subject": subj["point"],
                        "subject_flops": f, "comparator": entry if algorithm == "sampling" or entry == algorithm
                        else f"{entry} ({algorithm})", "match": how, "comparator_points": shown,
                        "comparator_flops": cost, "flops_ratio": ratio, "num_problems": p.num_problems,
                        "accuracy_subject": p.accuracy_a, "accuracy_comparator": p.accuracy_b, "diff": p.diff,
                        "diff_se": p.diff_se, "ci_low": p.ci_low, "ci_high": p.ci_high, "p_value": p.p_value,
                        "verdict": verdict(how, p, ratio), "needed_ratio": r.ratio if r else None,
                        "needed_ci_low": r.ci_low if r else None, "needed_ci_high": r.ci_high if r else None,
                        "needed_censored": r.censored if r else None})
    return pl.DataFrame(out, schema=SCHEMA).fill_nan(None)


def summary_lines(table: pl.DataFrame | None, dataset: str, markdown_table) -> list[str]:
    """The summary's section for one dataset (nothing without a subject search);
    `markdown_table` renders a frame (pipeline.analysis.report's)."""
    if table is None or table.is_empty():
        return []
    t = table.filter(pl.col("dataset") == dataset)
    if t.is_empty():
        return []
    ci = pl.when(pl.col("ci_low").is_not_null()).then(
        pl.format("[{}, {}]", pl.col("ci_low").round(3), pl.col("ci_high").round(3))).otherwise(pl.lit("–"))
    bound = pl.col("needed_censored").replace_strict({"at most": "<= ", "more than": "> "}, default="")
    needed = pl.when(pl.col("needed_ratio").is_not_null()).then(pl.format(
        "{}{} [{}, {}]", bound, pl.col("needed_ratio").round(2), pl.col("needed_ci_low").round(2),
        pl.col("needed_ci_high").round(2))).otherwise(pl.lit("–"))
    shown = t.with_columns(ci=ci, needed=needed).select(
        "convention", "subject", pl.col("subject_flops").alias("FLOPs"), "comparator",
        pl.col("comparator_points").alias("at matched FLOPs"), pl.col("accuracy_subject").alias("subject acc"),
        pl.col("accuracy_comparator").alias("comparator acc"), "diff", pl.col("ci").alias("95% CI"),
        pl.col("p_value").alias("p"), "verdict", pl.col("needed").alias("comparator FLOPs to reach / subject's"))
    return ["### DVTS and particle filtering against beam search, REBASE and sampling at matched FLOPs", "",
            "Each subject point against each comparator of the same rule, model and PRM at the subject's "
            "mean FLOPs per problem: where two budgets of the comparator bracket them, the mixture that runs "
            "the dearer budget on a share of the problems so that its expected FLOPs equal the subject's "
            "(`w x point` gives the shares); outside the comparator's range, its nearest point, which "
            "decides only when one dominates the other (more accurate for fewer FLOPs). Paired over "
            "problems, 95% normal intervals; both FLOPs conventions (full: prompt and PRM tokens too). "
            "Last column: the FLOPs the comparator's curve needs to reach the subject's accuracy over the "
            "subject's (> 1: the subject saves compute; bootstrap 95% interval; `<=` / `>`: censored at the "
            "comparator's cheapest / costliest point). Definitions: `pipeline/analysis/search_compare.py` "
            "(matching: `pipeline/analysis/matched_compute.py`).", "",
            markdown_table(shown), ""]
