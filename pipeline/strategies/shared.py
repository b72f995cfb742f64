"""What every replay of a sample cache shares: the budgets, and the checked grades,
answer classes and token counts the estimators read.

`checked_grades` conforms a cache's grades (every problem with the same N samples) and
gives the budgets n to replay (`budgets`: 1, 2, 4, ... <= N, plus N); `class_structure`
each problem's answer classes (sizes, which are correct, unanswered samples), checking
that correctness is a property of the class; `attach_tokens` joins the samples' token
counts. Used by pipeline/strategies/voting.py and pipeline/strategies/selection.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from pipeline.core import schemas


def budgets(N: int) -> list[int]:
    """Sample budgets to replay: 1, 2, 4, ... <= N, plus N itself if not a power of two."""
    if N < 1:
        raise ValueError(f"budgets: need N >= 1, got {N}")
    out = [1 << i for i in range(N.bit_length()) if 1 << i <= N]
    if out[-1] != N:
        out.append(N)
    return out


def problem_order(df: pl.DataFrame) -> list[str]:
    return df.get_column("problem_id").unique(maintain_order=True).to_list()


def check_unique(df: pl.DataFrame, keys: list[str], what: str) -> None:
    dup = df.filter(pl.struct(keys).is_duplicated())
    if dup.height:
        row = dup.row(0, named=True)
        raise ValueError(f"replay: duplicate {what} row {({k: row[k] for k in keys})}")


def attach_tokens(keys: pl.DataFrame, tokens: pl.DataFrame, source: str) -> pl.DataFrame:
    """Join token counts of `source` onto (problem_id, sample_idx) rows; all must match."""
    tok = tokens.filter(pl.col("source") == source).select(
        pl.col("problem_id").cast(pl.String),
        pl.col("sample_idx").cast(pl.Int32),
        pl.col("prompt_tokens").cast(pl.Float64),
        pl.col("output_tokens").cast(pl.Float64),
    )
    check_unique(tok, ["problem_id", "sample_idx"], f"{source} tokens")
    joined = keys.join(tok, on=["problem_id", "sample_idx"], how="left", maintain_order="left")
    missing = joined.filter(pl.col("output_tokens").is_null() | pl.col("prompt_tokens").is_null())
    if missing.height:
        row = missing.row(0, named=True)
        raise ValueError(
            f"replay: no {source} token counts for problem {row['problem_id']!r} "
            f"sample {row['sample_idx']} ({missing.height} rows missing)"
        )
    return joined


def class_structure(g: pl.DataFrame) -> dict[str, tuple[list[int], list[int], int, int]]:
    """problem_id -> (class sizes, indices of correct classes, #unanswered, #correct).

    Correctness must be a property of the answer class (all or none of its samples
    correct) and unanswered samples cannot be correct; anything else means grading and
    answer classes disagree, which would make the vote's correctness ill-defined.
    """
    per_class = g.group_by(["problem_id", "answer_class"]).agg(
        size=pl.len(), num_correct=pl.col("correct").cast(pl.Int64).sum()
    ).sort(["problem_id", "answer_class"])
    bad = per_class.filter(
        ((pl.col("answer_class") < 0) & (pl.col("num_correct") > 0))
        | ((pl.col("num_correct") > 0) & (pl.col("num_correct") < pl.col("size")))
    )
    if bad.height:
        row = bad.row(0, named=True)
        raise ValueError(
            f"replay: problem {row['problem_id']!r} answer_class {row['answer_class']} has "
            f"{row['num_correct']} correct of {row['size']} samples; correctness must be "
            "all-or-none per answer class, and never for unanswered (-1) samples"
        )
    out: dict[str, tuple[list[int], list[int], int, int]] = {}
    for pid, cls, size, num_correct in per_class.iter_rows():
        sizes, correct, unanswered, total_correct = out.get(pid, ([], [], 0, 0))
        if cls < 0:
            unanswered += size
        else:
            if num_correct:
                correct.append(len(sizes))
            sizes.append(size)
        out[pid] = (sizes, correct, unanswered, total_correct + num_correct)
    return out


def checked_grades(
    grades: pl.DataFrame, ns: Sequence[int] | None, what: str
) -> tuple[pl.DataFrame, list[str], int, list[int]]:
    """Conformed grades, problem order, N and the budgets: every problem has N samples."""
    g = schemas.conform(grades, schemas.GRADES, f"{what} grades")
    if g.height == 0:
        raise ValueError(f"{what}: grades frame is empty")
    check_unique(g, ["problem_id", "sample_idx"], "grades")
    order = problem_order(g)
    counts = g.group_by("problem_id", maintain_order=True).len()
    num_samples = int(counts.get_column("len")[0])
    bad = counts.filter(pl.col("len") != num_samples)
    if bad.height:
        pid, cnt = bad.row(0)
        raise ValueError(
            f"{what}: every problem needs the same number of samples; problem {pid!r} has "
            f"{cnt}, problem {order[0]!r} has {num_samples}"
        )
    ns = budgets(num_samples) if ns is None else sorted({int(x) for x in ns})
    if not ns or ns[0] < 1 or ns[-1] > num_samples:
        raise ValueError(f"{what}: budgets {ns} must lie in 1..N={num_samples}")
    return g, order, num_samples, ns

