"""Majority voting under the default and the reference protocol on two MATH500-format
sample sets built from the real data in ../shared/data (no model runs, seconds).

    python scripts/protocols_on_shared_data.py [--data ../shared/data]

Both sets are written the way the paper's Llemma/MetaMath policies write ("... ки" at
the end of every step line, a last line "The answer is: X ки"), which is the format the
reference's evaluation reads (`analysis.compat.extraction: reference`):

  gsm8k-models   the 1,319 GSM8K problems posed in MATH500 format (problem, answer =
                 the number after ####), with the 4 real model solutions of
                 gsm8k_example_model_solutions.jsonl as samples 0-3 (6B/175B,
                 finetuned / verifier-selected), each line tagged, "A: X" rewritten as
                 "The answer is: X ки".
  math500-built  the 500 MATH500 problems with 4 samples built from the dataset's own
                 worked solutions (MATH500 has no model solutions here): 0 the problem's
                 solution ending in its answer; 1 the same solution ending in the next
                 problem's answer (a real MATH answer string, wrong); 2 the solution
                 without a final answer line (unanswered); 3 the problem's answer
                 written "The answer is: X" without the tag (answered for this
                 product's extraction, "[invalid]" for the reference's).

Prints per set and n: the default protocol's majority voting (an exact expectation over
n-subsets, unanswered samples do not vote; pipeline/strategies/voting.py, graded by
pipeline/tasks/answers.py) and the reference protocol's (the first n samples evaluated
once, "[invalid]" votes, its tie rule and grader; pipeline/strategies/reference.py)
against the dataset's answer and against hf_score.py's extracted truth.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import polars as pl

from pipeline.strategies import reference, voting
from pipeline.strategies.shared import budgets
from pipeline.tasks.answers import grade

REPO = Path(__file__).resolve().parents[1]
TAG = " ки"


def _tagged(lines: list[str], answer: str | None, *, tag_answer: bool = True) -> str:
    steps = [f"{line.strip()}{TAG}" for line in lines if line.strip()]
    if answer is not None:
        steps.append(f"The answer is: {answer}" + (TAG if tag_answer else ""))
    return "\n".join(steps)


def gsm8k_models(data: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    problems, samples = [], []
    for i, line in enumerate((data / "gsm8k_example_model_solutions.jsonl").read_text().splitlines()):
        row = json.loads(line)
        pid = f"gsm8k-{i:04d}"
        truth = row["ground_truth"].rsplit("A:", 1)[1].strip().replace(",", "")
        problems.append((pid, row["question"], truth, "{}"))
        models = [k for k, v in row.items() if isinstance(v, dict)]
        for j, name in enumerate(sorted(models)):
            body, _, final = row[name]["solution"].rpartition("\nA:")
            lines = body.split("\n") if final else row[name]["solution"].split("\n")
            samples.append((pid, j, _tagged(lines, final.strip() if final else None)))
    return _frames(problems, samples)


def math500_built(data: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    rows = [json.loads(line) for line in (data / "math500_test.jsonl").read_text().splitlines()]
    problems, samples = [], []
    for i, row in enumerate(rows):
        pid = row["unique_id"]
        problems.append((pid, row["problem"], row["answer"], json.dumps({"solution": row["solution"]})))
        # the worked solution's lines, without the sentence that states the boxed answer
        lines = [ln for ln in re.split(r"\n+", row["solution"]) if "\\boxed" not in ln]
        other = rows[(i + 1) % len(rows)]["answer"]
        samples += [(pid, 0, _tagged(lines, row["answer"])), (pid, 1, _tagged(lines, other)),
                    (pid, 2, _tagged(lines, None)), (pid, 3, _tagged(lines, row["answer"], tag_answer=False))]
    return _frames(problems, samples)


def _frames(problems: list[tuple], samples: list[tuple]) -> tuple[pl.DataFrame, pl.DataFrame]:
    p = pl.DataFrame(problems, schema=["problem_id", "question", "answer", "metadata"], orient="row")
    s = pl.DataFrame(samples, schema={"problem_id": pl.String, "sample_idx": pl.Int32, "text": pl.String},
                     orient="row")
    return p, s


def compare(problems: pl.DataFrame, samples: pl.DataFrame) -> pl.DataFrame:
    """Per n: default majority (expectation) and reference majority (first n), each with
    the dataset's answer; the reference also with hf_score.py's extracted truth."""
    grades = grade(samples, problems)
    tokens = samples.select("problem_id", "sample_idx", prompt_tokens=pl.lit(0), output_tokens=pl.lit(0),
                            source=pl.lit("sampled"))
    default = (voting.replay(grades, None, tokens, params=1).filter(pl.col("strategy") == "majority")
               .group_by("n").agg(default=pl.col("accuracy").mean()))
    texts = samples.sort("problem_id", "sample_idx").group_by("problem_id", maintain_order=True).agg("text")
    truth = dict(zip(problems["problem_id"], problems["answer"]))
    out = {}
    for mode in ("dataset", "extracted"):
        for pid, ts in texts.iter_rows():
            answers = [reference.answer_of(t) for t in ts]
            rows = reference.sampling_rows(
                answers, {}, lambda n, a=truth[pid]: reference.ground_truth(a, mode=mode, n=n),
                budgets(len(ts)))
            for _, _, _, n, acc, _ in rows:
                out.setdefault((mode, n), []).append(acc)
    ref = pl.DataFrame([{"n": n, f"reference_{mode}": sum(v) / len(v)} for (mode, n), v in out.items()])
    ref = ref.group_by("n").agg(pl.all().drop_nulls().first())
    return default.join(ref, on="n").sort("n").with_columns(pl.col(pl.Float64).round(4))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    a = ap.parse_args(argv)
    for name, build in (("gsm8k-models", gsm8k_models), ("math500-built", math500_built)):
        problems, samples = build(a.data)
        print(f"{name}: {problems.height} problems x {samples.height // problems.height} samples, majority voting")
        with pl.Config(tbl_rows=20):
            print(compare(problems, samples))


if __name__ == "__main__":
    main()
