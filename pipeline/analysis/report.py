"""What the report shows, in words and tables, drawn from the database (pipeline.analysis.views).

    results/summary.md         a short Markdown summary: the protocol (headline step
                               aggregations, folds), per dataset the paper's claims tested
                               on this run (pipeline.analysis.claims) with the minimum detectable
                               difference, the best accuracy of every headline line with
                               its 95% interval, the Pareto front (in-sample and held-out
                               accuracy, each point's paired gain over the previous one)
                               and the compute-optimal choice per budget (in-sample and
                               held-out, paper FLOPs convention; held-out intervals by
                               nested cross-validation, accuracy intervals inside [0, 1]),
                               DVTS and particle filtering against beam search, REBASE and
                               sampling at matched FLOPs (pipeline.analysis.search_compare,
                               from the `search_compare` frame when present), with two or
                               more model sizes the model-size section
                               (`model_size_markdown`: families, what the pair can and
                               cannot show, the table `model_size`, the size fit), measured latency
                               (`latency_section`: seconds per problem beside FLOPs at the
                               largest n of every headline line, the device(s) they were
                               measured on, and the seconds front per device), the fitted
                               compute-optimal model-size line with its bootstrap
                               intervals when there are two sizes, and per convention the
                               FLOPs the difficulty-adaptive policy saves at the best
                               fixed point's held-out accuracy, with its interval
                               (`adaptive_lines`, from the table `adaptive`)
    results/tables/<view>.html the views accuracy_vs_flops, pareto and compute_optimal and
                               the claims and adaptive tables as self-contained HTML
                               tables, which `snakemake --report` embeds beside the figures

Both are written by the aggregate job (see rules/aggregate.smk); the Snakemake report
(`snakemake --report results/report.html`) wraps figures, tables and this summary into
one HTML file.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import polars as pl

from pipeline.analysis import prm_quality, search_compare, stats
from pipeline.analysis.views import COST_CONVENTIONS
from pipeline.core import io


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.3f}"
    return str(v)


def markdown_table(df: pl.DataFrame) -> str:
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    # a "|" inside a cell (a "mixed: a | b" device) would split it
    lines += ["| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |" for row in df.rows()]
    return "\n".join(lines)


def html_table(df: pl.DataFrame, title: str, note: str = "") -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in df.rows()
    )
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;font-size:13px;margin:1em}"
        "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:2px 6px;text-align:right}"
        "th{background:#eee;position:sticky;top:0}tr:nth-child(even){background:#f8f8f8}"
        f"</style></head><body><h3>{html.escape(title)}</h3><p>{html.escape(note)}</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table></body></html>\n"
    )


NOTES = {
    "accuracy_vs_flops": "One row per curve point (every step aggregation); accuracy is the mean "
    "over problems, accuracy_se its standard error across problems; tokens and FLOPs are means per "
    "problem. oracle: coverage (pass@n), an upper bound.",
    "pareto": "Headline points no other point dominates (no more cost and no less accuracy), per "
    "dataset and cost convention (paper / full FLOPs; seconds: measured seconds per problem, one front "
    "per device, points without measured seconds or measured on several devices left out), across all "
    "models, PRMs and strategies; oracle strategies excluded; flops is the cost in the convention. "
    "held_out_accuracy: the choice within this point's cost made on the other folds, "
    "scored on the held-out fold (cross-fitting). gain: paired accuracy difference to the previous "
    "front point, with its 95% interval; beats_previous when the interval excludes 0.",
    "compute_optimal": "Per budget (4 per decade; FLOPs, or seconds per problem per device in the "
    "seconds convention): the most accurate headline point with flops (its cost) <= budget "
    "(in-sample, biased upwards: the maximum of many noisy estimates), beside the held-out accuracy "
    "of the same choice made on K-1 folds and scored on the K-th.",
    "claims": "The paper's qualitative claims tested on this run at matched compute: paired differences "
    "(and for REBASE the FLOPs ratio sampling / REBASE), 95% intervals, two-sided p-values, the margin, "
    "the decision rule (criterion), the minimum detectable difference at 80% power, and a verdict "
    "(definitions: pipeline/analysis/claims.py).",
    "adaptive": "Difficulty-adaptive allocation per dataset, model, difficulty source (predicted "
    "from a probe of k samples; oracle: pass@1 from the reference answers), FLOPs convention and "
    "budget: held-out accuracy (choices made on the other folds) with its SE and mean FLOPs, the "
    "in-sample choices per difficulty bin (bin1 the easiest), the best fixed point and fixed mixture "
    "chosen the same way, the paired differences with 95% intervals, and the FLOPs saving at the "
    "best fixed point's held-out accuracy with its 95% bootstrap interval (pipeline/analysis/allocation.py).",
}
TABLE_VIEWS = tuple(NOTES)


def write_tables(views: dict[str, pl.DataFrame], paths: list[str | Path]) -> None:
    """Each path's stem names the view it shows (one of TABLE_VIEWS)."""
    for path in map(Path, paths):
        if path.stem not in TABLE_VIEWS:
            raise ValueError(f"{path}: the file name must be one of {TABLE_VIEWS} (+ .html)")
        io.write_text(html_table(views[path.stem], path.stem, NOTES[path.stem]), path)


def _line() -> pl.Expr:
    """'model / strategy [prm, aggregation]', as the figures label their lines."""
    return pl.concat_str(
        [pl.col("model"), pl.lit(" / "), pl.col("strategy"),
         pl.when(pl.col("prm").is_not_null())
         .then(pl.concat_str([pl.lit(" ["), pl.col("prm"),
                              (pl.lit(", ") + pl.col("aggregation")).fill_null(""), pl.lit("]")]))
         .otherwise(pl.lit(""))]
    )


def _accuracy_ci(value: str, se: str, n: str) -> pl.Expr:
    """'[lo, hi]': an accuracy's 95% Wilson-type interval, inside [0, 1]."""
    return _pm(value, se, n).str.replace(r"^[^\[]*", "")


def _ci(lo: str, hi: str) -> pl.Expr:
    """'[lo, hi]' with three decimals ('–' where undefined)."""
    return (pl.when(pl.col(lo).is_not_null() & pl.col(lo).is_not_nan())
            .then(pl.format("[{}, {}]", pl.col(lo).round(3), pl.col(hi).round(3))).otherwise(pl.lit("–")))


def _pm(value: str, se: str, n: str | int | None = None) -> pl.Expr:
    """'value [lo, hi]': the accuracy with its 95% Wilson-type interval inside [0, 1]
    (pipeline.analysis.stats.accuracy_interval; `n` the number of problems, a column or a
    number, used where the accuracy is 0 or 1)."""
    n_expr = pl.col(n) if isinstance(n, str) else pl.lit(n if n is not None else 1)

    def bound(i: int) -> pl.Expr:
        return pl.struct(pl.col(value).alias("p"), pl.col(se).alias("s"), n_expr.alias("n")).map_batches(
            lambda st: pl.Series(stats.accuracy_interval(
                st.struct.field("p").cast(pl.Float64).fill_null(math.nan).to_numpy(),
                st.struct.field("s").cast(pl.Float64).fill_null(math.nan).to_numpy(),
                st.struct.field("n").cast(pl.Float64).fill_null(math.nan).to_numpy())[i]),
            return_dtype=pl.Float64)

    return (pl.when(pl.col(value).is_not_null() & pl.col(se).is_not_null())
            .then(pl.format("{} [{}, {}]", pl.col(value).round(3), bound(0).round(3), bound(1).round(3)))
            .otherwise(pl.lit("–")))


def _estimate() -> pl.Expr:
    """A claim line's statistic with its 95% interval: the FLOPs ratio (REBASE lines) and
    the accuracy difference."""
    diff = (pl.when(pl.col("diff").is_not_null() & pl.col("ci_low").is_not_null())
            .then(pl.format("{} [{}, {}]", pl.col("diff").round(3), pl.col("ci_low").round(3), pl.col("ci_high").round(3)))
            .when(pl.col("diff").is_not_null()).then(pl.col("diff").round(3).cast(pl.String))
            .otherwise(pl.lit("–")))
    ratio = pl.format("FLOPs ratio {} [{}, {}]; Δacc at equal FLOPs ", pl.col("ratio").round(2),
                      pl.col("ratio_ci_low").round(2), pl.col("ratio_ci_high").round(2))
    return pl.when(pl.col("ratio").is_not_null()).then(pl.concat_str([ratio, diff])).otherwise(diff)


def claims_markdown(claims: pl.DataFrame, power: pl.DataFrame | None = None) -> list[str]:
    """The claim table of one dataset and the power line(s)."""
    from pipeline.analysis.claims import CLAIMS

    out = ["### The paper's claims, tested on this run", "",
           "Every line compares points at matched compute, paired over the problems: the statistic "
           "with its 95% interval, the margin where the claim allows one, the decision rule "
           "(criterion) and the verdict (per line at 95%, not corrected for the number of lines; "
           "\"not testable\" says why). Saturation: the gain of the last doubling of n must lie below "
           "the margin. Weighted ≥ majority: non-inferiority at every n. REBASE: the FLOPs sampling needs "
           "to reach REBASE's accuracy over REBASE's (a mixture of adjacent n; > 1: REBASE saves), "
           "bootstrap interval, beside the accuracy difference at equal FLOPs. Smaller model: each "
           "model's best point within the budget chosen on the other folds (nested cross-validation "
           "SE). MDE: the smallest true difference the line's test detects with 80% power. "
           "Definitions: `pipeline/analysis/claims.py`.", ""]
    t = claims.with_columns(
        claim=pl.col("claim").replace_strict(CLAIMS, default=pl.col("claim")),
        estimate=_estimate(),
        subject=pl.when(pl.col("note").str.len_chars() > 0).then(
            pl.concat_str([pl.col("subject"), pl.lit(" ("), pl.col("note"), pl.lit(")")])).otherwise(pl.col("subject")),
    ).select("claim", "subject", "test", pl.col("estimate").alias("estimate [95% CI]"), "margin", "criterion",
             pl.col("p_value").alias("p"), "mde", "verdict")
    out += [markdown_table(t), ""]
    if power is not None and power.height:
        for r in power.iter_rows(named=True):
            out.append(
                f"Smallest detectable difference for {r['comparison']} (best-of-N against majority "
                f"voting at the largest n) with {r['num_problems']} problems: **{_fmt(r['mde'])}** at "
                f"80% power, two-sided 5% (= ({r['z_alpha']:.2f} + {r['z_power']:.2f}) x sd / sqrt(n); "
                f"sd of the per-problem differences {_fmt(r['sd_diff'])}, n = {r['num_problems']}).")
        out.append("")
    return out


def model_size_markdown(table: pl.DataFrame | None, models: pl.DataFrame | None, fit, dataset: str) -> list[str]:
    """The model-size section of one dataset: the models and their families, what the
    pair can and cannot show, the compute-optimal size per budget with each model's
    held-out best and their paired difference (table `model_size`), and the size fit."""
    from pipeline.analysis import size

    if table is None or models is None:
        return []
    t = table.filter(pl.col("dataset") == dataset)
    if t.is_empty():
        return []
    out = ["### Model size: which size is compute-optimal at each budget (paper FLOPs)", ""]
    fams = {m: size.family(p) for m, p in zip(models["model"], models["path"])}
    params = dict(zip(models["model"], models["params_total"]))
    used = list(dict.fromkeys([*t["small"], *t["large"]]))
    described = [f"{m} ({params[m] / 1e6:.0f}M parameters; {fams[m] or 'family not known'})" for m in used]
    distinct = {fams[m] for m in used}
    same = len(distinct) == 1 and "" not in distinct
    out += ["Models: " + "; ".join(described) + ". " + (
        "They are from the same family." if same else
        "**They are from different model families** (or of unknown family): they differ in training data, "
        "tokenizer and tuning as well as in size, so this compares these models, not model size alone."), ""]
    out += ["What this pair can show: at each FLOPs budget, whether the smaller model with its best strategy is "
            "more, equally or less accurate than the larger model with its best, at equal FLOPs and on problems "
            "the choices did not see. What it cannot show: a scaling law. With two sizes the compute-optimal "
            "size takes two values and the log-log fit below is fixed by where the optimum switches (if it "
            "does); the paper's fit (log10 C = 1.19 log10 N + 2.03) comes from one family (Pythia, Llemma) "
            "across many sizes.", ""]
    show = t.sort("small", "budget").with_columns(
        small_ho=_pm("small_held_out", "small_held_out_se", "num_problems"),
        large_ho=_pm("large_held_out", "large_held_out_se", "num_problems"),
        d=pl.when(pl.col("ci_low").is_not_null()).then(pl.format("{} [{}, {}]", pl.col("diff").round(3),
                                                                  pl.col("ci_low").round(3), pl.col("ci_high").round(3)))
        .otherwise(pl.lit("–")),
    ).select("budget", pl.col("optimal_model").alias("compute-optimal (in-sample)"),
             pl.col("small_point").alias("smaller: best point"), pl.col("small_ho").alias("its held-out [95% CI]"),
             pl.col("large_point").alias("larger: best point"), pl.col("large_ho").alias("its held-out [95% CI] (larger)"),
             pl.col("d").alias("smaller − larger [95% CI]"), "outcome",
             pl.col("larger_optimal_share").alias("bootstrap: larger optimal"))
    out += ["Per budget: the in-sample compute-optimal model; each model's best point within the budget "
            "(in-sample) and the held-out accuracy of that choice made on the other folds (nested "
            "cross-validation intervals); their paired difference (table `model_size`); and in what "
            "share of 1000 bootstrap resamples of the problems the larger model's best beats the "
            "smaller's in-sample (the uncertainty of the optimal size).", "",
            markdown_table(show), ""]
    counts = t["outcome"].value_counts()
    out += ["Outcome over the budgets: " + ", ".join(f"{o}: {c}" for o, c in counts.sort("outcome").rows()) + ".", ""]
    if fit is not None and hasattr(fit, "slope"):
        text = (f"Size fit: log10 C = {fit.slope:.2f} log10 N {fit.intercept:+.2f} (the paper: log10 C = 1.19 "
                f"log10 N + 2.03; figure `results/plots/compute_optimal_size.png`)")
        if not math.isnan(fit.slope_low):
            text += (f"; bootstrap over problems ({fit.fitted} of {fit.resamples} resamples had a fit): slope "
                     f"95% [{fit.slope_low:.2f}, {fit.slope_high:.2f}], intercept [{fit.intercept_low:.2f}, "
                     f"{fit.intercept_high:.2f}]")
        out += [text + ".", ""]
    else:
        winners = sorted(set(t["optimal_model"].drop_nulls()))
        share = t["larger_optimal_share"].drop_nulls()
        boot = (f"; in the bootstrap the larger model is optimal in at most {share.max():.1%} of the resamples at "
                f"any budget" if share.len() else "")
        out += [f"Size fit: none — {', '.join(winners) or 'no model'} is the compute-optimal size at every budget "
                f"of the grid, so log C against log N_opt has one N and no line can be fitted{boot} (the figure "
                f"shows the paper's line for reference).", ""]
    return out


def summary_markdown(views: dict[str, pl.DataFrame], fits: dict | None = None,
                     models: pl.DataFrame | None = None) -> str:
    """The Markdown summary (paper FLOPs convention). `views` as aggregate.read_views
    returns them; `fits` per dataset a pipeline.analysis.stats.SizeFit (or an (a, b) pair) or None."""
    points = views.get("points", views.get("accuracy_vs_flops"))
    front, optimal = views["pareto"], views["compute_optimal"]
    claims, power = views.get("claims"), views.get("power")
    models = views.get("models") if models is None else models
    analysis = views["analysis"].row(0, named=True) if "analysis" in views and views["analysis"].height else None
    out = ["# Compute-optimal inference: summary", "",
           "Drawn from `results/inference.duckdb` (FLOPs per problem, paper convention: 2 x "
           "policy parameters x generated tokens). Figures: `results/plots/`; full report: "
           "`snakemake --report results/report.html`.", ""]
    if analysis:
        out += [f"Protocol: PRM strategies enter the front, the compute-optimal choice, the claims "
                f"and the figures with the step aggregation(s) {', '.join(analysis['aggregations'])} "
                f"(config `analysis.aggregations`; the paper reports `last`); the others stay in "
                f"`replay` and `accuracy_vs_flops`. Held-out accuracies: the choice is made on "
                f"{analysis['folds'] - 1} of {analysis['folds']} folds of the problems (seed "
                f"{analysis['seed']}, table `folds`) and scored on the remaining one, for every fold. "
                f"Intervals are 95%: accuracies get Wilson-type intervals inside [0, 1]; differences are "
                f"paired normal intervals (the exact sign test where every problem differs alike); a held-out "
                f"accuracy's standard error is estimated by nested cross-validation (the naive one "
                f"under-covers: `pipeline/analysis/nested_cv.py`).", ""]
    if models is not None and models.height:
        out += ["## Models", "", markdown_table(models.select("model", "params_total", "params_embedding")), ""]
    for dataset in points["dataset"].unique(maintain_order=True).to_list():
        c = points.filter(pl.col("dataset") == dataset)
        if "headline" in c.columns:
            c = c.filter(pl.col("headline"))
        problems = int(c["num_problems"].max())
        out += [f"## {dataset}", "", f"{problems} problems.", ""]
        if claims is not None:
            out += claims_markdown(claims.filter(pl.col("dataset") == dataset),
                                   power.filter(pl.col("dataset") == dataset) if power is not None else None)
        best = (
            c.with_columns(line=pl.when(pl.col("oracle")).then(pl.concat_str([_line(), pl.lit(" (oracle)")]))
                           .otherwise(_line()))
            .sort("n").group_by("line", maintain_order=True).last()
            .with_columns(ci=_accuracy_ci("accuracy", "accuracy_se", "num_problems"))
            .select("line", "n", "accuracy", pl.col("ci").alias("95% CI"), "flops_paper", "flops_full")
            .sort("accuracy", descending=True)
        )
        out += ["### Accuracy at the largest n of every line", "", markdown_table(best), ""]
        f = front.filter((pl.col("dataset") == dataset) & (pl.col("convention") == "paper"))
        line = pl.when(pl.col("tied") > 1).then(
            pl.concat_str([_line(), pl.lit(" (+"), (pl.col("tied") - 1).cast(pl.String), pl.lit(" tied)")])
        ).otherwise(_line())
        if "held_out_accuracy" in f.columns:
            f = f.with_columns(line=line, held_out=_pm("held_out_accuracy", "held_out_se", problems),
                               gain_ci=_ci("gain_ci_low", "gain_ci_high")).select(
                "line", "n", pl.col("accuracy").alias("in-sample"), pl.col("held_out").alias("held-out [95% CI]"),
                "flops", pl.col("gain").alias("gain vs previous"), pl.col("gain_ci").alias("gain 95% CI"),
                pl.col("beats_previous").alias("significant"))
        else:
            f = f.with_columns(line=line).select("line", "n", "accuracy", "flops")
        out += ["### Pareto front (paper FLOPs)", "",
                "In-sample accuracy is the maximum over many noisy points (biased upwards); held-out is "
                "the cross-fitted choice within the same FLOPs, scored on problems it did not see. "
                "gain: paired difference to the previous (cheaper) front point.", "",
                markdown_table(f), ""]
        o = optimal.filter((pl.col("dataset") == dataset) & (pl.col("convention") == "paper"))
        if "held_out_accuracy" in o.columns:
            o = o.with_columns(line=_line(), held_out=_pm("held_out_accuracy", "held_out_se", problems)).select(
                "budget", "line", "params_total", "n", pl.col("accuracy").alias("in-sample"),
                pl.col("held_out").alias("held-out [95% CI]"), pl.col("held_out_se").alias("held-out SE"),
                "flops", pl.format("{}/{}", "folds_agreeing", "num_folds").alias("folds agreeing"))
        else:
            o = o.with_columns(line=_line()).select("budget", "line", "n", "accuracy", "flops")
        out += ["### Compute-optimal choice per budget (paper FLOPs)", "",
                "The in-sample choice and its accuracy beside the held-out accuracy of the choice made "
                "on the other folds (folds agreeing: how many folds chose the same point).", "",
                markdown_table(o), ""]
        out += search_compare.summary_lines(views.get("search_compare"), dataset, markdown_table)
        out += latency_section(points.filter(pl.col("dataset") == dataset),
                               front.filter(pl.col("dataset") == dataset))
        fit = (fits or {}).get(dataset)
        if views.get("model_size") is not None and views["model_size"].filter(pl.col("dataset") == dataset).height:
            out += model_size_markdown(views["model_size"], models, fit, dataset)
        elif fit is not None and hasattr(fit, "slope"):
            out += [f"Compute-optimal model size: fitted log10 C = {fit.slope:.2f} log10 N {fit.intercept:+.2f} "
                    "(the paper: log10 C = 1.19 log10 N + 2.03).", ""]
        elif fit is not None:
            a, b = fit
            out += [f"Compute-optimal model size: fitted log10 C = {a:.2f} log10 N {b:+.2f} "
                    "(the paper: log10 C = 1.19 log10 N + 2.03).", ""]
        out += _adaptive_section(views.get("adaptive"), dataset)
    out += prm_quality.summary_lines(views.get("prm_quality"))
    return "\n".join(out)


def _adaptive_section(adaptive: pl.DataFrame | None, dataset: str) -> list[str]:
    if adaptive is None:
        return []
    rows = adaptive.filter(pl.col("dataset") == dataset)
    order = [name for name, _ in COST_CONVENTIONS]
    convs = sorted(rows["convention"].unique().to_list(), key=lambda c: (order.index(c) if c in order else len(order), c))
    lines = [line for conv in convs for line in adaptive_lines(rows, convention=conv)]
    if not lines:
        return []
    return ["### Difficulty-adaptive allocation", "",
            "A probe of the first k cached samples predicts each problem's difficulty; per FLOPs budget "
            "one point per difficulty bin, chosen on the other folds and scored held out (table "
            "`adaptive`, figure `results/plots/adaptive.png`). Saving: the best fixed point's held-out "
            "FLOPs over the adaptive policy's at the same held-out accuracy (> 1: fewer FLOPs).", "",
            *[x for line in lines for x in (line, "")]]


def latency_section(points: pl.DataFrame, front: pl.DataFrame, *, convention: str = "seconds") -> list[str]:
    """Measured latency of one dataset: seconds per problem beside FLOPs at the largest n
    of every headline runnable line, the device(s), the `pareto` front of `convention`
    (one per device) and the points that front leaves out (unmeasured, mixed devices)."""
    from pipeline.analysis.latency import MIXED

    if "seconds" not in points.columns or points.is_empty():
        return []
    c = points.filter(pl.col("headline")) if "headline" in points.columns else points
    c = c.filter(~pl.col("oracle")) if "oracle" in c.columns else c
    out = ["### Latency: measured seconds per problem", ""]
    measured = c.filter(pl.col("seconds").is_not_null())
    if measured.is_empty():
        return out + ["No point has measured seconds: its outputs were written before timing was "
                      "recorded (regenerating them measures them; `pipeline/analysis/latency.py`).", ""]
    devices = measured["device"].drop_nulls().unique().sort().to_list()
    single = [d for d in devices if not d.startswith(MIXED)]
    out += ["Wall-clock seconds per problem of the work (model load apart: `load_s`, once per job) on "
            "the device the stages ran on: sampling strategies at n of N cached samples are charged n/N "
            "of their cache's generation time (plus its scoring time for PRM strategies), tree search "
            "its job's time (`pipeline/analysis/latency.py`; `accuracy_vs_flops.seconds`, `.device`). Measured on: "
            + "; ".join(f"**{d}**" for d in devices) + ".", ""]
    t = (c.with_columns(line=_line()).sort("n").group_by("line", maintain_order=True).last()
         .with_columns(per_tflop=pl.col("seconds") / (pl.col("flops_paper") / 1e12))
         .sort("seconds", nulls_last=True)
         .select("line", "n", "accuracy", "flops_paper", "seconds",
                 pl.col("per_tflop").alias("s per 1e12 FLOPs (paper)"), "load_s",
                 *(["device"] if len(devices) > 1 else [])))
    out += [markdown_table(t), ""]
    f = front.filter(pl.col("convention") == convention) if "convention" in front.columns else front.clear()
    for device in single:
        d = f.filter(pl.col("device") == device)
        if d.is_empty():
            continue
        line = pl.when(pl.col("tied") > 1).then(
            pl.concat_str([_line(), pl.lit(" (+"), (pl.col("tied") - 1).cast(pl.String), pl.lit(" tied)")])
        ).otherwise(_line())
        d = d.with_columns(line=line, held_out=_pm("held_out_accuracy", "held_out_se", int(c["num_problems"].max())),
                           gain_ci=_ci("gain_ci_low", "gain_ci_high")).select(
            "line", "n", pl.col("accuracy").alias("in-sample"), pl.col("held_out").alias("held-out [95% CI]"),
            "seconds", "flops_paper", pl.col("gain").alias("gain vs previous"),
            pl.col("gain_ci").alias("gain 95% CI"), pl.col("beats_previous").alias("significant"))
        out += [f"### Pareto front (seconds on {device})", "", markdown_table(d), ""]
    unmeasured = c.filter(pl.col("seconds").is_null()).height
    # the difficulty-adaptive policies are chosen in FLOPs: their seconds are their chosen
    # points' (pipeline.analysis.point_grid), with no one device
    adaptive = measured.filter(pl.col("device").is_null()).height
    mixed = measured.filter(pl.col("device").str.starts_with(MIXED)).height
    if unmeasured or mixed or adaptive or len(single) > 1:
        out += [f"Seconds measured on different devices are never compared: the `seconds` convention of "
                f"`pareto` and `compute_optimal` has one front per device (column `device`). Left out of "
                f"every seconds front: {unmeasured} headline point(s) without measured seconds and {mixed} "
                f"whose seconds add up work done on several devices (device `mixed: ...`)"
                + (f"; also {adaptive} difficulty-adaptive point(s), chosen in FLOPs (their seconds are "
                   f"those of the points they choose)" if adaptive else "") + ".", ""]
    return out


def write_summary(views: dict[str, pl.DataFrame], out: str | Path, **kwargs) -> None:
    io.write_text(summary_markdown(views, **kwargs), out)


# --------------------------------------------------------------------------- difficulty-adaptive allocation


def _x(v: float) -> str:
    return f"{v:.2f}×" if v is not None and math.isfinite(v) else "–"


def adaptive_lines(adaptive: pl.DataFrame, *, convention: str = "paper") -> list[str]:
    """One Markdown line per dataset x model from the `adaptive` table (pipeline.analysis.allocation):
    the FLOPs the adaptive policy saves at the best fixed strategy's held-out accuracy
    (the target of the largest budget), with its bootstrap interval, or its absence; the
    paired differences at equal budgets; and the oracle-difficulty variant."""
    lines = []
    rows = adaptive.filter(pl.col("convention") == convention)
    for (dataset, model), g in rows.group_by(["dataset", "model"], maintain_order=True):
        pred = g.filter(pl.col("source") == "predicted").sort("budget")
        orc = g.filter(pl.col("source") == "oracle").sort("budget")
        if pred.is_empty():
            continue
        top = pred.row(-1, named=True)
        # the fixed policy's row where its best held-out accuracy (the target) is reached
        tgt = pred.filter(pl.col("fixed_accuracy") >= top["target_accuracy"] - 1e-12).row(0, named=True)
        head = (f"**{dataset} / {model}** ({convention} FLOPs; held out over {top['num_folds']} folds; probe "
                f"k = {top['probe_samples']}, {top['num_bins']} difficulty bins): the best fixed point "
                f"({tgt['fixed_choice']}, chosen for a budget of {tgt['budget']:.3g}) has held-out accuracy "
                f"{tgt['fixed_accuracy']:.3f} (SE {tgt['fixed_accuracy_se']:.3f}) at {tgt['fixed_flops']:.3g} "
                f"FLOPs per problem; ")
        interval = f"95% bootstrap interval {_x(top['saving_ci_low'])}–{_x(top['saving_ci_high'])}"
        if top["saving"] is not None and math.isfinite(top["saving"]):
            need = top["target_flops"] / top["saving"]
            more = f", i.e. {1 / top['saving']:.2f}× the FLOPs" if top["saving"] < 1 else ""
            head += (f"the adaptive policy reaches it with {need:.3g} FLOPs (saving {_x(top['saving'])}{more}; "
                     f"{interval}). ")
        else:
            best = pred.sort("accuracy").row(-1, named=True)
            head += (f"the adaptive policy does not reach it within the budgets: no saving (its best held-out "
                     f"accuracy {best['accuracy']:.3f}, SE {best['accuracy_se']:.3f}; {interval}). ")
        for col, what in (("diff", "the best fixed point"), ("mix_diff", "the fixed mixture")):
            up = pred.filter(pl.col(f"{col}_ci_low") > 0).height
            down = pred.filter(pl.col(f"{col}_ci_high") < 0).height
            head += (f"At equal budgets, adaptive − {what}: {pred[col].min():+.3f} to {pred[col].max():+.3f} "
                     f"(95% interval above 0 at {up}, below 0 at {down} of {pred.height} budgets). ")
        head = head.rstrip()
        if not orc.is_empty():
            o = orc.row(-1, named=True)
            head += (f" With oracle difficulty bins (pass@1 from the reference answers): saving {_x(o['saving'])} "
                     f"({_x(o['saving_ci_low'])}–{_x(o['saving_ci_high'])}).")
        lines.append(head)
    return lines
