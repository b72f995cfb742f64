"""The exact multiple-choice knapsack: one item per group, summed cost within a budget,
summed value as large as possible.

`pareto_assignments` merges the groups one at a time and keeps only the non-dominated
(cost, value) partial assignments. That is exact: a dominated partial assignment (another
costs no more and is worth no less) can be swapped for the one dominating it in every
completion without losing value or exceeding the budget. The final frontier answers every
budget at once (`choose`). Ties: with equal cost the higher value; with values equal
within 1e-12 the lower cost; with both equal the lexicographically first tuple of item
indices (items are numbered in the caller's tie-break order).

In pipeline.analysis.allocation the groups are difficulty bins, the items the candidate points,
values and costs the bins' shares of training-problem accuracy and cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_REL = 1e-9  # relative slack when comparing a cost with a budget (sums in another order)
_TOL = 1e-12  # value differences below this are ties


@dataclass(frozen=True)
class Frontier:
    """Non-dominated assignments of one item per group: cost ascending, value strictly
    ascending; choice[s, b] = the item chosen in group b."""

    cost: np.ndarray
    value: np.ndarray
    choice: np.ndarray


def pareto_assignments(values: Sequence[np.ndarray], costs: Sequence[np.ndarray], *,
                       max_cost: float = np.inf) -> Frontier:
    """Exact multiple-choice knapsack frontier: every assignment of one item per group
    whose summed (cost, value) no other assignment dominates, up to `max_cost`.

    Groups are merged one at a time, keeping only non-dominated partial assignments
    (with equal cost the higher value; with equal value, within 1e-12, the lower cost;
    with both equal the lexicographically first choice tuple)."""
    cost, value = np.zeros(1), np.zeros(1)
    choice = np.zeros((1, 0), dtype=np.intp)
    lex = np.zeros(1, dtype=np.intp)  # rank of each choice tuple in lexicographic order
    limit = max_cost * (1 + _REL) if np.isfinite(max_cost) else np.inf
    for v, c in zip(values, costs, strict=True):
        v, c = np.asarray(v, dtype=float), np.asarray(c, dtype=float)
        if v.shape != c.shape or v.ndim != 1 or v.size == 0:
            raise ValueError(f"pareto_assignments: a group needs equal-length values and costs, got {v.shape}, {c.shape}")
        parent = np.repeat(np.arange(cost.size), v.size)
        item = np.tile(np.arange(v.size), cost.size)
        nc, nv = cost[parent] + c[item], value[parent] + v[item]
        ok = np.isfinite(nc) & np.isfinite(nv) & (nc <= limit)
        parent, item, nc, nv = parent[ok], item[ok], nc[ok], nv[ok]
        if nc.size == 0:
            return Frontier(np.zeros(0), np.zeros(0), np.zeros((0, choice.shape[1] + 1), dtype=np.intp))
        nlex = np.empty(nc.size, dtype=np.intp)
        nlex[np.lexsort((item, lex[parent]))] = np.arange(nc.size)
        order = np.lexsort((nlex, -nv, nc))
        sv = nv[order]
        best = np.maximum.accumulate(sv)[:-1]
        before = np.concatenate(([-np.inf], best + _TOL * np.maximum(1.0, np.abs(best))))
        keep = order[sv > before]
        cost, value = nc[keep], nv[keep]
        choice = np.column_stack([choice[parent[keep]], item[keep]])
        lex = np.argsort(np.argsort(nlex[keep], kind="stable"), kind="stable")
    return Frontier(cost, value, choice)


def choose(frontier: Frontier, budget: float) -> int | None:
    """Index of the most valuable frontier assignment with cost <= budget (None: none)."""
    s = int(np.searchsorted(frontier.cost, budget * (1 + _REL), side="right")) - 1
    return s if s >= 0 else None
