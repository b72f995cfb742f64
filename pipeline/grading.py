"""The grade stage: every sample of one cache graded against its problem's reference.

Grades (results/grades/{dataset}/{model}/{key}.parquet; schema GRADES in
pipeline/core/schemas.py): each sample's extracted, normalised answer, its answer class
(the unit voting counts) and its correctness: pipeline/tasks/answers.py's `grade`.
"""

from __future__ import annotations

import polars as pl

from pipeline.tasks.answers import grade


def main(argv: list[str] | None = None) -> None:
    """python -m pipeline.grading --problems P --out F SHARD.parquet ..."""
    import argparse

    from pipeline.core import integrity, io

    ap = argparse.ArgumentParser(description="grade one sample cache")
    ap.add_argument("--problems", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("shards", nargs="+")
    a = ap.parse_args(argv)
    integrity.check_inputs([a.problems, *a.shards])
    samples = pl.concat(
        [pl.read_parquet(f, columns=["problem_id", "sample_idx", "text"]) for f in a.shards]
    )
    graded = grade(samples, pl.read_parquet(a.problems))
    io.write_parquet(graded, a.out)
    print(
        f"{graded.height} samples, {graded['correct'].mean():.3f} correct, "
        f"{graded['answer'].null_count()} without an answer -> {a.out}"
    )


if __name__ == "__main__":
    main()
