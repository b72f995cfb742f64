"""Paper-style figures, drawn from the DuckDB views (pipeline.analysis.views) of the headline points.

    accuracy_vs_flops       per dataset a block of panels: one per strategy family
                            (sampling-based voting, PRM-based selection, tree search,
                            difficulty-adaptive; `points.family`; an oracle line faded)
                            with accuracy against FLOPs per problem (log
                            x), one line per model x strategy with its shaded 95% band,
                            the held-out Pareto front behind in light grey; and a panel
                            with the Pareto front itself: held-out accuracy of the
                            cross-fitted choice at each front point's cost (solid, 95%
                            bars, a star where the point beats the previous front point,
                            paired 95%) against the in-sample front (thin, dashed)
    accuracy_vs_seconds     the same against measured wall-clock seconds per problem (the
                            `seconds` convention, pipeline.analysis.latency): a block per dataset x
                            device, since seconds measured on different devices never share
                            a front; the device in every panel's title. Points without
                            measured seconds, or measured on several devices, are not drawn
    accuracy_vs_n           per dataset one panel per family: accuracy against n (samples,
                            or the search budget; log2 x) with 95% bands (the adaptive
                            policies have no such n and are left out)
    compute_optimal_size    per dataset: the compute-optimal model size against the budget
                            (log-log) with the fitted line log10 C = a log10 N + b and its
                            bootstrap 95% band (problems resampled, pipeline.analysis.stats), beside
                            the paper's log10 C = 1.19 log10 N + 2.03 (Wu et al., Pythia on
                            GSM8K); only meaningful with two or more model sizes
    adaptive                the table `adaptive` (pipeline.analysis.allocation): held-out accuracy
                            against the budget of the difficulty-adaptive policy, the best
                            fixed point, the fixed mixture and oracle-difficulty bins, with
                            95% bands, a panel per dataset x model x convention

Only the headline points (`points.headline`: no step aggregation, or one of
`analysis.aggregations`, the paper's `last` by default) are drawn, so panels stay
readable; the others stay in the database. Colour marks the strategy (with its PRM and
aggregation) and is the same in every panel and figure; line style and marker mark the
model. Lines are found in the data, never listed here: a new strategy (tree search, say)
is a new line. Every function takes polars frames, writes one PNG atomically (Agg
backend) and returns nothing (compute_optimal_size: its fits).
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.analysis.latency import MIXED
from pipeline.analysis.stats import Z95, SizeFit, accuracy_interval, fit_loglog  # noqa: F401  (fit_loglog: the figures' fit)
from pipeline.analysis.views import (
    ADAPTIVE_FAMILY,
    COST_CONVENTIONS,
    FAMILIES,
    ORACLE_STRATEGIES,
)
from pipeline.core import io

LINE_KEYS = ["model", "prm", "strategy", "aggregation"]
PAPER_FIT = (1.19, 2.03)  # log10 C = 1.19 log10 N + 2.03 (Wu et al., Section 4)
_LINESTYLES = ["-", "--", ":", "-."]
_MARKERS = ["o", "s", "^", "D", "v", "P"]
DPI = 110
FRONT_GREY = "0.55"
# x-axis label per cost convention (the FLOPs conventions: "inference FLOPs per problem")
COST_AXIS = {"seconds": "measured wall-clock seconds per problem (model load excluded)"}
TITLE_CHARS = 62  # longer panel titles (a device name) wrap


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def line_label(model: str, prm: str | None, strategy: str, aggregation: str | None) -> str:
    """'model / strategy' plus '[prm, aggregation]' for PRM strategies."""
    label = f"{model} / {strategy}"
    if prm is not None:
        label += f" [{prm}" + (f", {aggregation}]" if aggregation is not None else "]")
    return label


def _short_label(model: str, prm: str | None, strategy: str, aggregation: str | None, *, models: int) -> str:
    """The legend's label: the model only when several are drawn, the PRM and aggregation
    only where they tell lines apart."""
    label = f"{model} / {strategy}" if models > 1 else strategy
    if prm is not None:
        label += f" [{prm}" + (f", {aggregation}]" if aggregation is not None else "]")
    return label


def _families(points: pl.DataFrame) -> list[str]:
    present = points["family"].unique().to_list()
    return [f for f in FAMILIES if f in present] + sorted(f for f in present if f not in FAMILIES)


def _palette(k: int) -> list:
    """k distinct colours without greys (grey is the held-out reference line)."""
    import matplotlib

    if k <= 9:
        cmap = matplotlib.colormaps["tab10"]
        return [cmap(i) for i in range(10) if i != 7][:k]
    cmap = matplotlib.colormaps["tab20"]
    base = [cmap(i) for i in range(20) if i not in (14, 15)]
    return [base[i % len(base)] for i in range(k)]


def _styles(points: pl.DataFrame) -> dict[tuple, dict]:
    """One colour per (prm, strategy, aggregation), in family order, the same in every
    panel and figure. With several models: one line style and marker per model; with
    one, a marker per strategy of its family (so lines that overlap stay apart)."""
    order = {f: i for i, f in enumerate(_families(points))}
    kinds = (points.select("family", "strategy", "prm", "aggregation").unique()
             .with_columns(rank=pl.col("family").replace_strict(order, return_dtype=pl.Int32))
             .sort("rank", "strategy", "prm", "aggregation", nulls_last=False)
             .select("family", "prm", "strategy", "aggregation").rows())
    colour = {k[1:]: c for k, c in zip(kinds, _palette(len(kinds)))}
    in_family: dict[str, list] = {}
    for family, *kind in kinds:
        in_family.setdefault(family, []).append(tuple(kind))
    marker_of = {k: _MARKERS[ks.index(k) % len(_MARKERS)] for ks in in_family.values() for k in ks}
    models = points["model"].unique(maintain_order=True).to_list()
    out = {}
    for model, prm, strategy, agg in points.select(LINE_KEYS).unique(maintain_order=True).rows():
        i = models.index(model)
        kind = (prm, strategy, agg)
        style = {"color": colour[kind], "linestyle": _LINESTYLES[i % len(_LINESTYLES)],
                 "marker": _MARKERS[i % len(_MARKERS)] if len(models) > 1 else marker_of[kind]}
        if strategy in ORACLE_STRATEGIES:
            style["alpha"] = 0.55  # an oracle bound, not a strategy
        out[(model, prm, strategy, agg)] = style
    return out


def _lines(curve: pl.DataFrame):
    for key, g in curve.group_by(LINE_KEYS, maintain_order=True):
        yield tuple(key), g.sort("n")


def _interval(y, se, n=None) -> tuple[np.ndarray, np.ndarray]:
    """95% accuracy interval inside [0, 1] (stats.accuracy_interval; n, the number of
    problems, matters only at accuracy 0 or 1; unknown: a zero-width interval there)."""
    y = np.asarray(y, dtype=float)
    n = np.full(y.shape, 1e12) if n is None else np.asarray(n, dtype=float)
    lo, hi = accuracy_interval(y, np.nan_to_num(np.asarray(se, dtype=float)), n)
    return np.where(np.isnan(lo), y, lo), np.where(np.isnan(hi), y, hi)


def _draw(ax, x, y, se, label, style, n=None) -> None:
    """A line with markers and a shaded 95% band (a big marker with a 95% error bar for a
    single point, e.g. greedy decoding); the band is the accuracy's interval inside [0, 1]."""
    x, y, se = (np.asarray(v, dtype=float) for v in (x, y, se))
    lo, hi = _interval(y, se, n)
    if len(x) == 1:
        ax.errorbar(x, y, yerr=np.vstack([y - lo, hi - y]), capsize=3, label=label,
                    **{**style, "markersize": 8, "markeredgecolor": "black",
                       "markeredgewidth": 0.8, "linestyle": "none", "zorder": 6})
        return
    ax.plot(x, y, label=label, **{"markersize": 4, "linewidth": 1.6, **style})
    ax.fill_between(x, lo, hi, color=style["color"], alpha=0.15, linewidth=0)


def _ylim(values: list[np.ndarray]) -> tuple[float, float]:
    v = np.concatenate([np.asarray(a, float) for a in values if len(a)] or [np.array([0.0, 1.0])])
    v = v[np.isfinite(v)]
    if not v.size:
        return 0.0, 1.0
    lo, hi = max(0.0, v.min() - 0.03), min(1.0, v.max() + 0.03)
    return (lo, hi) if hi > lo else (max(0.0, lo - 0.05), min(1.0, hi + 0.05))


def _save(fig, out: str | Path) -> None:
    for ax in fig.axes:
        if len(ax.get_title()) > TITLE_CHARS:
            ax.title.set_text("\n".join(textwrap.wrap(ax.get_title(), TITLE_CHARS)))
    fig.tight_layout()
    io._atomic(Path(out), lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight"))
    _plt().close(fig)


def _empty(out: str | Path, message: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    io._atomic(Path(out), lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    plt.close(fig)


def _headline(points: pl.DataFrame) -> pl.DataFrame:
    return points.filter(pl.col("headline")) if "headline" in points.columns else points


def _has(ax, sub: pl.DataFrame, family: str) -> bool:
    """False (and a note in the panel) when this dataset has no point of the family."""
    if sub.filter(pl.col("family") == family).height:
        return True
    ax.text(0.5, 0.5, f"no {family} points for this dataset", ha="center", va="center",
            transform=ax.transAxes, fontsize=9, color="0.4")
    ax.set_title(f"{sub['dataset'][0]}: {family}", fontsize=10)
    ax.set_axis_off()
    return False


def _log_xticks(ax) -> None:
    """On a log x axis spanning less than two decades (seconds often do), plainly
    labelled 1-2-5 ticks instead of matplotlib's crowded minor labels."""
    import matplotlib.ticker as mt

    lo, hi = ax.get_xlim()
    if lo > 0 and hi / lo < 100:
        ax.xaxis.set_major_locator(mt.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(mt.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(mt.NullFormatter())


def _front_steps(front: pl.DataFrame, x_max: float, y: str):
    """x, y of a staircase through the front's points, held up to x_max."""
    x = np.append(front["flops"].to_numpy(), max(x_max, front["flops"].max()))
    v = front[y].to_numpy().astype(float)
    return x, np.append(v, v[-1])


def _held_out_curve(held_out: pl.DataFrame | None, dataset: str, convention: str, x_max: float):
    """The held-out accuracy of the best choice within a budget, as a function of the
    budget: the `held_out` view at every candidate's cost (the choice changes only
    there), as x, y, se of a staircase held up to x_max (None without rows)."""
    if held_out is None or held_out.is_empty():
        return None
    h = (held_out.filter((pl.col("dataset") == dataset) & (pl.col("convention") == convention)
                         & pl.col("at_point").is_not_null())
         .group_by("budget").agg(pl.col("accuracy").first(), pl.col("accuracy_se").first()).sort("budget"))
    if h.is_empty():
        return None
    x = np.append(h["budget"].to_numpy(), max(x_max, h["budget"].max()))
    y = np.append(h["accuracy"].to_numpy(), h["accuracy"][-1]).astype(float)
    se = np.append(h["accuracy_se"].to_numpy(), h["accuracy_se"][-1]).astype(float)
    return x, y, np.nan_to_num(se)


def accuracy_vs_flops(points: pl.DataFrame, front: pl.DataFrame, held_out: pl.DataFrame | None,
                      out: str | Path, *, convention: str = "paper") -> None:
    """Per dataset a block of panels, two a row: a panel per strategy family and the Pareto front panel:
    the held-out accuracy of the best choice within each budget (`held_out` view; solid,
    95% band), the front's points at their held-out accuracy (`pareto` view; coloured,
    95% bars, a star where a point beats the previous one) and the in-sample front
    (thin, dashed)."""
    pts = _headline(points)
    if pts.is_empty():
        return _empty(out, "no replay results")
    plt = _plt()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    cost = dict(COST_CONVENTIONS)[convention]
    datasets = pts["dataset"].unique(maintain_order=True).to_list()
    families = _families(pts)
    styles = _styles(pts)
    models = pts["model"].n_unique()
    per = len(families) + 1
    ncols = 2
    nrows = math.ceil(per / ncols)
    fig, axes = plt.subplots(nrows * len(datasets), ncols, figsize=(11, 4.1 * nrows * len(datasets)),
                             squeeze=False)
    for d, dataset in enumerate(datasets):
        block = axes[d * nrows:(d + 1) * nrows].ravel()
        sub = pts.filter(pl.col("dataset") == dataset)
        f = front.filter((pl.col("dataset") == dataset) & (pl.col("convention") == convention)).sort("flops")
        held = f.filter(pl.col("held_out_accuracy").is_not_null()) if "held_out_accuracy" in f.columns else f.clear()
        x_max = float(sub[cost].max())
        curve = _held_out_curve(held_out, dataset, convention, x_max)
        lims = [sub["accuracy"] - Z95 * sub["accuracy_se"], sub["accuracy"] + Z95 * sub["accuracy_se"]]
        empty = set()
        for i, (ax, family) in enumerate(zip(block, families)):
            if not _has(ax, sub, family):
                empty.add(i)
                continue
            if curve is not None:
                ax.step(curve[0], curve[1], where="post", color=FRONT_GREY, linewidth=1.0, alpha=0.7, zorder=1,
                        label="held-out best within budget (all families)")
            for key, g in _lines(sub.filter(pl.col("family") == family)):
                g = g.sort(cost)  # an adaptive policy's cost need not grow with its n in every convention
                _draw(ax, g[cost], g["accuracy"], g["accuracy_se"],
                      _short_label(*key, models=models) + (" (oracle)" if key[2] in ORACLE_STRATEGIES else ""),
                      styles[key])
            ax.set_title(f"{dataset}: {family}", fontsize=10)
            ax.legend(fontsize=7, loc="best", frameon=True, framealpha=0.85)
        ax = block[len(families)]
        handles = []
        if curve is not None:
            x, y, se = curve
            ax.step(x, y, where="post", color="black", linewidth=1.8, zorder=4)
            lo, hi = _interval(y, se)
            ax.fill_between(x, lo, hi, step="post", color="black", alpha=0.12, linewidth=0)
            lims += [lo, hi]
            handles += [Line2D([], [], color="black", linewidth=1.8,
                               label="held-out: best within budget, chosen on the other folds"),
                        Patch(color="black", alpha=0.12, label="its 95% interval")]
        if f.height:
            sx, sy = _front_steps(f, x_max, "accuracy")
            ax.step(sx, sy, where="post", color="black", linewidth=0.9, linestyle="--", zorder=3)
            ax.scatter(sx[:-1], sy[:-1], s=22, facecolors="none", edgecolors="black", linewidths=0.8, zorder=3)
            handles.append(Line2D([], [], color="black", linewidth=0.9, linestyle="--", marker="o", markersize=4,
                                  markerfacecolor="none", label="in-sample front (max of noisy points)"))
        for r in held.iter_rows(named=True):
            key = (r["model"], r["prm"], r["strategy"], r["aggregation"])
            style = styles.get(key, {"color": "black", "marker": "o"})
            lo, hi = _interval([r["held_out_accuracy"]], [r["held_out_se"] or 0])
            half = float(hi[0] - r["held_out_accuracy"])
            ax.errorbar([r["flops"]], [r["held_out_accuracy"]], yerr=[[r["held_out_accuracy"] - lo[0]], [half]],
                        fmt=style["marker"],
                        color=style["color"], markeredgecolor="black", markersize=7, capsize=2.5,
                        elinewidth=1.0, zorder=5)
            if r.get("beats_previous"):
                ax.annotate("*", (r["flops"], r["held_out_accuracy"] + half), ha="center", va="bottom",
                            fontsize=13, fontweight="bold")
        if held.height:
            handles.append(Line2D([], [], color="none", marker="$*$", markersize=9, markerfacecolor="black",
                                  markeredgecolor="black", label="beats the previous front point (paired 95%)"))
            for key in dict.fromkeys((r["model"], r["prm"], r["strategy"], r["aggregation"])
                                     for r in held.iter_rows(named=True)):
                if key in styles:
                    handles.append(Line2D([], [], color=styles[key]["color"], marker=styles[key]["marker"],
                                          linestyle="none", markeredgecolor="black",
                                          label=f"front: {_short_label(*key, models=models)} (held-out, 95%)"))
        if handles:
            ax.legend(handles=handles, fontsize=7, loc="best", frameon=True, framealpha=0.85)
        ax.set_title(f"{dataset}: Pareto front, in-sample vs held-out", fontsize=10)
        ylim = _ylim([np.asarray(v, float) for v in lims])
        for ax in (a for i, a in enumerate(block[:per]) if i not in empty):
            ax.set_xscale("log")
            ax.set_xlim(float(sub[cost].min()) / 1.6, x_max * 1.6)
            _log_xticks(ax)
            ax.set_ylim(*ylim)
            ax.set_xlabel(COST_AXIS.get(convention, f"inference FLOPs per problem ({convention} convention)"),
                          fontsize=8)
            ax.set_ylabel("accuracy", fontsize=8)
            ax.tick_params(labelsize=8)
            ax.grid(True, which="both", alpha=0.25)
        for ax in block[per:]:
            ax.axis("off")
    _save(fig, out)


def accuracy_vs_seconds(points: pl.DataFrame, front: pl.DataFrame, held_out: pl.DataFrame | None,
                        out: str | Path, *, convention: str = "seconds") -> None:
    """`accuracy_vs_flops` against measured seconds per problem (a MEASURED convention of
    pipeline.analysis.views): one block per dataset x device, titled '<dataset>, seconds on
    <device>', with that device's front (`pareto`, `held_out` rows of the convention and
    device). Headline points without measured seconds, or whose seconds come from several
    devices, are left out (they are in no seconds front; summary.md counts them)."""
    cost = dict(COST_CONVENTIONS)[convention]
    pts = _headline(points).filter(pl.col(cost).is_not_null() & pl.col("device").is_not_null()
                                   & ~pl.col("device").str.starts_with(MIXED))
    if pts.is_empty():
        return _empty(out, "no measured seconds: every point's outputs were written unmeasured, or measured "
                           "on several devices (see accuracy_vs_flops.seconds and .device)")
    block = pl.format("{}, seconds on {}", pl.col("dataset"), pl.col("device"))

    def by_device(df: pl.DataFrame | None) -> pl.DataFrame | None:
        if df is None:
            return None
        return df.filter((pl.col("convention") == convention) & pl.col("device").is_not_null()).with_columns(
            dataset=block)

    accuracy_vs_flops(pts.sort("dataset", "device", maintain_order=True).with_columns(dataset=block),
                      by_device(front), by_device(held_out), out, convention=convention)


def accuracy_vs_n(points: pl.DataFrame, out: str | Path) -> None:
    """Accuracy against n (samples per problem, or a search's budget), per dataset one panel
    per strategy family, 95% bands."""
    # the adaptive policies' n is a budget's grid index, not a number of samples
    pts = _headline(points).filter(pl.col("family") != ADAPTIVE_FAMILY)
    if pts.is_empty():
        return _empty(out, "no replay results")
    plt = _plt()
    datasets = pts["dataset"].unique(maintain_order=True).to_list()
    families = _families(pts)
    styles = _styles(pts)
    models = pts["model"].n_unique()
    fig, axes = plt.subplots(len(datasets), len(families), figsize=(4.6 * len(families), 4.0 * len(datasets)),
                             squeeze=False)
    for row, dataset in zip(axes, datasets):
        sub = pts.filter(pl.col("dataset") == dataset)
        xlim = (sub["n"].min() / 1.3, sub["n"].max() * 1.3)  # the same n axis in every panel
        ylim = _ylim([(sub["accuracy"] - Z95 * sub["accuracy_se"]).to_numpy(),
                      (sub["accuracy"] + Z95 * sub["accuracy_se"]).to_numpy()])
        for ax, family in zip(row, families):
            if not _has(ax, sub, family):
                continue
            for key, g in _lines(sub.filter(pl.col("family") == family)):
                _draw(ax, g["n"], g["accuracy"], g["accuracy_se"],
                      _short_label(*key, models=models) + (" (oracle)" if key[2] in ORACLE_STRATEGIES else ""),
                      styles[key])
            ax.set_xscale("log", base=2)
            ax.set_xlim(*xlim)
            ax.set_xlabel("n (samples per problem, or search budget)", fontsize=8)
            ax.set_ylabel("accuracy", fontsize=8)
            ax.set_ylim(*ylim)
            ax.tick_params(labelsize=8)
            ax.grid(True, which="both", alpha=0.25)
            ax.set_title(f"{dataset}: {family}", fontsize=10)
            ax.legend(fontsize=7, loc="best", frameon=True, framealpha=0.85)
    _save(fig, out)


def compute_optimal_size(optimal: pl.DataFrame, models: pl.DataFrame, out: str | Path, *,
                         convention: str = "paper", fits: dict[str, SizeFit | None] | None = None
                         ) -> dict[str, tuple[float, float] | None]:
    """The compute-optimal model size (params of the `compute_optimal` view's best model)
    against the budget, log-log, a panel per dataset, with the fitted line (and, given
    `fits` from pipeline.analysis.stats.bootstrap_size_fit, its bootstrap 95% band and intervals)
    and the paper's. Returns the fit (a, b) per dataset (None where fewer than two sizes
    win)."""
    plt = _plt()
    opt = optimal.filter(pl.col("convention") == convention)
    datasets = opt["dataset"].unique(maintain_order=True).to_list()
    sizes = sorted(set(models["params_total"].to_list()))
    if not datasets:
        _empty(out, "no compute-optimal points")
        return {}
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.5), squeeze=False)
    result: dict[str, tuple[float, float] | None] = {}
    for ax, dataset in zip(axes[0], datasets):
        d = opt.filter(pl.col("dataset") == dataset)
        for i, (model, g) in enumerate(d.group_by("model", maintain_order=True)):
            ax.scatter(g["budget"], g["params_total"], label=f"optimal: {model[0]}", zorder=3,
                       marker=_MARKERS[i % len(_MARKERS)], s=28)
        fit = result[dataset] = fit_loglog(d["params_total"].to_numpy(), d["budget"].to_numpy())
        n_grid = np.logspace(math.log10(min(sizes)) - 0.3, math.log10(max(sizes)) + 0.3, 50)
        boot = (fits or {}).get(dataset)
        if fit is not None:
            a, b = fit
            label = f"fit: log10 C = {a:.2f} log10 N {b:+.2f}"
            if boot is not None and boot.draws.shape[0] and not math.isnan(boot.slope_low):
                label += (f"\n  slope 95% [{boot.slope_low:.2f}, {boot.slope_high:.2f}], "
                          f"intercept [{boot.intercept_low:.2f}, {boot.intercept_high:.2f}]"
                          f"\n  (bootstrap over problems, {boot.fitted}/{boot.resamples} resamples fit)")
                lines = boot.draws[:, :1] * np.log10(n_grid)[None, :] + boot.draws[:, 1:]
                lo, hi = np.percentile(lines, [2.5, 97.5], axis=0)
                ax.fill_betweenx(n_grid, 10**lo, 10**hi, color="C3", alpha=0.15, linewidth=0,
                                 label="fit: bootstrap 95% band")
            ax.plot(10 ** (a * np.log10(n_grid) + b), n_grid, color="C3", label=label)
        else:
            ax.text(0.02, 0.95, "one model size is optimal at every budget: no fit",
                    transform=ax.transAxes, fontsize=8, va="top")
        a, b = PAPER_FIT
        ax.plot(10 ** (a * np.log10(n_grid) + b), n_grid, color="gray", linestyle="--",
                label=f"paper: log10 C = {a} log10 N + {b}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        lo_b, hi_b = d["budget"].min(), d["budget"].max()
        ax.set_xlim(lo_b / 3, hi_b * 3)
        ax.set_ylim(min(sizes) / 2, max(sizes) * 2)
        for s in sizes:
            ax.axhline(s, color="gray", linewidth=0.5, alpha=0.5)
        ax.set_xlabel(f"FLOPs budget per problem C ({convention} convention)")
        ax.set_ylabel("compute-optimal model size N (parameters)")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"{dataset}: compute-optimal model size")
        ax.legend(fontsize=7)
    _save(fig, out)
    return result


ADAPTIVE_STYLES = {  # line of the adaptive figure: label, colour, line style, marker
    "fixed": ("best fixed point", "#1f77b4", "-", "o"),
    "mix": ("fixed mixture (two points split at random)", "#2ca02c", ":", "."),
    "predicted": ("adaptive (predicted difficulty)", "#d62728", "-", "s"),
    "oracle": ("adaptive (oracle difficulty from the answers: a reference)", "#7f7f7f", "--", "^"),
}


def adaptive(table: pl.DataFrame, out: str | Path) -> None:
    """The `adaptive` table (pipeline.analysis.allocation): held-out accuracy (95% bands) against
    the budget (mean FLOPs per problem, the constraint the choices meet on the training
    folds) of the adaptive policy, the best fixed point, the fixed mixture and the
    oracle-difficulty policy, so that vertical gaps are the table's paired comparisons. A
    row of panels per dataset x model, a column per convention."""
    if table.is_empty():
        return _empty(out, "no difficulty-adaptive allocation (analysis.adaptive.enabled is false, "
                           "or no sampled cache had enough problems for two folds)")
    plt = _plt()
    import matplotlib.ticker

    keys = table.select("dataset", "model").unique(maintain_order=True).rows()
    order = [name for name, _ in COST_CONVENTIONS]
    convs = sorted(table["convention"].unique().to_list(), key=lambda c: (order.index(c) if c in order else len(order), c))
    fig, axes = plt.subplots(len(keys), len(convs), figsize=(5.4 * len(convs), 3.8 * len(keys) + 0.5),
                             squeeze=False)
    for r, (dataset, model) in enumerate(keys):
        for c, conv in enumerate(convs):
            ax = axes[r, c]
            g = table.filter((pl.col("dataset") == dataset) & (pl.col("model") == model)
                             & (pl.col("convention") == conv))
            fixed = g.unique("budget", keep="first", maintain_order=True).sort("budget")  # source-free
            lines = {"fixed": (fixed["budget"], fixed["fixed_accuracy"], fixed["fixed_accuracy_se"]),
                     "mix": (fixed["budget"], fixed["mix_accuracy"], fixed["mix_accuracy_se"])}
            for source in ("predicted", "oracle"):
                s = g.filter(pl.col("source") == source).sort("budget")
                lines[source] = (s["budget"], s["accuracy"], s["accuracy_se"])
            for key, (x, y, e) in lines.items():
                if len(x) == 0:
                    continue
                label, colour, ls, marker = ADAPTIVE_STYLES[key]
                x, y, e = (np.asarray(v, dtype=float) for v in (x, y, e))
                ax.plot(x, y, ls, color=colour, marker=marker, markersize=3.5, linewidth=1.4, label=label)
                if key != "mix":  # a line between two bands; its own band would hide them
                    lo, hi = _interval(y, e)
                    ax.fill_between(x, lo, hi, color=colour, alpha=0.12, linewidth=0)
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel(f"budget: mean FLOPs per problem ({conv} convention)", fontsize=8)
            ax.set_ylabel("held-out accuracy (95% band)", fontsize=8)
            ax.tick_params(labelsize=8)
            ax.set_title(f"{dataset} / {model}: difficulty-adaptive, {conv} FLOPs", fontsize=9)
            ax.grid(True, which="both", alpha=0.25)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.45 / (3.8 * len(keys) + 0.5), 1, 1))
    io._atomic(Path(out), lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight"))
    plt.close(fig)
