"""The replay stage: every strategy replayed over one sample cache, on the CPU.

`python -m pipeline.replay` is the entry point of both rules: `replay` (greedy, majority
voting and coverage, pipeline/strategies/voting.py) and, with `--prm`, `replay_prm`
(best-of-N and weighted majority voting by one PRM's step scores,
pipeline/strategies/selection.py). Both write one row per problem x strategy x n
(schema REPLAY in pipeline/core/schemas.py).
"""

from __future__ import annotations

import polars as pl

from pipeline.strategies.voting import replay, summarize


def _tokens(shards: list[str], source: str) -> pl.DataFrame:
    cols = ["problem_id", "sample_idx", "prompt_tokens", "output_tokens"]
    return pl.concat([pl.read_parquet(f, columns=cols) for f in shards]).with_columns(
        source=pl.lit(source)
    )


def main(argv: list[str] | None = None) -> None:
    """python -m pipeline.replay --grades G --shards S... --info I --out F
         [--greedy-grades G2 --greedy-shards S2...]                  (voting, coverage, greedy)
         [--prm NAME --scores SC... --num-draws D --seed K]          (best-of-N, weighted voting)"""
    import argparse
    import json

    from pipeline.core import integrity, io

    ap = argparse.ArgumentParser(description="replay strategies over one sample cache")
    ap.add_argument("--grades", required=True)
    ap.add_argument("--shards", nargs="+", required=True)
    ap.add_argument("--greedy-grades")
    ap.add_argument("--greedy-shards", nargs="*", default=[])
    ap.add_argument("--prm", help="replay the PRM strategies with this PRM's --scores")
    ap.add_argument("--scores", nargs="*", default=[])
    ap.add_argument("--num-draws", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--info", required=True, help="model info JSON (parameter count)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    integrity.check_inputs([a.grades, *a.shards, *filter(None, [a.greedy_grades]), *a.greedy_shards, *a.scores])
    params = json.loads(open(a.info).read())["params_total"]
    grades = pl.read_parquet(a.grades)
    tokens = [_tokens(a.shards, "sampled")]
    if a.prm:
        scores = pl.concat([pl.read_parquet(f) for f in a.scores])
        # An empty generation has no steps to score; it has no answer either, so it
        # ranks last (score 0) and can never be picked over an answered sample's class.
        step_scores = scores.select(
            "problem_id", "sample_idx",
            scores=pl.when(pl.col("scores").list.len() == 0)
            .then(pl.lit([0.0], dtype=pl.List(pl.Float64)))
            .otherwise(pl.col("scores")),
        )
        from pipeline.strategies.selection import replay_prm

        out = replay_prm(
            grades, step_scores, tokens[0], params=params, prm=a.prm,
            prm_params=int(scores["prm_params"][0]),
            prm_tokens=scores.select("problem_id", "sample_idx", "prm_tokens"),
            num_draws=a.num_draws, seed=a.seed,
        )
        io.write_parquet(out, a.out)
        with pl.Config(tbl_rows=100, tbl_cols=10):
            print(out.group_by("strategy", "aggregation", "n").agg(pl.col("accuracy").mean()).sort("strategy", "aggregation", "n"))
        return
    greedy = None
    if a.greedy_grades:
        greedy = pl.read_parquet(a.greedy_grades)
        tokens.append(_tokens(a.greedy_shards, "greedy"))
    out = replay(grades, greedy, pl.concat(tokens), params=params)
    io.write_parquet(out, a.out)
    with pl.Config(tbl_rows=100, tbl_cols=10):
        print(summarize(out))



if __name__ == "__main__":
    main()
