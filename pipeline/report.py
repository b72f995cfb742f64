"""What the report shows, in words and tables, drawn from the DuckDB views.

    results/summary.md         a short Markdown summary: per dataset the best accuracy of
                               every line, the Pareto front and the compute-optimal
                               choice per budget (paper FLOPs convention), the fitted
                               compute-optimal model size line when there are two sizes
    results/tables/<view>.html the views accuracy_vs_flops, pareto and compute_optimal as
                               self-contained HTML tables, which `snakemake --report`
                               embeds beside the figures

Both are written by the aggregate job (see rules/aggregate.smk); the Snakemake report
(`snakemake --report results/report.html`) wraps figures, tables and this summary into
one HTML file.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import polars as pl

from pipeline import io, prm_quality

TABLE_VIEWS = ("accuracy_vs_flops", "pareto", "compute_optimal")


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
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in df.rows()]
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
    "accuracy_vs_flops": "One row per curve point; accuracy is the mean over problems, accuracy_se "
    "its standard error across problems; tokens and FLOPs are means per problem. oracle: "
    "coverage (pass@n), an upper bound.",
    "pareto": "Points no other point dominates (no more FLOPs and no less accuracy), per dataset "
    "and FLOPs convention, across all models, PRMs and strategies; oracle strategies excluded.",
    "compute_optimal": "Per FLOPs budget (4 per decade): the most accurate point with flops <= "
    "budget.",
}


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


def summary_markdown(views: dict[str, pl.DataFrame], fits: dict[str, tuple[float, float] | None] | None = None,
                     models: pl.DataFrame | None = None) -> str:
    """The Markdown summary of the three views (paper FLOPs convention)."""
    curve, front, optimal = views["accuracy_vs_flops"], views["pareto"], views["compute_optimal"]
    out = ["# Compute-optimal inference: summary", "",
           "Drawn from the views of `results/inference.duckdb` (FLOPs per problem, paper "
           "convention: 2 x policy parameters x generated tokens). Figures: "
           "`results/plots/`; full report: `snakemake --report results/report.html`.", ""]
    if models is not None and models.height:
        out += ["## Models", "", markdown_table(models.select("model", "params_total", "params_embedding")), ""]
    for dataset in curve["dataset"].unique(maintain_order=True).to_list():
        c = curve.filter(pl.col("dataset") == dataset)
        best = (
            c.with_columns(line=pl.when(pl.col("oracle")).then(pl.concat_str([_line(), pl.lit(" (oracle)")]))
                           .otherwise(_line()))
            .sort("n").group_by("line", maintain_order=True).last()
            .select("line", "n", "accuracy", "accuracy_se", "flops_paper", "flops_full")
            .sort("accuracy", descending=True)
        )
        out += [f"## {dataset}", "", f"{c['num_problems'].max()} problems.", "",
                "### Accuracy at the largest n of every line", "", markdown_table(best), ""]
        f = front.filter((pl.col("dataset") == dataset) & (pl.col("convention") == "paper"))
        out += ["### Pareto front (paper FLOPs)", "",
                markdown_table(f.with_columns(line=pl.when(pl.col("tied") > 1).then(
                    pl.concat_str([_line(), pl.lit(" (+"), (pl.col("tied") - 1).cast(pl.String), pl.lit(" tied)")])
                ).otherwise(_line())).select("line", "n", "accuracy", "flops")), ""]
        o = optimal.filter((pl.col("dataset") == dataset) & (pl.col("convention") == "paper"))
        out += ["### Compute-optimal choice per budget (paper FLOPs)", "",
                markdown_table(o.with_columns(line=_line()).select("budget", "line", "n", "accuracy", "flops")), ""]
        if fits and fits.get(dataset):
            a, b = fits[dataset]
            out += [f"Compute-optimal model size: fitted log10 C = {a:.2f} log10 N {b:+.2f} "
                    "(the paper: log10 C = 1.19 log10 N + 2.03).", ""]
        elif fits is not None and dataset in fits:
            out += ["Compute-optimal model size: one model size is optimal at every budget, "
                    "so no line can be fitted.", ""]
    out += prm_quality.summary_lines(views.get("prm_quality"))
    return "\n".join(out)


def write_summary(views: dict[str, pl.DataFrame], out: str | Path, **kwargs) -> None:
    io.write_text(summary_markdown(views, **kwargs), out)
