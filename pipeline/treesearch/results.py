"""What a tree search job writes: final answers chosen from its complete leaves.

Final answers come from the complete leaves by majority vote, best-of-N and weighted
majority vote, the last two under each step aggregation (min, last, prod, mean: see
`pipeline.strategies.selection.aggregate_steps`). Ties are broken uniformly at random *in
expectation*: `accuracy` is the chance the rule picks a correct answer.

Outputs of one job (results/search/{dataset}/{model}/{prm}/{search}/{key}/{budget}/{block}.parquet):
SEARCH, one row per problem x selection x aggregation:
    problem_id     str
    algorithm      str      rebase | beam | mcts | dvts | particles
    budget         int32
    selection      str      majority | best_of_n | weighted_majority
    aggregation    str      min | last | prod | mean; null for majority
    answer         str      the chosen answer (the first of tied ones); null = none
    accuracy       float64  probability the chosen answer is correct (ties split)
    completed      int32    complete leaves the rule chose from
    output_tokens  int64    policy tokens generated, pruned branches and lookahead
                            rollouts included
    prompt_tokens  int64    context tokens of every generated step (prefix caching
                            gives most of them for free; the full FLOPs convention
                            charges them, as it charges each sample its prompt)
    prm_tokens     int64    tokens the PRM read (each new node's whole path, or with
                            lookahead each rollout end's; identical sibling texts are
                            read once). Charged in full although the
                            PRM computes only the new step on its parent's cached path
                            (no credit for prefix sharing, as for prompt tokens)
    depth          int32    deepest node reached (steps)
    prm_params     int64
    flops_paper    float64  2 * policy params * output_tokens
    flops_full     float64  2 * policy params * (output + prompt tokens) + 2 * PRM params * prm_tokens
The results file carries the job's timing record (`pipeline.core.timing`: engine and PRM
load seconds, search seconds with the PRM calls, tokens, device) as Parquet metadata.
LEAVES ({block}.leaves.parquet), one row per complete leaf, for inspection:
    problem_id, leaf (int32), text, scores (list[float64]), depth (int32), tokens (int32),
    end (why it is complete: answer, eos, stop, max_depth, max_tokens, or unfinished for
    a DVTS subtree's last-round sibling), answer, answer_class, correct. A particle
    drawn m times into the final population is m rows (m votes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from pipeline.tasks.answers import grade
from pipeline.treesearch.tree import Tree

SELECTIONS = ("majority", "best_of_n", "weighted_majority")


SEARCH = {
    "problem_id": pl.String,
    "algorithm": pl.String,
    "budget": pl.Int32,
    "selection": pl.String,
    "aggregation": pl.String,
    "answer": pl.String,
    "accuracy": pl.Float64,
    "completed": pl.Int32,
    "output_tokens": pl.Int64,
    "prompt_tokens": pl.Int64,
    "prm_tokens": pl.Int64,
    "depth": pl.Int32,
    "prm_params": pl.Int64,
    "flops_paper": pl.Float64,
    "flops_full": pl.Float64,
}


LEAVES = {
    "problem_id": pl.String,
    "leaf": pl.Int32,
    "text": pl.String,
    "scores": pl.List(pl.Float64),
    "depth": pl.Int32,
    "tokens": pl.Int32,
    "end": pl.String,
    "answer": pl.String,
    "answer_class": pl.Int32,
    "correct": pl.Boolean,
}


def leaves_table(trees: list[Tree], problems: pl.DataFrame) -> pl.DataFrame:
    """Every complete leaf, graded against its problem (LEAVES rows)."""
    ids = problems["problem_id"].to_list()
    rows = [
        {"problem_id": ids[t.root.problem], "leaf": j, "text": n.text, "scores": n.scores,
         "depth": n.depth, "tokens": n.tokens, "end": n.end}
        for t in trees for j, n in enumerate(t.leaves)
    ]
    df = pl.DataFrame(rows, schema={c: LEAVES[c] for c in ("problem_id", "leaf", "text", "scores", "depth", "tokens", "end")})
    graded = grade(df.rename({"leaf": "sample_idx"}), problems).rename({"sample_idx": "leaf"})
    return df.join(graded, on=["problem_id", "leaf"], how="left").select(
        [pl.col(c).cast(t) for c, t in LEAVES.items()]
    )


def _pick(values: dict[Any, float], correct: dict[Any, bool], answers: dict[Any, str | None]) -> tuple[str | None, float]:
    """The top-valued candidates: (first one's answer, fraction of them correct)."""
    if not values:
        return None, 0.0
    best = max(values.values())
    tied = [k for k, v in values.items() if v >= best - 1e-12 * max(1.0, abs(best))]
    return answers[tied[0]], sum(correct[k] for k in tied) / len(tied)


def select(leaves: pl.DataFrame, problem_ids: list[str], aggregations: Sequence[str] | None = None) -> pl.DataFrame:
    """Per problem x selection x aggregation: chosen answer and its chance to be correct."""
    from pipeline.strategies.selection import AGGREGATIONS, aggregate_steps

    aggregations = tuple(aggregations or AGGREGATIONS)
    values = {
        a: aggregate_steps([s if len(s) else [0.0] for s in leaves["scores"].to_list()], a)
        if leaves.height else np.zeros(0)
        for a in aggregations
    }
    rows = []
    by_problem: dict[str, list[int]] = {}
    for i, pid in enumerate(leaves["problem_id"].to_list()):
        by_problem.setdefault(pid, []).append(i)
    cls, ok, ans = (leaves[c].to_list() for c in ("answer_class", "correct", "answer"))
    for pid in problem_ids:
        idx = by_problem.get(pid, [])
        answered = [i for i in idx if cls[i] >= 0]
        counts: dict[int, float] = {}
        for i in answered:
            counts[cls[i]] = counts.get(cls[i], 0) + 1
        class_ok = {cls[i]: ok[i] for i in answered}
        class_ans = {cls[i]: ans[i] for i in answered}
        rows.append((pid, "majority", None, *_pick(counts, class_ok, class_ans), len(idx)))
        for a in aggregations:
            v = values[a]
            best = {i: float(v[i]) for i in idx}
            rows.append((pid, "best_of_n", a, *_pick(best, {i: ok[i] for i in idx}, {i: ans[i] for i in idx}), len(idx)))
            weight: dict[int, float] = {}
            for i in answered:
                weight[cls[i]] = weight.get(cls[i], 0.0) + float(v[i])
            rows.append((pid, "weighted_majority", a, *_pick(weight, class_ok, class_ans), len(idx)))
    return pl.DataFrame(
        rows, schema={"problem_id": pl.String, "selection": pl.String, "aggregation": pl.String,
                      "answer": pl.String, "accuracy": pl.Float64, "completed": pl.Int32},
        orient="row",
    )


def results(trees: list[Tree], leaves: pl.DataFrame, problems: pl.DataFrame, *, algorithm: str,
            budget: int, params: int, prm_params: int) -> pl.DataFrame:
    """SEARCH rows: the selections plus each problem's compute."""
    from pipeline.core import flops

    ids = problems["problem_id"].to_list()
    compute = pl.DataFrame(
        {
            "problem_id": [ids[t.root.problem] for t in trees],
            "output_tokens": [t.output_tokens for t in trees],
            "prompt_tokens": [t.prompt_tokens for t in trees],
            "prm_tokens": [t.prm_tokens for t in trees],
            "depth": [t.depth for t in trees],
        },
        schema={"problem_id": pl.String, "output_tokens": pl.Int64, "prompt_tokens": pl.Int64,
                "prm_tokens": pl.Int64, "depth": pl.Int32},
    )
    out = select(leaves, compute["problem_id"].to_list()).join(compute, on="problem_id", how="left")
    out = out.with_columns(
        algorithm=pl.lit(algorithm), budget=pl.lit(budget, pl.Int32), prm_params=pl.lit(prm_params, pl.Int64),
        flops_paper=flops.paper_flops(params, pl.col("output_tokens")).cast(pl.Float64),
        flops_full=(
            flops.full_flops(params, pl.col("output_tokens"), pl.col("prompt_tokens"))
            + 2 * prm_params * pl.col("prm_tokens")
        ).cast(pl.Float64),
    )
    return out.select([pl.col(c).cast(t) for c, t in SEARCH.items()])


def replay_rows(df: pl.DataFrame, *, name: str, prm: str) -> pl.DataFrame:
    """SEARCH rows as rows of the aggregate `replay` table: strategy "<name>_<selection>",
    n = the budget (the strategy's width), exact (accuracy_se 0)."""
    return df.select(
        "problem_id",
        pl.lit(prm).alias("prm"),
        pl.col("aggregation"),
        (pl.lit(f"{name}_") + pl.col("selection")).alias("strategy"),
        pl.col("budget").cast(pl.Int32).alias("n"),
        "accuracy",
        pl.lit(0.0).alias("accuracy_se"),
        pl.col("output_tokens").cast(pl.Float64),
        pl.col("prompt_tokens").cast(pl.Float64),
        "flops_paper",
        "flops_full",
    )


def tables(entries: list[dict]) -> tuple[pl.DataFrame | None, list[pl.DataFrame]]:
    """For the aggregate stage, from the manifest's search entries (dataset, model, prm,
    search, key, budget, files): the `search` table (SEARCH rows tagged with dataset,
    model, prm, search, key; None without searches) and the same results as parts of
    the `replay` table (tagged with dataset and model)."""
    raw, parts = [], []
    for e in entries:
        df = pl.concat([pl.read_parquet(f) for f in e["files"]])
        tags = [pl.lit(e[k]).alias(k) for k in ("dataset", "model", "prm", "search", "key")]
        raw.append(df.select(*tags, pl.all()))
        parts.append(replay_rows(df, name=e["search"], prm=e["prm"]).select(
            pl.lit(e["dataset"]).alias("dataset"), pl.lit(e["model"]).alias("model"), pl.all()))
    return (pl.concat(raw) if raw else None), parts

