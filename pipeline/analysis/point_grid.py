"""The candidate points of one dataset x model for a difficulty-adaptive policy, as
matrices over problems x points, and what each point costs a policy that first drew a
probe (pipeline.analysis.allocation).

Points (`point_grid`): every (strategy, prm, aggregation, n) of the `replay` table that
is neither an oracle nor an adaptive policy itself (pipeline.analysis.views.ORACLE_STRATEGIES,
ADAPTIVE_STRATEGIES) and has one row for every graded problem, with the step
aggregations limited to `aggregations` (the headline `analysis.aggregations`; None:
all). Tie-break order: prm (none first), strategy, aggregation (none first), n. Label
within a model (`choice_label`): 'majority@4', 'best_of_n@8 [value-head, last]',
'rebase_majority@4 [value-head]', 'greedy'.

Cost (`cost_matrix`), in every cost column of the grid: each convention's
(pipeline.analysis.views.FLOPS_CONVENTIONS: "paper" = flops_paper, "full" = flops_full) and,
carried the same way, the token columns. A *sampling* point (majority, best_of_n,
weighted_majority at n) reuses the k probe samples: it costs max(n, k) samples' worth of
the policy (per-sample cost = the problem's majority cost at n, divided by n: replay
costs are linear in n) plus its PRM scoring; the probe's PRM scores are charged once
(nothing in the paper convention) and a point using the probe's PRM does not pay for
them again. Measured seconds (pipeline.analysis.latency) are carried the same way, so an adaptive
policy chosen in FLOPs also has its measured seconds per problem (NaN where a point has
none). Any other point (greedy decoding; tree search, "<search>_<rule>" with n = its
budget) is a run of its own: probe + its replay cost. (A fixed strategy pays no probe:
its cost is the grid's.)
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from pipeline.analysis import views

# Strategies that vote over the sampled cache, so can reuse the probe's samples; every
# other non-oracle strategy (greedy, tree search) is a run of its own.
SAMPLING_STRATEGIES = ("majority", "best_of_n", "weighted_majority")
CONVENTIONS = dict(views.FLOPS_CONVENTIONS)  # views.ADAPTIVE_STRATEGIES says why
TOKEN_COLUMNS = ("output_tokens", "prompt_tokens")  # carried like costs (linear in n too)
# Carried like costs too, never allocated over: measured seconds per problem (n/N of the
# cache's work for sampling points, so linear in n as well; pipeline.analysis.latency).
CARRIED_COLUMNS = (*TOKEN_COLUMNS, "seconds")


def choice_label(strategy: str, prm: str | None, aggregation: str | None, n: int) -> str:
    """A bin's point within one model: 'majority@4', 'best_of_n@8 [value-head, last]',
    'rebase_majority@4 [value-head]', 'greedy'."""
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
    cost: column name (a key of `conventions`, or a token column) -> the replay cost."""

    problems: list[str]
    points: pl.DataFrame
    accuracy: np.ndarray
    accuracy_se: np.ndarray
    cost: dict[str, np.ndarray]


def point_grid(replay: pl.DataFrame, problems: Sequence[str], *,
               aggregations: Sequence[str] | None = ("last",),
               conventions: Mapping[str, str] = CONVENTIONS) -> Grid:
    """Candidate points of one dataset x model: every (strategy, prm, aggregation, n) of
    `replay` but the oracles and the adaptive policies whose aggregation is in
    `aggregations` (None: all; no aggregation always passes) and that has exactly one
    row for each of `problems`. Points covering other problems are left out with a note
    on stderr. The grid's costs: each convention's column, and the token columns present."""
    keys = ["prm", "strategy", "aggregation", "n"]
    df = replay.filter(~pl.col("strategy").is_in([*views.ORACLE_STRATEGIES, *views.ADAPTIVE_STRATEGIES]))
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
    points = points.with_columns(label=pl.Series([choice_label(s, p, a, n) for p, s, a, n in
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

    columns = {**conventions, **{c: c for c in CARRIED_COLUMNS if c in rows.columns}}
    return Grid(list(problems), points, matrix("accuracy"), matrix("accuracy_se"),
                {name: matrix(col) for name, col in columns.items()})


def cost_matrix(grid: Grid, convention: str, *, k: int, probe_prm: str | None) -> np.ndarray:
    """Per problem x point: the adaptive policy's cost in one of the grid's cost columns
    (see the module docstring). probe_prm: the PRM whose scores the probe reads (None:
    the probe reads none)."""
    with warnings.catch_warnings():  # an unmeasured column (seconds) is all NaN: NaN out
        warnings.simplefilter("ignore", RuntimeWarning)
        return _cost_matrix(grid, convention, k=k, probe_prm=probe_prm)


def _cost_matrix(grid: Grid, convention: str, *, k: int, probe_prm: str | None) -> np.ndarray:
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
