"""Held-out choices: the candidates the fronts, compute_optimal and the claims choose
among (`candidate_rows`), split by cost convention and device as the `pareto` view
splits them (`cost_fronts`), and the cross-fitted choice at every budget with its
nested cross-validation standard error (`held_out_problems`), written by the aggregate
stage as the tables `held_out_problems` (HELD_OUT_SCHEMA) and `held_out_se`
(HELD_OUT_SE_SCHEMA), which the views read.
"""

from __future__ import annotations

import math

import polars as pl

from pipeline.analysis import latency, nested_cv, stats, views


def candidate_rows(replay: pl.DataFrame, aggregations) -> pl.DataFrame:
    """Per-problem rows of the headline non-oracle points (what the front, compute_optimal
    and the claims choose among), with their `point` label, in the views' tie order."""
    return (
        replay.filter(~pl.col("strategy").is_in(list(views.ORACLE_STRATEGIES))
                      & (pl.col("aggregation").is_null() | pl.col("aggregation").is_in(list(aggregations))))
        .with_columns(point=views.point_label_expr())
        .sort("dataset", "model", "prm", "strategy", "aggregation", "n", "problem_id", nulls_last=False)
    )


HELD_OUT_SCHEMA = {
    "dataset": pl.String, "convention": pl.String, "device": pl.String, "grid_k": pl.Int64, "at_point": pl.String,
    "budget": pl.Float64, "problem_id": pl.String, "fold": pl.Int32, "point": pl.String,
    "accuracy": pl.Float64, "accuracy_se": pl.Float64, "cost": pl.Float64, "train_accuracy": pl.Float64,
}


def cost_fronts(rows: pl.DataFrame, convention: str, column: str) -> list[tuple[str | None, pl.DataFrame]]:
    """The candidates of one cost convention, split as the `pareto` view splits its
    fronts: [(device, rows)]. A point competes only where its cost is known on every
    problem. In a MEASURED convention (views.MEASURED_CONVENTIONS) the candidates are
    split by the device the point was measured on, and a point measured on several
    devices ("mixed: ...", as accuracy_vs_flops labels it) or on none competes nowhere;
    otherwise one group, device None. Rows: point, problem_id, accuracy, accuracy_se, cost."""
    r = rows.select("point", "problem_id", "accuracy", "accuracy_se", cost=pl.col(column),
                    device=pl.col("device").cast(pl.String) if "device" in rows.columns else pl.lit(None, pl.String))
    per_point = (r.group_by("point").agg(complete=pl.col("cost").is_not_null().all(), devices=pl.col("device"))
                 .with_columns(device=latency.device_label(pl.col("devices"))))
    if convention not in views.MEASURED_CONVENTIONS:
        keep = per_point.filter("complete")["point"]
        return [(None, r.filter(pl.col("point").is_in(keep.implode())).drop("device"))]
    ok = per_point.filter(pl.col("complete") & pl.col("device").is_not_null()
                          & ~pl.col("device").str.starts_with(latency.MIXED))
    return [(device, r.filter(pl.col("point").is_in(g["point"].implode())).drop("device"))
            for device, g in ((d, ok.filter(pl.col("device") == d)) for d in sorted(ok["device"].unique()))]


HELD_OUT_SE_SCHEMA = {
    "dataset": pl.String, "convention": pl.String, "device": pl.String, "grid_k": pl.Int64, "at_point": pl.String,
    "se": pl.Float64, "inflation": pl.Float64, "reps": pl.Int32, "folds": pl.Int32,
}


def held_out_problems(cand: pl.DataFrame, folds: pl.DataFrame, *, seed: int = 0,
                      se_out: list[pl.DataFrame] | None = None) -> pl.DataFrame:
    """The cross-fitted choice per dataset x cost convention (x device, for a measured
    convention: `cost_fronts`) at every budget the views show: the compute_optimal grid
    (a superset of its range: one step beyond the cheapest and the costliest candidate)
    and every candidate's own cost (the front's points are candidates). With `se_out`,
    appends the `held_out_se` table (HELD_OUT_SE_SCHEMA): each budget's nested
    cross-validation standard error (pipeline.analysis.nested_cv), which the `held_out`
    view reports instead of the naive one where it is defined."""
    parts, se_parts = [], []
    for (dataset,), rows in cand.group_by("dataset", maintain_order=True):
        f = folds.filter(pl.col("dataset") == dataset)
        fronts = [(convention, device, r) for convention, column in views.COST_CONVENTIONS
                  for device, r in cost_fronts(rows, convention, column) if r.height]
        for convention, device, r in fronts:
            means = r.group_by("point", maintain_order=True).agg(pl.col("cost").mean())
            budgets = [pl.DataFrame({"grid_k": [None] * means.height, "at_point": means["point"],
                                     "budget": means["cost"]},
                                    schema={"grid_k": pl.Int64, "at_point": pl.String, "budget": pl.Float64})]
            positive = means.filter(pl.col("cost") > 0)["cost"]
            if positive.len():
                per = views.BUDGETS_PER_DECADE
                ks = range(math.floor(per * math.log10(positive.min())) - 1,
                           math.ceil(per * math.log10(positive.max())) + 2)
                budgets.insert(0, pl.DataFrame({"grid_k": list(ks), "at_point": [None] * len(ks),
                                                "budget": [10 ** (k / per) for k in ks]},
                                               schema=budgets[0].schema))
            budgets = pl.concat(budgets)
            out = stats.crossfit(r, f, budgets)
            tags = {"dataset": pl.lit(dataset), "convention": pl.lit(convention), "device": pl.lit(device, pl.String)}
            parts.append(out.with_columns(**tags))
            if se_out is not None:
                cand_m = stats.candidates(r)
                k = int(f.filter(pl.col("problem_id").is_in(cand_m.problems))["fold"].n_unique())
                ne = nested_cv.nested_se(cand_m.accuracy, cand_m.mean_cost(), budgets["budget"].to_numpy(), k,
                                         seed=seed)
                se_parts.append(budgets.select("grid_k", "at_point").with_columns(
                    se=pl.Series(ne.se), inflation=pl.Series(ne.inflation), reps=pl.lit(ne.reps),
                    folds=pl.lit(ne.folds), **tags).fill_nan(None))
    if se_out is not None:
        se_out.append(pl.concat(se_parts, how="diagonal_relaxed").select(
            [pl.col(c).cast(t) for c, t in HELD_OUT_SE_SCHEMA.items()]) if se_parts
            else pl.DataFrame(schema=HELD_OUT_SE_SCHEMA))
    if not parts:
        return pl.DataFrame(schema=HELD_OUT_SCHEMA)
    return pl.concat(parts, how="diagonal_relaxed").select(
        [pl.col(c).cast(t) for c, t in HELD_OUT_SCHEMA.items()])
