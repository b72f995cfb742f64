"""The grade stage: every sample of one cache graded against its problem's reference.

Grades (results/grades/{dataset}/{model}/{key}.parquet; schema GRADES in
pipeline/core/schemas.py): each sample's answer, its answer class (the unit voting
counts) and its correctness. The stage dispatches by the task kind (`--task`, set by
the rule from the dataset's source):

    math   pipeline/tasks/answers.py's `grade`: the extracted, normalised final
           answer, checked for equivalence with the reference (rule `grade`)
    code   pipeline/tasks/code_grading.py's `grade_code`: each program run against
           the problem's unit tests in a fresh bubblewrap sandbox; the answer is the
           program's behaviour on the tests' inputs; two more columns, `status` (pass,
           fail, timeout, error) and `reason` (rule `grade_code`). The sandbox is
           checked first: without a working one the stage fails with one message
           before any program runs. The file's Parquet metadata `sandbox` records the
           tool, interpreter and limits, `grading` the counts by status.
"""

from __future__ import annotations

import json
import sys

import polars as pl

from pipeline.tasks.answers import grade


def main(argv: list[str] | None = None) -> None:
    """python -m pipeline.grading --problems P --out F [--task code --prompt JSON
    --execution JSON --workers N] SHARD.parquet ..."""
    import argparse

    from pipeline.core import integrity, io

    ap = argparse.ArgumentParser(description="grade one sample cache")
    ap.add_argument("--problems", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--task", choices=["math", "code"], default="math")
    ap.add_argument("--prompt", help="code: the cache's prompt template (JSON), to rebuild each program")
    ap.add_argument("--execution", default="{}", help="code: the dataset's `execution` settings (JSON)")
    ap.add_argument("--workers", type=int, default=0, help="code: sandboxes at once (0: 4 per core)")
    ap.add_argument("shards", nargs="+")
    a = ap.parse_args(argv)
    integrity.check_inputs([a.problems, *a.shards])
    samples = pl.concat(
        [pl.read_parquet(f, columns=["problem_id", "sample_idx", "text"]) for f in a.shards]
    )
    problems = pl.read_parquet(a.problems)
    if a.task == "code":
        if not a.prompt:
            ap.error("--task code needs --prompt")
        _grade_code(samples, problems, prompt=json.loads(a.prompt), execution=json.loads(a.execution),
                    workers=a.workers, out=a.out)
        return
    graded = grade(samples, problems)
    io.write_parquet(graded, a.out)
    print(
        f"{graded.height} samples, {graded['correct'].mean():.3f} correct, "
        f"{graded['answer'].null_count()} without an answer -> {a.out}"
    )


def _grade_code(samples: pl.DataFrame, problems: pl.DataFrame, *, prompt: dict, execution: dict,
                workers: int, out: str) -> None:
    import os
    import time

    from pipeline.core import io
    from pipeline.tasks.code_grading import grade_code
    from pipeline.tasks.sandbox import Limits, Sandbox, SandboxUnavailable

    try:
        limits = Limits.from_config(execution)
        sandbox = Sandbox(limits, python=execution.get("python"))
        described = sandbox.check()
    except (SandboxUnavailable, ValueError) as e:
        sys.exit(f"grade: {e}")  # one message, no traceback, nothing run
    workers = workers or int(execution.get("workers", 0)) or 4 * len(os.sched_getaffinity(0))
    print(f"sandbox: {described}", flush=True)
    start = time.monotonic()
    graded, summary = grade_code(samples, problems, prompt=prompt, sandbox=sandbox, workers=workers)
    summary = {**summary, "workers": workers, "wall_seconds": round(time.monotonic() - start, 3)}
    io.write_parquet(graded, out, metadata={"sandbox": json.dumps(described), "grading": json.dumps(summary)})
    print(f"{graded.height} samples, {graded['correct'].mean():.3f} correct; {json.dumps(summary)} -> {out}")


if __name__ == "__main__":
    main()
