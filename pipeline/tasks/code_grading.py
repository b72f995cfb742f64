"""Grading code samples by running each problem's unit tests in the sandbox.

`grade_code` gives one GRADES row per sample (schema CODE_GRADES below: GRADES plus
`status` and `reason`), so every replay downstream (voting, coverage, best-of-N,
weighted voting, the analysis) reads code grades exactly as math grades:

    status        pass | fail | timeout | error
                  pass     every assertion of the test held and it ran to its end
                  fail     an assertion failed, the program raised, did not compile,
                           lacks the entry point, exited or was killed during the
                           tests, or broke the memory, process or output limit
                  timeout  the wall-clock or CPU-time limit
                  error    no verdict: the sandbox did not start for this sample
                           (twice: a failed start is retried once)
    reason        why (empty for a pass), e.g. "assertion failed (test line 12: ...)",
                  "MemoryError (...) [memory limit 1024 MiB per process]"
    correct       status == "pass"
    answer        the program's behaviour: "<k> calls <digest>", the number of calls the
                  test made to the function and a digest of their outcomes (value
                  returned or exception raised, pipeline/tasks/code_harness.py); NULL
                  when there is none (a timeout, an error, a program that does not
                  compile or lacks the function)
    answer_class  samples of a problem with the same behaviour share a class (numbered
                  by first sample_idx), -1 without one; the unit majority voting and
                  weighted voting count

Why behaviour on the test's inputs. Voting needs a notion of "the same answer" under
which correctness is a property of the class (the replays' exact estimators assume it,
pipeline/strategies/shared.py `class_structure`). Outputs on the inputs of the
prompt's docstring examples do not give one: two programs can agree there and differ
on the tests. Outputs on the test's own inputs (the inputs only, never the expected
outputs) do: an assertion compares outputs, so identical outputs pass or fail
together. This is the clustering of MBR-exec (Shi et al. 2022), which executes samples
on a benchmark's test inputs; in deployment those inputs would be generated instead
(AlphaCode, CodeT). As insurance the class key also includes pass/fail, so a class
never mixes the two even where an assertion reads more than the returned values (a
program that mutates its argument); the stage log counts such splits, which would
otherwise be merged.

Identical programs of a problem run once (the harness seeds `random`, the sandbox
PYTHONHASHSEED: a rerun gives the same verdict), and programs run in parallel, one
fresh sandbox each (`workers` at once).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import polars as pl

from pipeline.core import schemas
from pipeline.core.progress import progress
from pipeline.tasks import code, code_harness
from pipeline.tasks.sandbox import Execution, Limits, Sandbox

CODE_GRADES = {**schemas.GRADES, "status": pl.String, "reason": pl.String}
STATUSES = ("pass", "fail", "timeout", "error")


@dataclass(frozen=True)
class Verdict:
    status: str
    reason: str
    behaviour: str | None  # "<calls> calls <digest>", or None
    seconds: float


def verdict(ex: Execution, limits: Limits) -> Verdict:
    """What one sandboxed execution of the harness says about its program."""
    results = [m for m in ex.messages if m.get("event") == "result"]
    # A program that forks inside the tests can make its copies report too: the
    # program passes only if every report does (the first failure explains why not).
    result = next((m for m in results if m.get("status") != "pass"), results[0] if results else None)
    if ex.output_exceeded:
        return Verdict("fail", f"printed more than {limits.output_kb} KiB (output limit)", None, ex.wall_s)
    if result is not None and result.get("status") in ("pass", "fail"):
        status, reason = result["status"], str(result.get("reason", ""))[:1000]
        calls, digest = result.get("calls"), result.get("behaviour")
        if not (isinstance(calls, int) and isinstance(digest, str)):  # only a program that found the nonce
            return Verdict("fail", "the test harness's report was tampered with", None, ex.wall_s)
        behaviour = f"{calls} calls {digest[:16]}" if digest else None
        return Verdict(status, _limit_hint(reason, limits), behaviour, ex.wall_s)
    if not ex.started:
        said = ex.output.decode("utf-8", "replace").strip()[:300]
        return Verdict("error", f"the sandbox did not start: {said or f'exit status {ex.returncode}'}", None, ex.wall_s)
    if ex.timed_out:
        return Verdict("timeout", f"wall-clock limit of {limits.timeout_s:g} s", None, ex.wall_s)
    if ex.oom_killed:
        return Verdict("fail", f"killed at the sandbox's memory limit ({limits.memory_mb + limits.tmp_mb} MiB for "
                               "all its processes and /tmp together)", None, ex.wall_s)
    sig = ex.killed_by()
    if sig == "SIGXCPU" or (sig == "SIGKILL" and ex.wall_s >= limits.cpu_s):
        return Verdict("timeout", f"CPU-time limit of {limits.cpu_s:g} s ({sig})", None, ex.wall_s)
    said = ex.output.decode("utf-8", "replace").strip().splitlines()
    tail = f": {said[-1][:200]}" if said else ""
    if sig is not None:
        return Verdict("fail", f"killed by {sig} during the tests{tail}", None, ex.wall_s)
    return Verdict("fail", f"exited with status {ex.returncode} before the tests finished{tail}", None, ex.wall_s)


def _limit_hint(reason: str, limits: Limits) -> str:
    if reason.startswith("MemoryError") or "MemoryError" in reason.split(":")[0]:
        return f"{reason} [memory limit {limits.memory_mb} MiB per process]"
    if "BlockingIOError" in reason or "Resource temporarily unavailable" in reason:
        return f"{reason} [process limit {limits.processes}]"
    if "File too large" in reason or "No space left" in reason:
        return f"{reason} [/tmp limit {limits.tmp_mb} MiB]"
    return reason


def execute(sandbox: Sandbox, payloads: list[dict], *, workers: int,
            on_done: Callable[[], None] | None = None) -> list[Verdict]:
    """Run the harness on every payload, `workers` sandboxes at once, in input order.
    A sandbox that fails to start is retried once; nothing a program does raises here."""
    script = code_harness.script()

    def one(payload: dict) -> Verdict:
        try:
            ex = sandbox.run(script, payload)
            if not ex.started:
                ex = sandbox.run(script, payload)
            v = verdict(ex, sandbox.limits)
        except Exception as e:  # the grader's own failure on one program: that program's error
            v = Verdict("error", f"grader error: {type(e).__name__}: {e}"[:300], None, 0.0)
        if on_done is not None:
            on_done()
        return v

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, payloads))


def grade_code(samples: pl.DataFrame, problems: pl.DataFrame, *, prompt: dict, sandbox: Sandbox,
               workers: int, dedupe: bool = True) -> tuple[pl.DataFrame, dict]:
    """CODE_GRADES rows for `samples` (problem_id, sample_idx, text), in problem order then
    sample_idx, and a summary (counts by status, executions, seconds). `dedupe=False`
    runs every sample, repeated programs too (benchmarks/sandbox_cost.py)."""
    order = {pid: i for i, pid in enumerate(problems["problem_id"].to_list())}
    if len(order) != problems.height:
        raise ValueError("grade: duplicate problem_id in problems")
    tests = dict(zip(problems["problem_id"], problems["answer"]))
    questions = dict(zip(problems["problem_id"], problems["question"]))
    entries = {pid: code.entry_point(m) for pid, m in zip(problems["problem_id"], problems["metadata"])}
    unknown = sorted({p for p in samples["problem_id"].to_list() if p not in order})
    if unknown:
        raise ValueError(f"grade: sample problem_id(s) not in problems: {unknown[:10]}")
    samples = (samples.select("problem_id", pl.col("sample_idx").cast(pl.Int32), "text")
               .with_columns(_order=pl.col("problem_id").replace_strict(order, return_dtype=pl.Int64))
               .sort(["_order", "sample_idx"]))
    pids, texts = samples["problem_id"].to_list(), samples["text"].to_list()

    # one execution per distinct (problem, program)
    programs = [code.program(prompt, questions[p], t or "", entries[p]) for p, t in zip(pids, texts)]
    unique: dict[tuple, int] = {}
    for i, (p, prog) in enumerate(zip(pids, programs)):
        unique.setdefault((p, prog) if dedupe else (p, prog, i), len(unique))
    payloads = [{"program": k[1], "test": tests[k[0]], "entry_point": entries[k[0]]} for k in unique]
    run_of = [unique[(p, prog) if dedupe else (p, prog, i)] for i, (p, prog) in enumerate(zip(pids, programs))]
    bar = progress(range(len(payloads)), desc="grade (sandboxed runs)", total=len(payloads), unit="run")
    verdicts = execute(sandbox, payloads, workers=workers, on_done=lambda: bar.update(1))
    bar.close()
    per_sample = [verdicts[r] for r in run_of]

    classes: list[int] = []
    keys_of: dict[str, dict[tuple[str, str], int]] = {}
    behaviours_of: dict[str, dict[str, set[str]]] = {}
    for p, v in zip(pids, per_sample):
        if v.behaviour is None:
            classes.append(-1)
            continue
        known = keys_of.setdefault(p, {})
        classes.append(known.setdefault((v.behaviour, v.status), len(known)))
        behaviours_of.setdefault(p, {}).setdefault(v.behaviour, set()).add(v.status)
    split = sum(len(s) > 1 for b in behaviours_of.values() for s in b.values())

    out = pl.DataFrame({
        "problem_id": pl.Series(pids, dtype=pl.String),
        "sample_idx": samples["sample_idx"],
        "answer": pl.Series([v.behaviour for v in per_sample], dtype=pl.String),
        "answer_class": pl.Series(classes, dtype=pl.Int32),
        "correct": pl.Series([v.status == "pass" for v in per_sample], dtype=pl.Boolean),
        "status": pl.Series([v.status for v in per_sample], dtype=pl.String),
        "reason": pl.Series([v.reason for v in per_sample], dtype=pl.String),
    })
    counts = {s: int((out["status"] == s).sum()) for s in STATUSES}
    summary = {"samples": out.height, "executions": len(payloads), "status": counts,
               "split_classes": split, "execution_seconds": round(sum(v.seconds for v in verdicts), 3)}
    return schemas.conform(out, CODE_GRADES, "code grades"), summary


def summary_line(summary: dict) -> str:
    return json.dumps(summary, sort_keys=True)
