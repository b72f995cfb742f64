"""Parquet contracts between stages. Every stage writes exactly these columns.

problems  (results/problems/{dataset}.parquet, one row per problem, in dataset order)
    problem_id   str    unique within the dataset
    question     str
    answer       str    reference final answer (raw string; may be LaTeX)
    metadata     str    JSON object (level, subject, source line, ...)

samples   (results/samples/{dataset}/{model}/{key}/p{a}-{b}_s{c}-{d}.parquet,
           one row per problem x sample; {key} is the sampling cache key)
    problem_id          str
    sample_idx          int32   0..N-1, stable across runs: raising N adds indices
    text                str     the completion, one reasoning step per line
    step_ends           list[int32]  character offset where each step ends (exclusive)
    prompt_tokens       int32
    output_tokens       int32
    finish_reason       str     "stop" | "length"
    cumulative_logprob  float64 sum of sampled-token log-probabilities

grades    (results/grades/{dataset}/{model}/{key}.parquet, one row per sample)
    problem_id    str
    sample_idx    int32
    answer        str | null   normalised extracted answer; null = no answer
    answer_class  int32        equivalence class within the problem; -1 = no answer
    correct       bool
    Code datasets (pipeline/tasks/code_grading.py, CODE_GRADES) add status ("pass" |
    "fail" | "timeout" | "error") and reason; their answer is the program's behaviour
    on the tests' inputs. Everything downstream reads only the columns above.

replay    (results/replay/{dataset}/{model}.parquet, one row per problem x strategy x n)
    problem_id      str
    strategy        str      "greedy" | "majority" | "coverage"
    n               int32    samples per problem the strategy spends
    accuracy        float64  exact expectation over random n-subsets of the cache
    output_tokens   float64  expected generated tokens per problem
    prompt_tokens   float64  expected prompt tokens per problem (once per sample)
    flops_paper     float64  2 * params * output_tokens
    flops_full      float64  2 * params * (output_tokens + prompt_tokens)
"""

from __future__ import annotations

import polars as pl

PROBLEMS = {
    "problem_id": pl.String,
    "question": pl.String,
    "answer": pl.String,
    "metadata": pl.String,
}

SAMPLES = {
    "problem_id": pl.String,
    "sample_idx": pl.Int32,
    "text": pl.String,
    "step_ends": pl.List(pl.Int32),
    "prompt_tokens": pl.Int32,
    "output_tokens": pl.Int32,
    "finish_reason": pl.String,
    "cumulative_logprob": pl.Float64,
}

GRADES = {
    "problem_id": pl.String,
    "sample_idx": pl.Int32,
    "answer": pl.String,
    "answer_class": pl.Int32,
    "correct": pl.Boolean,
}

REPLAY = {
    "problem_id": pl.String,
    "strategy": pl.String,
    "n": pl.Int32,
    "accuracy": pl.Float64,
    "output_tokens": pl.Float64,
    "prompt_tokens": pl.Float64,
    "flops_paper": pl.Float64,
    "flops_full": pl.Float64,
}


def conform(df: pl.DataFrame, schema: dict[str, pl.DataType], what: str) -> pl.DataFrame:
    """Select and cast `df` to `schema`, failing with the missing column's name."""
    missing = [c for c in schema if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; have {df.columns}")
    return df.select([pl.col(c).cast(t, strict=True) for c, t in schema.items()])
