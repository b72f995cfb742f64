"""Difficulty-adaptive compute-optimal allocation, replayed from the caches.

A fixed strategy spends one point (strategy, prm, aggregation, n) on every problem. The
adaptive policy first draws a probe of k samples per problem, predicts the problem's
difficulty from it without the reference answer (pipeline.difficulty), puts the problem
into a difficulty bin and spends that bin's point. For a mean-cost budget per problem the
bins' points are chosen to maximise expected accuracy (Snell et al., arXiv 2408.03314),
by an exact multiple-choice knapsack (pipeline.knapsack). All of it replays what the
workflow cached: grades, PRM step scores and the per-problem `replay` rows (tree search
included); no model runs, CPU only.

Points (`point_grid`): every non-oracle (strategy, prm, aggregation, n) of the `replay`
table that has one row for every graded problem, with the step aggregations limited to
`aggregations` (default ["last"], the paper's headline; None: all). Tie-break order:
prm (none first), strategy, aggregation (none first), n.

Cost (`cost_matrix`), in a convention's replay column ("paper" = flops_paper, "full" =
flops_full; a new convention is a new entry of `conventions`). A *sampling* point
(majority, best_of_n, weighted_majority at n) reuses the k probe samples: it costs
max(n, k) samples' worth of the policy (per-sample cost = the problem's majority cost at
n, divided by n: replay costs are linear in n) plus its PRM scoring; the probe's PRM
scores are charged once (nothing in the paper convention) and a point using the probe's
PRM does not pay for them again. Any other point (greedy decoding; tree search,
"<search>_<rule>" with n = its budget) is a run of its own: probe + its replay cost. The
fixed policy pays no probe.

Accuracy: the fixed policy uses replay's accuracies. The adaptive policy scores sampling
points *given the probe* (pipeline.difficulty.conditional_accuracy: the probe plus random
fresh samples from the rest of the cache), since its bins are functions of the probe;
greedy and tree-search runs are independent of the probe given the problem, so their
replay accuracy stands. (`conditional=False` uses replay's unconditional accuracies
instead: the naive replay, to measure the selection effect.)

Difficulty sources: "predicted" bins by the probe's predicted difficulty; "oracle" bins
by 1 - pass@1 over all N samples, which needs the reference answers, with the same
points, costs and accuracies, so the two differ only in what the bins know. The oracle
is a reference, not a guaranteed upper bound: it knows the problem's difficulty exactly
but not how this probe's own samples came out, which the predicted bins see (and which
decides what reusing them is worth).

Choosing and scoring (pipeline.policies): per budget the bins' points are fitted on
the training folds and scored on the held-out fold; the comparisons are the best fixed
point and the best fixed mixture within the same budget, chosen the same way, as paired
differences over the same problems; and the FLOPs the adaptive policy saves at the best
fixed point's held-out accuracy, with a bootstrap interval. Folds: a frame (dataset,
problem_id, fold), the seam for pipeline.stats' seeded folds; `default_folds` until
then, and a `folds` table in the database is used when present.

Outputs of `allocate` (polars frames; the module writes nothing but the figure):
    summary    one row per dataset x model x source ("predicted" | "oracle") x convention
               x budget: budget, log10_budget, oracle, k, num_bins (in-sample), folds,
               num_problems, accuracy, accuracy_se, cost (held-out mean, in the
               convention's unit), in_sample_accuracy, in_sample_cost, choices (in-sample,
               "bin1: ...; bin2: ...", bin1 the easiest), fixed_choice (in-sample),
               fixed_accuracy, fixed_accuracy_se, fixed_cost, fixed_in_sample_accuracy,
               diff, diff_se, diff_lo, diff_hi, diff_p (held-out adaptive - fixed),
               mix_accuracy, mix_accuracy_se, mix_cost, diff_mix, diff_mix_se,
               diff_mix_lo, diff_mix_hi, diff_mix_p (the same against the fixed mixture),
               target_accuracy, target_cost, saving, saving_lo, saving_hi (see
               pipeline.policies). A budget has a row when both policies can meet it in
               every fold; budgets form a log grid, `per_decade` per decade
               (budget = 10^(j / per_decade)) from the cheapest fixed point to the
               costliest adaptive one.
    problems   per held-out problem: dataset, model, source (null for fixed), policy
               ("adaptive" | "fixed"), convention, budget, problem_id, fold, bin (1-based;
               null for fixed), choice (point label), accuracy, cost, and the chosen
               point's cost in every convention's column (flops_paper, flops_full: for a
               row of convention c, cost = its column of c), so that the rows can enter
               the replay table's shape (as a strategy of their own, per convention).
    difficulty per problem: dataset, model, problem_id, fold, agreement, prm_mean, pass1,
               predicted (fitted on all problems), oracle (1 - pass1).

Run: `python -m pipeline.allocation --db results/inference.duckdb [--plot out.png]`.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from pipeline import io
from pipeline.difficulty import (
    conditional_accuracy,
    fit_difficulty,
    probe_features,
    sample_arrays,
)
from pipeline.policies import (
    CrossFit,
    Difficulty,
    cross_fit,
    cross_fit_mixture,
    fixed_targets,
    paired_difference,
    savings,
)

# Strategies that vote over the sampled cache, so can reuse the probe's samples; every
# other non-oracle strategy (greedy, tree search) is a run of its own.
SAMPLING_STRATEGIES = ("majority", "best_of_n", "weighted_majority")
ORACLE_STRATEGIES = ("coverage",)  # as pipeline.aggregate.ORACLE_STRATEGIES
CONVENTIONS = {"paper": "flops_paper", "full": "flops_full"}
SOURCES = ("predicted", "oracle")
_TOL = 1e-12  # accuracy differences below this are ties


# --------------------------------------------------------------------------- points


def point_label(strategy: str, prm: str | None, aggregation: str | None, n: int) -> str:
    """'majority@4', 'best_of_n@8 [value-head, last]', 'rebase_majority@4 [value-head]'."""
    if strategy == "greedy":
        return "greedy"
    label = f"{strategy}@{n}"
    if prm is not None:
        label += f" [{prm}" + (f", {aggregation}]" if aggregation is not None else "]")
    return label


@dataclass(frozen=True)
class Grid:
    """The replay rows of one dataset x model as matrices, problems x points.

    points: j, strategy, prm, aggregation, n, sampling (bool), label, in the tie-break
    order; accuracy: replay's (unconditional) accuracy; accuracy_se: its Monte Carlo SE;
    cost: convention name -> the replay cost."""

    problems: list[str]
    points: pl.DataFrame
    accuracy: np.ndarray
    accuracy_se: np.ndarray
    cost: dict[str, np.ndarray]


def point_grid(replay: pl.DataFrame, problems: Sequence[str], *,
               aggregations: Sequence[str] | None = ("last",),
               conventions: Mapping[str, str] = CONVENTIONS) -> Grid:
    """Candidate points of one dataset x model: every non-oracle (strategy, prm,
    aggregation, n) of `replay` whose aggregation is in `aggregations` (None: all; no
    aggregation always passes) and that has exactly one row for each of `problems`.
    Points covering other problems are left out with a note on stderr."""
    keys = ["prm", "strategy", "aggregation", "n"]
    df = replay.filter(~pl.col("strategy").is_in(list(ORACLE_STRATEGIES)))
    if aggregations is not None:
        df = df.filter(pl.col("aggregation").is_null() | pl.col("aggregation").is_in(list(aggregations)))
    dup = df.filter(pl.struct(["problem_id", *keys]).is_duplicated())
    if dup.height:
        raise ValueError(f"allocation: duplicate replay row {dup.select('problem_id', *keys).row(0, named=True)}")
    wanted = set(problems)
    cover = df.group_by(keys).agg(pl.col("problem_id").alias("_pids"))
    complete = [r for r in cover.iter_rows(named=True) if set(r["_pids"]) == wanted]
    left_out = cover.height - len(complete)
    if left_out:
        print(f"allocation: {left_out} point(s) left out: their replay rows cover other problems "
              f"than the {len(wanted)} graded ones", file=sys.stderr)
    if not complete:
        raise ValueError("allocation: no replay point covers every graded problem")
    points = (
        pl.DataFrame([{k: r[k] for k in keys} for r in complete],
                     schema={"prm": pl.String, "strategy": pl.String, "aggregation": pl.String, "n": pl.Int32})
        .sort(["prm", "strategy", "aggregation", "n"], nulls_last=False)
        .with_row_index("j")
        .with_columns(sampling=pl.col("strategy").is_in(list(SAMPLING_STRATEGIES)))
    )
    points = points.with_columns(label=pl.Series([point_label(s, p, a, n) for p, s, a, n in
                                                  points.select(keys).rows()], dtype=pl.String))
    rank = pl.DataFrame({"problem_id": list(problems), "_i": np.arange(len(problems))})
    def filled(frame: pl.DataFrame) -> pl.DataFrame:  # null keys match each other (any polars)
        return frame.with_columns(pl.col("prm", "aggregation").fill_null("\0"))

    rows = filled(df).join(filled(points.select(*keys, "j")), on=keys, how="inner").join(rank, on="problem_id")
    m, J = len(problems), points.height
    i, j = rows["_i"].to_numpy(), rows["j"].to_numpy()

    def matrix(col: str) -> np.ndarray:
        out = np.full((m, J), np.nan)
        out[i, j] = rows[col].cast(pl.Float64).to_numpy()
        return out

    return Grid(list(problems), points, matrix("accuracy"), matrix("accuracy_se"),
                {name: matrix(col) for name, col in conventions.items()})


def cost_matrix(grid: Grid, convention: str, *, k: int, probe_prm: str | None) -> np.ndarray:
    """Per problem x point: the adaptive policy's cost (see the module docstring).

    probe_prm: the PRM whose scores the probe reads (None: the probe reads none)."""
    pts = grid.points
    cost = grid.cost[convention]
    n = pts["n"].to_numpy().astype(float)
    sampling = pts["sampling"].to_numpy()
    majority = (pts["strategy"] == "majority").to_numpy()
    if not majority.any():
        raise ValueError("allocation: no majority rows in replay, so no per-sample cost of the sampled cache")
    per_sample = np.nanmean(cost[:, majority] / n[majority], axis=1)  # (m,)
    # a PRM's per-sample cost: what a sampling point with that PRM pays beyond the policy
    prm_names = pts["prm"].to_list()
    prm_cost = np.where(sampling & pl.Series(prm_names).is_not_null().to_numpy(),
                        cost / n - per_sample[:, None], 0.0)
    probe_prm_cost = np.zeros(len(grid.problems))
    if probe_prm is not None:
        own = sampling & np.array([p == probe_prm for p in prm_names])
        if not own.any():
            raise ValueError(f"allocation: no sampling point with the probe's PRM {probe_prm!r}")
        probe_prm_cost = np.nanmean(prm_cost[:, own], axis=1)
    probe = k * (per_sample + probe_prm_cost)
    extra = np.maximum(n - k, 0.0)
    reuse = np.array([p is not None and p == probe_prm for p in prm_names])
    sampled = (probe[:, None] + extra * per_sample[:, None]
               + np.where(reuse, extra, n) * prm_cost)
    return np.where(sampling, sampled, probe[:, None] + cost)


def default_folds(problems: pl.DataFrame, *, k: int = 4, seed: int = 0) -> pl.DataFrame:
    """Seeded K-fold split per dataset (stand-in for pipeline.stats' folds): the problem
    ids of a dataset, sorted, get folds 0..K-1 in turn along a seeded permutation."""
    out = []
    for (dataset,), g in problems.select("dataset", "problem_id").unique().group_by(["dataset"]):
        ids = sorted(g["problem_id"].to_list())
        perm = np.random.default_rng(seed).permutation(len(ids))
        fold = np.empty(len(ids), dtype=np.int64)
        fold[perm] = np.arange(len(ids)) % k
        out.append(pl.DataFrame({"dataset": dataset, "problem_id": ids, "fold": fold}))
    return pl.concat(out).sort("dataset", "problem_id")


def budget_grid(lo: float, hi: float, per_decade: int) -> np.ndarray:
    """10^(j / per_decade) from the grid value at or below lo to the one at or above hi."""
    a = math.floor(per_decade * math.log10(lo) + 1e-9)
    b = math.ceil(per_decade * math.log10(hi) - 1e-9)
    return 10.0 ** (np.arange(a, b + 1) / per_decade)


# --------------------------------------------------------------------------- the whole replay


@dataclass(frozen=True)
class Allocation:
    summary: pl.DataFrame
    problems: pl.DataFrame
    difficulty: pl.DataFrame


def _sampled_cache(grades: pl.DataFrame, dataset: str, model: str) -> pl.DataFrame:
    g = grades.filter((pl.col("dataset") == dataset) & (pl.col("model") == model))
    if "kind" in g.columns:
        g = g.filter(pl.col("kind") == "sampled")
    if "key" in g.columns and g["key"].n_unique() > 1:
        raise ValueError(f"allocation: {dataset}/{model} has {g['key'].n_unique()} sampled caches "
                         f"(keys {sorted(g['key'].unique().to_list())}); replay holds one per model")
    return g


def _fold_array(folds: pl.DataFrame, dataset: str, problems: Sequence[str]) -> np.ndarray:
    f = dict(folds.filter(pl.col("dataset") == dataset).select("problem_id", "fold").iter_rows())
    missing = [p for p in problems if p not in f]
    if missing:
        raise ValueError(f"allocation: no fold for problem {missing[0]!r} of dataset {dataset!r} "
                         f"({len(missing)} missing)")
    arr = np.array([f[p] for p in problems], dtype=np.int64)
    if np.unique(arr).size < 2:
        raise ValueError(f"allocation: dataset {dataset!r} needs at least 2 folds to hold problems out")
    return arr


def _se(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan


def _choices_text(choices: np.ndarray, labels: Sequence[str]) -> str:
    return "; ".join(f"bin{i + 1}: {labels[j]}" for i, j in enumerate(choices))


def allocate(tables: Mapping[str, pl.DataFrame], *, folds: pl.DataFrame | None = None, k: int = 4,
             bins: int = 5, aggregations: Sequence[str] | None = ("last",), prm: str | None = None,
             probe_aggregation: str = "last", conventions: Mapping[str, str] = CONVENTIONS,
             per_decade: int = 8, num_folds: int = 4, seed: int = 0, num_draws: int = 1000,
             exact_limit: int = 2000, bootstrap: int = 2000, conditional: bool = True,
             shrink: float = 1.0) -> Allocation:
    """The adaptive policies of every dataset x model in `tables` (frames as in the
    database: replay, grades, and scores when there is a PRM).

    folds: (dataset, problem_id, fold); None: `default_folds` with `num_folds`, `seed`.
    prm: the PRM the probe reads (None: the first by name that scored this model's
    samples; none at all: the probe uses answer agreement alone). aggregations: the
    points' step aggregations (None: all). conditional: score sampling points given the
    probe (see the module docstring); False reproduces the naive replay. shrink: see
    `fit_policy`. num_draws, exact_limit: see pipeline.difficulty.conditional_accuracy."""
    replay, grades = tables["replay"], tables["grades"]
    scores = tables.get("scores")
    if folds is None:
        folds = default_folds(grades.select("dataset", "problem_id"), k=num_folds, seed=seed)
    summary, per_problem, difficulty = [], [], []
    pairs_models = (grades.filter(pl.col("kind") == "sampled") if "kind" in grades.columns else grades) \
        .select("dataset", "model").unique().sort("dataset", "model").rows()
    for dataset, model in pairs_models:
        g = _sampled_cache(grades, dataset, model)
        r = replay.filter((pl.col("dataset") == dataset) & (pl.col("model") == model))
        if r.is_empty():
            continue
        s = None if scores is None else scores.filter((pl.col("dataset") == dataset) & (pl.col("model") == model))
        probe_prm = prm
        if probe_prm is None and s is not None and s.height:
            probe_prm = sorted(s["prm"].unique().to_list())[0]
        problems = g["problem_id"].unique(maintain_order=True).to_list()
        grid = point_grid(r, problems, aggregations=aggregations, conventions=conventions)
        needed = {(p, a) for p, a, smp in grid.points.select("prm", "aggregation", "sampling").rows()
                  if smp and p is not None}
        if probe_prm is not None:
            needed.add((probe_prm, probe_aggregation))
        samples = sample_arrays(g, s, sorted(needed))
        feats = probe_features(samples, k=k, prm=probe_prm, aggregation=probe_aggregation)
        fold = _fold_array(folds, dataset, problems)
        acc_adapt = grid.accuracy
        if conditional:
            cond, _ = conditional_accuracy(samples, grid.points, k=k, num_draws=num_draws,
                                           exact_limit=exact_limit, seed=seed)
            acc_adapt = np.where(np.isnan(cond), grid.accuracy, cond)
        X = feats.select("agreement", *(["prm_mean"] if probe_prm is not None else [])).to_numpy()
        pass1 = feats["pass1"].to_numpy()
        predict: Difficulty = lambda train: fit_difficulty(X, pass1, train)  # noqa: E731
        oracle: Difficulty = lambda train: 1.0 - pass1  # noqa: E731
        everyone = np.ones(len(problems), dtype=bool)
        difficulty.append(feats.with_columns(
            pl.lit(dataset).alias("dataset"), pl.lit(model).alias("model"), pl.Series("fold", fold),
            pl.Series("predicted", predict(everyone)), pl.Series("oracle", oracle(everyone))))
        labels = grid.points["label"].to_list()
        adapt_costs = {c: cost_matrix(grid, c, k=k, probe_prm=probe_prm) for c in conventions}
        # per-problem rows carry the chosen point's cost in every convention's column
        columns = {
            "fixed": {col: grid.cost[c] for c, col in conventions.items()},
            "oracle": {col: adapt_costs[c] for c, col in conventions.items()},
            "predicted": {col: adapt_costs[c] for c, col in conventions.items()},
        }
        tags = {"dataset": dataset, "model": model}
        for conv in conventions:
            cost_fixed, cost_adapt = grid.cost[conv], adapt_costs[conv]
            lo = float(np.nanmin(cost_fixed.mean(axis=0)))
            hi = float(max(np.nanmax(cost_fixed.mean(axis=0)), np.nanmax(cost_adapt.mean(axis=0))))
            budgets = budget_grid(lo, hi, per_decade)
            fixed = cross_fit(grid.accuracy, cost_fixed, fold, budgets, difficulty=None)
            mix_acc, mix_cost, mix_ok = cross_fit_mixture(grid.accuracy, cost_fixed, fold, budgets)
            for t in np.flatnonzero(fixed.feasible):
                per_problem.append(_problem_rows(
                    {**tags, "source": None, "policy": "fixed", "convention": conv, "budget": budgets[t]},
                    problems, fold, None, fixed.choice[t], fixed.accuracy[t], fixed.cost[t],
                    columns["fixed"], labels))
            for source in SOURCES:
                diff = predict if source == "predicted" else oracle
                cf = cross_fit(acc_adapt, cost_adapt, fold, budgets, difficulty=diff, bins=bins, shrink=shrink)
                ok = np.flatnonzero(cf.feasible & fixed.feasible & mix_ok)
                if ok.size == 0:
                    continue
                sav = savings(cf.accuracy[ok], cf.cost[ok], fixed.accuracy[ok], fixed.cost[ok],
                              reps=bootstrap, seed=seed)
                target = fixed_targets(fixed.accuracy[ok].mean(axis=1), fixed.cost[ok].mean(axis=1))
                for i, t in enumerate(ok):
                    summary.append({
                        **tags, "source": source, "oracle": source == "oracle", "convention": conv,
                        "budget": float(budgets[t]), "log10_budget": float(np.log10(budgets[t])), "k": k,
                        "num_bins": int(cf.in_sample.edges.size + 1), "folds": int(np.unique(fold).size),
                        "num_problems": len(problems),
                        **_compare(cf, fixed, mix_acc, mix_cost, t, labels),
                        "target_accuracy": float(target[0][i]), "target_cost": float(target[1][i]),
                        "saving": float(sav[0][i]), "saving_lo": float(sav[1][i]), "saving_hi": float(sav[2][i]),
                    })
                    per_problem.append(_problem_rows(
                        {**tags, "source": source, "policy": "adaptive", "convention": conv, "budget": budgets[t]},
                        problems, fold, cf.bins[t] + 1, cf.choice[t], cf.accuracy[t], cf.cost[t],
                        columns[source], labels))
    return Allocation(
        pl.DataFrame(summary, infer_schema_length=None) if summary else pl.DataFrame(),
        pl.concat(per_problem) if per_problem else pl.DataFrame(),
        pl.concat(difficulty).select("dataset", "model", "problem_id", "fold", "agreement", "prm_mean",
                                     "pass1", "predicted", "oracle") if difficulty else pl.DataFrame(),
    )


def _compare(cf: CrossFit, fixed: CrossFit, mix_acc: np.ndarray, mix_cost: np.ndarray, t: int,
             labels: Sequence[str]) -> dict:
    """The summary columns of budget t: the adaptive policy, the fixed point and mixture."""
    d = paired_difference(cf.accuracy[t], fixed.accuracy[t])
    dm = paired_difference(cf.accuracy[t], mix_acc[t])
    return {
        "accuracy": float(cf.accuracy[t].mean()), "accuracy_se": _se(cf.accuracy[t]),
        "cost": float(cf.cost[t].mean()),
        "in_sample_accuracy": float(cf.in_sample_accuracy[t]), "in_sample_cost": float(cf.in_sample_cost[t]),
        "choices": _choices_text(cf.in_sample.choices[t], labels),
        "fixed_choice": labels[fixed.in_sample.choices[t, 0]],
        "fixed_accuracy": float(fixed.accuracy[t].mean()), "fixed_accuracy_se": _se(fixed.accuracy[t]),
        "fixed_cost": float(fixed.cost[t].mean()),
        "fixed_in_sample_accuracy": float(fixed.in_sample_accuracy[t]),
        "diff": d["mean"], "diff_se": d["se"], "diff_lo": d["lo"], "diff_hi": d["hi"], "diff_p": d["p"],
        "mix_accuracy": float(mix_acc[t].mean()), "mix_accuracy_se": _se(mix_acc[t]),
        "mix_cost": float(mix_cost[t].mean()),
        "diff_mix": dm["mean"], "diff_mix_se": dm["se"], "diff_mix_lo": dm["lo"], "diff_mix_hi": dm["hi"],
        "diff_mix_p": dm["p"],
    }


def _problem_rows(tags: dict, problems: Sequence[str], fold: np.ndarray, bins: np.ndarray | None,
                  choice: np.ndarray, acc: np.ndarray, cost: np.ndarray,
                  by_column: Mapping[str, np.ndarray], labels: Sequence[str]) -> pl.DataFrame:
    idx = np.arange(len(problems))
    return pl.DataFrame({
        **{k: [v] * len(problems) for k, v in tags.items()},
        "problem_id": list(problems), "fold": fold,
        "bin": None if bins is None else np.asarray(bins, dtype=np.int64),
        "choice": [labels[j] for j in choice], "accuracy": acc, "cost": cost,
        **{col: mat[idx, choice] for col, mat in by_column.items()},
    }, schema_overrides={"source": pl.String, "budget": pl.Float64, "fold": pl.Int64, "bin": pl.Int64})


# --------------------------------------------------------------------------- report and figure


def _x(v: float) -> str:
    return f"{v:.2f}×" if math.isfinite(v) else "–"


def summary_lines(summary: pl.DataFrame, *, convention: str = "paper") -> list[str]:
    """One Markdown line per dataset x model: the FLOPs the adaptive policy saves at the
    best fixed strategy's held-out accuracy (the target of the largest budget), with its
    bootstrap interval, the paired differences at equal budgets, and the oracle variant."""
    if summary.is_empty():
        return []
    lines = []
    rows = summary.filter(pl.col("convention") == convention)
    for (dataset, model), g in rows.group_by(["dataset", "model"], maintain_order=True):
        pred = g.filter(pl.col("source") == "predicted").sort("budget")
        orc = g.filter(pl.col("source") == "oracle").sort("budget")
        if pred.is_empty():
            continue
        top = pred.row(-1, named=True)
        # the fixed policy's row where its best held-out accuracy (the target) is reached
        tgt = pred.filter(pl.col("fixed_accuracy") >= top["target_accuracy"] - _TOL).row(0, named=True)
        head = (f"**{dataset} / {model}** ({convention} FLOPs; held out over {top['folds']} folds; probe "
                f"k = {top['k']}, {top['num_bins']} difficulty bins): the best fixed point "
                f"({tgt['fixed_choice']}, chosen for a budget of {tgt['budget']:.3g}) has held-out accuracy "
                f"{tgt['fixed_accuracy']:.3f} ± {tgt['fixed_accuracy_se']:.3f} at {tgt['fixed_cost']:.3g} "
                f"FLOPs per problem; ")
        if math.isfinite(top["saving"]):
            need = top["target_cost"] / top["saving"]
            more = f", i.e. {1 / top['saving']:.2f}× the FLOPs" if top["saving"] < 1 else ""
            head += (f"the adaptive policy reaches it with {need:.3g} FLOPs (saving {_x(top['saving'])}{more}; "
                     f"95% bootstrap interval {_x(top['saving_lo'])}–{_x(top['saving_hi'])}). ")
        else:
            best = pred.sort("accuracy").row(-1, named=True)
            head += (f"the adaptive policy does not reach it within the budgets (its best held-out "
                     f"accuracy {best['accuracy']:.3f} ± {best['accuracy_se']:.3f}"
                     + (f"; 95% bootstrap interval of the saving {_x(top['saving_lo'])}–{_x(top['saving_hi'])}"
                        if top["saving_hi"] > 0 else "") + "). ")
        for col, what in (("diff", "the best fixed point"), ("diff_mix", "the fixed mixture")):
            up = pred.filter(pl.col(f"{col}_lo") > 0).height
            down = pred.filter(pl.col(f"{col}_hi") < 0).height
            head += (f"At equal budgets, adaptive − {what}: {pred[col].min():+.3f} to {pred[col].max():+.3f} "
                     f"(95% interval above 0 at {up}, below 0 at {down} of {pred.height} budgets). ")
        head = head.rstrip()
        if not orc.is_empty():
            o = orc.row(-1, named=True)
            head += (f" With oracle difficulty bins (pass@1 from the reference answers): saving {_x(o['saving'])} "
                     f"({_x(o['saving_lo'])}–{_x(o['saving_hi'])}).")
        lines.append(head)
    return lines


def plot(summary: pl.DataFrame, out: str | Path) -> None:
    """Held-out accuracy (±1 SE bands) against the budget (mean FLOPs per problem, the
    constraint the choices meet on the training folds): the adaptive policy, the best
    fixed point, the fixed mixture and the oracle-difficulty policy, so that vertical
    gaps are the paired comparisons of the summary table. A row of panels per dataset x
    model, a column per convention. Writes one PNG atomically."""
    from pipeline.figures import _plt

    plt = _plt()  # selects the Agg backend first
    import matplotlib.ticker

    if summary.is_empty():
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no adaptive allocation (no sampled cache with replay rows)", ha="center")
        io._atomic(Path(out), lambda tmp: fig.savefig(tmp, format="png", dpi=110))
        plt.close(fig)
        return
    keys = summary.select("dataset", "model").unique(maintain_order=True).rows()
    convs = summary["convention"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(len(keys), len(convs), figsize=(5.2 * len(convs), 3.6 * len(keys) + 0.5),
                             squeeze=False)
    styles = {"fixed": ("best fixed point", "#1f77b4", "-", "o"),
              "mix": ("fixed mixture (two points split at random)", "#2ca02c", ":", "."),
              "predicted": ("adaptive (predicted difficulty)", "#d62728", "-", "s"),
              "oracle": ("adaptive (oracle difficulty)", "#7f7f7f", "--", "^")}
    for r, (dataset, model) in enumerate(keys):
        for c, conv in enumerate(convs):
            ax = axes[r, c]
            g = summary.filter((pl.col("dataset") == dataset) & (pl.col("model") == model)
                               & (pl.col("convention") == conv))
            # the fixed policies do not depend on the source
            fixed = g.unique("budget", keep="first", maintain_order=True).sort("budget")
            lines = {"fixed": (fixed["budget"], fixed["fixed_accuracy"], fixed["fixed_accuracy_se"]),
                     "mix": (fixed["budget"], fixed["mix_accuracy"], fixed["mix_accuracy_se"])}
            for source in SOURCES:
                s = g.filter(pl.col("source") == source).sort("budget")
                lines[source] = (s["budget"], s["accuracy"], s["accuracy_se"])
            for key, (x, y, e) in lines.items():
                if len(x) == 0:
                    continue
                label, colour, ls, marker = styles[key]
                x, y, e = (np.asarray(v, dtype=float) for v in (x, y, e))
                ax.plot(x, y, ls, color=colour, marker=marker, markersize=3.5, linewidth=1.4, label=label)
                if key != "mix":  # a line between two bands; its own band would hide them
                    ax.fill_between(x, y - e, y + e, color=colour, alpha=0.12, linewidth=0)
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel(f"budget: mean FLOPs per problem ({conv})")
            ax.set_ylabel("held-out accuracy")
            ax.set_title(f"{dataset} / {model}, {conv} FLOPs", fontsize=9)
            ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.5 / (3.6 * len(keys) + 0.5), 1, 1))
    io._atomic(Path(out), lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


# --------------------------------------------------------------------------- entry point


def read_tables(db: str | Path) -> dict[str, pl.DataFrame]:
    """replay, grades, scores (when present) and folds (when present) from the database."""
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        have = {t for (t,) in con.sql("SELECT table_name FROM information_schema.tables").fetchall()}
        for need in ("replay", "grades"):
            if need not in have:
                raise ValueError(f"allocation: {db} has no {need!r} table")
        queries = {"replay": "SELECT * FROM replay",
                   "grades": "SELECT dataset, model, kind, key, problem_id, sample_idx, answer_class, correct "
                             "FROM grades WHERE kind = 'sampled'"}
        if "scores" in have:
            queries["scores"] = "SELECT dataset, model, prm, problem_id, sample_idx, scores FROM scores"
        if "folds" in have:
            queries["folds"] = "SELECT dataset, problem_id, fold FROM folds"
        return {name: pl.from_arrow(con.sql(q).to_arrow_table()) for name, q in queries.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="difficulty-adaptive compute-optimal allocation, replayed "
                                             "from a results database (prints the table and summary)")
    ap.add_argument("--db", required=True, help="results/inference.duckdb (opened read-only)")
    ap.add_argument("--k", type=int, default=4, help="probe size: the first k samples of each problem")
    ap.add_argument("--bins", type=int, default=5, help="difficulty quantile bins")
    ap.add_argument("--folds", type=int, default=4, help="folds (when the database has no folds table)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--aggregations", nargs="*", default=["last"],
                    help="step aggregations of the PRM points (none given: all)")
    ap.add_argument("--prm", help="the PRM the probe reads (default: the first by name)")
    ap.add_argument("--probe-aggregation", default="last")
    ap.add_argument("--per-decade", type=int, default=8, help="budgets per decade of FLOPs")
    ap.add_argument("--shrink", type=float, default=1.0,
                    help="pseudo-problems shrinking each bin's accuracy towards the point's overall mean")
    ap.add_argument("--num-draws", type=int, default=1000)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--unconditional", action="store_true",
                    help="score sampling points by replay's unconditional accuracy (the naive replay)")
    ap.add_argument("--plot", help="write the figure here (PNG)")
    a = ap.parse_args(argv)
    tables = read_tables(a.db)
    res = allocate(tables, folds=tables.get("folds"), k=a.k, bins=a.bins, num_folds=a.folds, seed=a.seed,
                   aggregations=a.aggregations or None, prm=a.prm, probe_aggregation=a.probe_aggregation,
                   per_decade=a.per_decade, num_draws=a.num_draws, bootstrap=a.bootstrap, shrink=a.shrink,
                   conditional=not a.unconditional)
    if a.plot:
        plot(res.summary, a.plot)
    cols = ["dataset", "model", "source", "convention", "budget", "accuracy", "accuracy_se", "cost",
            "in_sample_accuracy", "fixed_choice", "fixed_accuracy", "fixed_cost", "diff", "diff_lo", "diff_hi",
            "saving", "saving_lo", "saving_hi", "choices"]
    with pl.Config(tbl_rows=400, tbl_cols=len(cols), tbl_width_chars=400, fmt_str_lengths=200,
                   float_precision=3):
        print(res.summary.select(cols) if not res.summary.is_empty() else res.summary)
    for conv in CONVENTIONS:
        for line in summary_lines(res.summary, convention=conv):
            print(line)


if __name__ == "__main__":
    main()
