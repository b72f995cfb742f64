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

Matched FLOPs. The subject's cost F is its mean FLOPs per problem in the convention. The
comparator runs at several budgets (n); with adjacent points lo, hi of costs
F_lo <= F <= F_hi the comparator at F is the *mixture* that runs hi on a share
lam = (F - F_lo) / (F_hi - F_lo) of the problems and lo on the rest: a policy one can
actually run, whose expected cost is exactly F (linear in FLOPs, not interpolated in log
FLOPs) and whose expected accuracy on problem i (over the draw of which budget runs it,
as every replay here is an expectation) is (1 - lam) lo_i + lam hi_i. The paired
difference per problem is then

    d_i = subject_i - [(1 - lam) lo_i + lam hi_i],
    Monte Carlo variance se_subject_i^2 + (1 - lam)^2 se_lo_i^2 + lam^2 se_hi_i^2,

summarised by pipeline.analysis.stats.contrast (mean, SE, 95% normal interval,
two-sided p) over the problems all points share. A comparator point within a relative
1e-9 of F is used alone (`match` exact). When F lies outside the comparator's range, no
run of it costs F: the row compares with its nearest point in log FLOPs (`match`
"nearest", `flops_ratio` = its cost / F).

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

import numpy as np
import polars as pl

from pipeline.analysis import stats

SUBJECTS = ("dvts", "particles")
COMPARATORS = ("beam", "rebase")  # and "sampling"
CONVENTIONS = (("paper", "flops_paper"), ("full", "flops_full"))
RTOL = 1e-9

SCHEMA = {
    "dataset": pl.String, "convention": pl.String, "model": pl.String, "prm": pl.String,
    "aggregation": pl.String, "selection": pl.String, "subject": pl.String, "subject_flops": pl.Float64,
    "comparator": pl.String, "match": pl.String, "comparator_points": pl.String, "weight_hi": pl.Float64,
    "comparator_flops": pl.Float64, "flops_ratio": pl.Float64, "num_problems": pl.Int64,
    "accuracy_subject": pl.Float64, "accuracy_comparator": pl.Float64, "diff": pl.Float64,
    "diff_se": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64, "p_value": pl.Float64,
    "verdict": pl.String,
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


def matched(flops: float, curve: list[tuple[float, str]]) -> tuple[str, list[tuple[str, float]], float]:
    """How a comparator curve [(cost, point)] meets cost `flops`: ("exact" | "mixture" |
    "nearest", [(point, weight)], cost of that combination)."""
    curve = sorted(curve)
    for f, p in curve:
        if math.isclose(f, flops, rel_tol=RTOL):
            return "exact", [(p, 1.0)], f
    for (f_lo, p_lo), (f_hi, p_hi) in zip(curve, curve[1:]):
        if f_lo < flops < f_hi:
            lam = (flops - f_lo) / (f_hi - f_lo)
            return "mixture", [(p_lo, 1 - lam), (p_hi, lam)], flops
    f, p = min(curve, key=lambda c: abs(math.log(c[0] / flops)) if c[0] > 0 and flops > 0 else math.inf)
    return "nearest", [(p, 1.0)], f


def _paired(rows: pl.DataFrame, subject: str, mix: list[tuple[str, float]]) -> stats.Paired:
    wanted = [subject, *(p for p, _ in mix)]
    wide = rows.filter(pl.col("point").is_in(wanted)).pivot(
        on="point", index="problem_id", values=["accuracy", "accuracy_se"], aggregate_function="first")
    cols = [f"accuracy_{p}" for p in wanted]
    if any(c not in wide.columns for c in cols):
        return stats.contrast([])
    wide = wide.drop_nulls(cols)
    a = wide[f"accuracy_{subject}"].to_numpy()
    b = sum(w * wide[f"accuracy_{p}"].to_numpy() for p, w in mix)
    v = wide[f"accuracy_se_{subject}"].to_numpy() ** 2 + sum(
        w * w * wide[f"accuracy_se_{p}"].to_numpy() ** 2 for p, w in mix)
    b = np.asarray(b, dtype=float)
    return stats.contrast(a - b, v, accuracy_a=float(a.mean()) if a.size else math.nan,
                          accuracy_b=float(b.mean()) if b.size else math.nan)


def verdict(match: str, p: stats.Paired, flops_ratio: float = math.nan) -> str:
    """Matched rows: better / worse / no difference detected. A nearest (unmatched) row
    still decides when the subject dominates or is dominated: more accurate for fewer
    FLOPs (comparator dearer, interval above 0) or less accurate for more."""
    if p.num_problems == 0 or math.isnan(p.diff):
        return "not testable"
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
            ) -> pl.DataFrame:
    """The comparison table (module docstring) from the aggregate views: `candidates` (the
    headline non-oracle per-problem rows, aggregate.READ), `points` and `strategies`."""
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
                for convention, column in CONVENTIONS:
                    f = subj[column]
                    how, mix, cost = matched(f, list(zip(comp[column].to_list(), comp["point"].to_list())))
                    p = _paired(rows, subj["point"], mix)
                    out.append({
                        "dataset": dataset, "convention": convention, "model": model, "prm": subj["prm"],
                        "aggregation": subj["aggregation"], "selection": selection, "subject": subj["point"],
                        "subject_flops": f, "comparator": entry if algorithm == "sampling" or entry == algorithm
                        else f"{entry} ({algorithm})", "match": how,
                        "comparator_points": " + ".join(f"{w:.3f} x {pt}" if how == "mixture" else pt for pt, w in mix),
                        "weight_hi": mix[-1][1] if how == "mixture" else None, "comparator_flops": cost,
                        "flops_ratio": cost / f if f else math.nan, "num_problems": p.num_problems,
                        "accuracy_subject": p.accuracy_a, "accuracy_comparator": p.accuracy_b, "diff": p.diff,
                        "diff_se": p.diff_se, "ci_low": p.ci_low, "ci_high": p.ci_high, "p_value": p.p_value,
                        "verdict": verdict(how, p, cost / f if f else math.nan)})
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
    shown = t.with_columns(ci=ci).select(
        "convention", "subject", pl.col("subject_flops").alias("FLOPs"), "comparator",
        pl.col("comparator_points").alias("at matched FLOPs"), pl.col("accuracy_subject").alias("subject acc"),
        pl.col("accuracy_comparator").alias("comparator acc"), "diff", pl.col("ci").alias("95% CI"),
        pl.col("p_value").alias("p"), "verdict")
    return ["### DVTS and particle filtering against beam search, REBASE and sampling at matched FLOPs", "",
            "Each subject point against each comparator of the same rule, model and PRM at the subject's "
            "mean FLOPs per problem: where two budgets of the comparator bracket them, the mixture that runs "
            "the dearer budget on a share of the problems so that its expected FLOPs equal the subject's "
            "(`w x point` gives the shares); outside the comparator's range, its nearest point, which "
            "decides only when one dominates the other (more accurate for fewer FLOPs). Paired over problems, 95% normal intervals; both FLOPs conventions "
            "(full: prompt and PRM tokens too). Definitions: `pipeline/analysis/search_compare.py`.", "",
            markdown_table(shown), ""]
