"""Paper-style figures, drawn from the DuckDB views (pipeline.aggregate).

    accuracy_vs_flops       per dataset: accuracy and error rate against FLOPs per problem
                            (log x), one line per model x strategy (x PRM x step
                            aggregation), the Pareto front over all of them marked
    accuracy_vs_n           per dataset: accuracy against n (samples, or the search
                            budget; log2 x), one line per model x strategy
    compute_optimal_size    per dataset: the compute-optimal model size against the budget
                            (log-log) with a fitted line log10 C = a log10 N + b, beside
                            the paper's log10 C = 1.19 log10 N + 2.03 (Wu et al., Pythia
                            on GSM8K); only meaningful with two or more model sizes

Lines are found in the data, never listed here: a new strategy (tree search, say) is a
new line. Every function takes polars frames, writes one PNG atomically (Agg backend)
and returns nothing.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl

from pipeline import io

LINE_KEYS = ["model", "prm", "strategy", "aggregation"]
PAPER_FIT = (1.19, 2.03)  # log10 C = 1.19 log10 N + 2.03 (Wu et al., Section 4)
_LINESTYLES = ["-", "--", ":", "-."]
_MARKERS = ["o", "s", "^", "D", "v", "P"]


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


def _styles(curve: pl.DataFrame) -> dict[tuple, dict]:
    """One colour per (prm, strategy, aggregation), one line style and marker per model:
    the same strategy has the same colour for every model, as in the paper's figures."""
    import matplotlib

    models = curve["model"].unique(maintain_order=True).to_list()
    kinds = curve.select("prm", "strategy", "aggregation").unique(maintain_order=True).rows()
    cmap = matplotlib.colormaps["tab20" if len(kinds) > 10 else "tab10"]
    colour = {k: cmap(i % cmap.N) for i, k in enumerate(kinds)}
    out = {}
    for model, prm, strategy, agg in curve.select(LINE_KEYS).unique(maintain_order=True).rows():
        i = models.index(model)
        style = {"color": colour[(prm, strategy, agg)], "linestyle": _LINESTYLES[i % len(_LINESTYLES)],
                 "marker": _MARKERS[i % len(_MARKERS)]}
        if strategy.startswith("coverage"):
            style["alpha"] = 0.5  # an oracle bound, not a strategy
        out[(model, prm, strategy, agg)] = style
    return out


def _lines(curve: pl.DataFrame):
    for key, g in curve.group_by(LINE_KEYS, maintain_order=True):
        yield tuple(key), g.sort("n")


MAX_BANDS = 8  # more lines than this in a panel: no error bands (they would hide the lines)


def _draw(ax, x, y, yerr, label, style, *, band: bool = True):
    """A line with markers and a +-1 standard error band (a big marker with an error bar
    for a single point, e.g. greedy decoding)."""
    x, y, yerr = (np.asarray(v, dtype=float) for v in (x, y, yerr))
    if len(x) == 1:
        ax.errorbar(x, y, yerr=yerr if band else None, capsize=3, label=label,
                    **{**style, "markersize": 10, "markeredgecolor": "black",
                       "markeredgewidth": 0.8, "linestyle": "none", "zorder": 6})
        return
    ax.plot(x, y, label=label, **{"markersize": 3.5, "linewidth": 1.3, **style})
    if band:
        ax.fill_between(x, y - yerr, y + yerr, color=style["color"], alpha=0.1, linewidth=0)


def _finish(fig, axes, out: str | Path) -> None:
    handles, labels = {}, {}
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    labels = list(handles)
    fig.legend([handles[lab] for lab in labels], labels, loc="center left",
               bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False, ncol=1 + (len(labels) - 1) // 28)
    fig.tight_layout()
    io._atomic(Path(out), lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    _plt().close(fig)


def _empty(out: str | Path, message: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    io._atomic(Path(out), lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def accuracy_vs_flops(curve: pl.DataFrame, front: pl.DataFrame, out: str | Path, *,
                      convention: str = "paper") -> None:
    """Accuracy (left) and error rate (right) against FLOPs per problem, a row per
    dataset; the Pareto front (the `pareto` view's rows of this convention) as a black
    staircase with open circles."""
    if curve.is_empty():
        return _empty(out, "no replay results")
    flops = f"flops_{convention}"
    plt = _plt()
    datasets = curve["dataset"].unique(maintain_order=True).to_list()
    styles = _styles(curve)
    fig, axes = plt.subplots(len(datasets), 2, figsize=(12, 4.2 * len(datasets)), squeeze=False)
    for row, dataset in zip(axes, datasets):
        sub = curve.filter(pl.col("dataset") == dataset)
        band = sub.select(LINE_KEYS).n_unique() <= MAX_BANDS
        for key, g in _lines(sub):
            label = line_label(*key)
            _draw(row[0], g[flops], g["accuracy"], g["accuracy_se"], label, styles[key], band=band)
            _draw(row[1], g[flops], 1 - g["accuracy"], g["accuracy_se"], label, styles[key], band=band)
        f = front.filter((pl.col("dataset") == dataset) & (pl.col("convention") == convention)).sort("flops")
        if f.height:
            # a staircase: the best accuracy within each budget, held up to the costliest point
            x = np.append(f["flops"].to_numpy(), max(sub[flops].max(), f["flops"].max()))
            acc = np.append(f["accuracy"].to_numpy(), f["accuracy"][-1])
            for ax, y in ((row[0], acc), (row[1], 1 - acc)):
                ax.step(x, y, where="post", color="black", linewidth=1.6, linestyle="--",
                        alpha=0.8, label="Pareto front", zorder=4)
                ax.scatter(x[:-1], y[:-1], s=80, facecolors="none", edgecolors="black",
                           linewidths=1.4, zorder=5)
        for ax, what in ((row[0], "accuracy"), (row[1], "error rate")):
            ax.set_xscale("log")
            ax.set_xlabel(f"inference FLOPs per problem ({convention} convention)")
            ax.set_ylabel(what)
            ax.set_ylim(0, 1)
            ax.grid(True, which="both", alpha=0.3)
            ax.set_title(f"{dataset}: {what} vs compute")
    _finish(fig, axes, out)


def accuracy_vs_n(curve: pl.DataFrame, out: str | Path) -> None:
    """Accuracy against n (samples per problem, or a search's budget), a panel per dataset."""
    if curve.is_empty():
        return _empty(out, "no replay results")
    plt = _plt()
    datasets = curve["dataset"].unique(maintain_order=True).to_list()
    styles = _styles(curve)
    fig, axes = plt.subplots(1, len(datasets), figsize=(7 * len(datasets), 4.5), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        sub = curve.filter(pl.col("dataset") == dataset)
        band = sub.select(LINE_KEYS).n_unique() <= MAX_BANDS
        for key, g in _lines(sub):
            _draw(ax, g["n"], g["accuracy"], g["accuracy_se"], line_label(*key), styles[key], band=band)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("n (samples per problem, or search budget)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"{dataset}: accuracy vs n")
    _finish(fig, axes, out)


def fit_loglog(params: np.ndarray, budgets: np.ndarray) -> tuple[float, float] | None:
    """Least-squares (a, b) of log10 C = a log10 N + b over (optimal size N, budget C)
    pairs; None unless at least two distinct sizes are optimal somewhere."""
    params, budgets = np.asarray(params, float), np.asarray(budgets, float)
    keep = (params > 0) & (budgets > 0)
    x, y = np.log10(params[keep]), np.log10(budgets[keep])
    if len(np.unique(x)) < 2:
        return None
    a, b = np.polyfit(x, y, 1)
    return float(a), float(b)


def compute_optimal_size(optimal: pl.DataFrame, models: pl.DataFrame, out: str | Path, *,
                         convention: str = "paper") -> dict[str, tuple[float, float] | None]:
    """The compute-optimal model size (params of the `compute_optimal` view's best model)
    against the budget, log-log, a panel per dataset, with the fitted line and the
    paper's. Returns the fit (a, b) per dataset (None where fewer than two sizes win)."""
    plt = _plt()
    opt = optimal.filter(pl.col("convention") == convention)
    datasets = opt["dataset"].unique(maintain_order=True).to_list()
    sizes = sorted(set(models["params_total"].to_list()))
    if not datasets:
        _empty(out, "no compute-optimal points")
        return {}
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.5), squeeze=False)
    fits: dict[str, tuple[float, float] | None] = {}
    for ax, dataset in zip(axes[0], datasets):
        d = opt.filter(pl.col("dataset") == dataset)
        for model, g in d.group_by("model", maintain_order=True):
            ax.scatter(g["budget"], g["params_total"], label=f"optimal: {model[0]}", zorder=3)
        fit = fits[dataset] = fit_loglog(d["params_total"].to_numpy(), d["budget"].to_numpy())
        n_grid = np.logspace(math.log10(min(sizes)) - 0.3, math.log10(max(sizes)) + 0.3, 50)
        if fit is not None:
            a, b = fit
            ax.plot(10 ** (a * np.log10(n_grid) + b), n_grid, color="C3",
                    label=f"fit: log10 C = {a:.2f} log10 N {b:+.2f}")
        else:
            ax.text(0.02, 0.95, "one model size is optimal at every budget: no fit",
                    transform=ax.transAxes, fontsize=8, va="top")
        a, b = PAPER_FIT
        ax.plot(10 ** (a * np.log10(n_grid) + b), n_grid, color="gray", linestyle="--",
                label=f"paper: log10 C = {a} log10 N + {b}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        lo, hi = d["budget"].min(), d["budget"].max()
        ax.set_xlim(lo / 3, hi * 3)
        ax.set_ylim(min(sizes) / 2, max(sizes) * 2)
        for s in sizes:
            ax.axhline(s, color="gray", linewidth=0.5, alpha=0.5)
        ax.set_xlabel(f"FLOPs budget per problem C ({convention} convention)")
        ax.set_ylabel("compute-optimal model size N (parameters)")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"{dataset}: compute-optimal model size")
        ax.legend(fontsize=7)
    fig.tight_layout()
    io._atomic(Path(out), lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return fits
