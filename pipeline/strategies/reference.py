"""The reference protocol (`analysis.compat.protocol: reference`): voting and best-of-N
replayed from the same caches the way the paper's evaluation script computes them.

What the paper's code computes (GitHub thu-wyz/inference_scaling). `sgl_baseline.py`
draws `--sampling_num` solutions per problem in one run and writes them to one file, a
file per sampling_num (`samp_num_$SAMPLING_NUM.json`); `hf_score.py` adds step scores;
`math_evaluate.py` (run by `scripts/evaluate.sh`) evaluates that file once: majority
voting, weighted majority voting and best-of-N over ALL the solutions in it. Nothing in
the code takes subsets. So a reported number at n is one evaluation of one set of n
samples, with its sampling noise: not an expectation over n-subsets (the default
protocol, pipeline/strategies/voting.py and selection.py). The replay here evaluates
the FIRST n cached samples of each problem (sample_idx 0..n-1: an i.i.d. draw of n, as
a run of n would be) once, for every budget n of the default replay; each problem's
accuracy is 0 or 1. For a tree search, the file `math_evaluate.py` reads is the
search's output, so the replay evaluates each problem's complete leaves (n = budget).

The rules, as `math_evaluate.py` and its grader behave (pipeline/tasks/reference_grader.py):
    answers       `extraction: reference`: `The answer is:(.+) ки` (the Llemma
                  policies' format), stripped, commas deleted; no match (no
                  "The answer is:", or no " ки" after it) gives "[invalid]".
                  `extraction: product`: this product's extract_answer (for a policy
                  that writes another format), "[invalid]" where it finds none.
    equality      grade_answer(a, b): the PRM800K grader with its sympy check off.
                  "[invalid]" equals "[invalid]", so unanswered samples form a class.
    majority      the samples in order; each is compared with every class founded so
                  far (its first sample's answer) and adds its weight to EVERY class it
                  matches (no break: a non-transitive match counts twice), or founds a
                  new class. The leader changes only when a class total becomes
                  strictly larger than the running maximum (which starts at 0), and the
                  leader is then the answer of the sample that made it so. The leader
                  is graded against the ground truth; with no leader, the string "None".
                  Ties: the class that reached the maximum first (A, B, B, A -> B).
    weighted      majority with weight = the sample's aggregated step score.
    best_of_n     the first sample whose aggregated score is strictly larger than every
                  earlier one (start -999.999); its answer is graded.
    aggregation   of a sample's step scores, in Python floats: min = min(1, scores),
                  mean = sum / len, prod, last; a sample without step scores gets 0.
    ground truth  `ground_truth: dataset`: the dataset's answer (what rebase.py stores).
                  `extracted`: what `hf_score.py` leaves on the sampling path, its
                  extract_answer applied to the stored answer once per batch of 4
                  samples (so ceil(n / 4) times): the last number of an unboxed MATH
                  answer; for GSM8K the full solution + "<|endoftext|>" as
                  sgl_baseline.py stores it, read to its last number. Sampling
                  strategies only: a tree search's output never goes through hf_score.py.
Answers are read from the generated text (the reference searches question + solution;
its prompt is the bare problem, which holds no "The answer is:").

Output, table `reference_replay` (REFERENCE rows): one row per dataset x model x problem
x strategy (reference_majority, reference_best_of_n, reference_weighted_majority,
reference_<search>_<rule>) x PRM x aggregation x n: accuracy (0/1), answer (the string
graded), protocol ("reference"), extraction, ground_truth, default_strategy (the default
protocol's strategy of the same point). The strategies are named apart and live in their
own table, so they never enter `replay`, the fronts, the held-out choices or the claims;
the view `reference_protocol` (VIEW_SQL) sets each point beside the default protocol's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence

import polars as pl

from pipeline.strategies.shared import budgets
from pipeline.tasks.answers import extract_answer
from pipeline.tasks.reference_grader import (
    INVALID,
    extract_final,
    grade_answer,
    shepherd_answer,
)

PROTOCOL = "reference"
AGGREGATIONS = ("min", "last", "prod", "mean")
DEFAULTS = {"protocol": "none", "extraction": "reference", "ground_truth": "dataset"}
CHOICES = {"protocol": ("none", PROTOCOL), "extraction": ("reference", "product"),
           "ground_truth": ("dataset", "extracted")}
# hf_score.py's batch (scripts/hf_scores.sh: --batch_size 4); it re-extracts the ground
# truth once per batch.
HF_SCORE_BATCH = 4
# sgl_baseline.py appends this to a GSM8K solution before it is stored as the truth.
GSM8K_EOS = "<|endoftext|>"
NO_SCORE_START = -999.999

REFERENCE = {
    "dataset": pl.String, "model": pl.String, "prm": pl.String, "aggregation": pl.String,
    "problem_id": pl.String, "strategy": pl.String, "n": pl.Int32, "accuracy": pl.Float64,
    "answer": pl.String, "protocol": pl.String, "extraction": pl.String,
    "ground_truth": pl.String, "default_strategy": pl.String,
}


def settings(section: dict | None) -> dict:
    """`analysis.compat` over DEFAULTS, checked (the schema checks it in a workflow run)."""
    out = {**DEFAULTS, **(section or {})}
    for key, value in out.items():
        if key not in CHOICES:
            raise ValueError(f"analysis.compat: unknown key {key!r}; known: {sorted(CHOICES)}")
        if value not in CHOICES[key]:
            raise ValueError(f"analysis.compat.{key}: {value!r} is not one of {list(CHOICES[key])}")
    return out


# --------------------------------------------------------------------------- the rules


def answer_of(text: str | None, extraction: str = "reference") -> str:
    """The answer string a sample votes with ("[invalid]" when there is none)."""
    if extraction == "reference":
        return shepherd_answer(text)
    found = extract_answer(text) if text is not None else None
    return INVALID if found is None else found


def aggregate(scores: Sequence[float] | None, how: str) -> float:
    """One score per sample, as math_evaluate.py's agg_* functions compute it."""
    if not scores:
        return 0.0 if how in AGGREGATIONS else _unknown(how)
    if how == "min":
        return min([1.0, *(s for s in scores if s is not None)])
    if how == "last":
        return 0.0 if scores[-1] is None else float(scores[-1])
    if how == "prod":
        out = 1.0
        for s in scores:
            out *= s
        return out
    if how == "mean":
        return sum(scores) / len(scores)
    return _unknown(how)


def _unknown(how: str) -> float:
    raise ValueError(f"reference: unknown aggregation {how!r}; choose from {AGGREGATIONS}")


def ground_truth(answer: str, *, mode: str, n: int, solution: str | None = None) -> str:
    """The truth a sampling strategy at budget n is graded against (module docstring)."""
    if mode == "dataset":
        return answer
    if mode != "extracted":
        raise ValueError(f"reference: unknown ground_truth mode {mode!r}")
    truth = answer if solution is None else solution + GSM8K_EOS
    for _ in range(max(1, math.ceil(n / HF_SCORE_BATCH))):
        nxt = extract_final(truth)
        if nxt == truth:
            break
        truth = nxt
    return truth


def class_matches(answers: Sequence[str], same: Callable[[str, str], bool] = grade_answer) -> list[list[int]]:
    """Per sample, in order: the classes it adds its weight to. A sample that matches no
    earlier class founds one (its list is [that class]); one that matches several adds
    to all of them, as the reference's loop (which does not stop at a match) does."""
    reps: list[str] = []
    out = []
    for a in answers:
        hit = [i for i, rep in enumerate(reps) if same(a, rep)]
        if not hit:
            hit = [len(reps)]
            reps.append(a)
        out.append(hit)
    return out


def leaders(answers: Sequence[str], weights: Sequence[float] | None, ns: Sequence[int],
            matches: list[list[int]] | None = None) -> dict[int, str | None]:
    """The majority (weights None) or weighted-majority winner over the first n samples,
    for every n in ns: the reference's running maximum read after the n-th sample."""
    matches = class_matches(answers) if matches is None else matches
    want = set(ns)
    totals: list[float] = []
    best, leader = 0.0, None
    out: dict[int, str | None] = {}
    for i, (a, hit) in enumerate(zip(answers, matches)):
        w = 1 if weights is None else weights[i]
        for c in hit:
            if c == len(totals):
                totals.append(w)
            else:
                totals[c] = totals[c] + w
            if totals[c] > best:
                best, leader = totals[c], a
        if i + 1 in want:
            out[i + 1] = leader
    return out


def best_picks(answers: Sequence[str], scores: Sequence[float], ns: Sequence[int]) -> dict[int, str]:
    """Best-of-n over the first n samples, for every n in ns: the answer of the first
    sample with the strictly largest score."""
    want = set(ns)
    best, pick = NO_SCORE_START, INVALID  # no sample: the reference extracts from None
    out = {}
    for i, (a, s) in enumerate(zip(answers, scores)):
        if s > best:
            best, pick = s, a
        if i + 1 in want:
            out[i + 1] = pick
    return out


def grade_leader(leader: str | None, truth: str) -> bool:
    return grade_answer(str(leader), truth)  # str(None) == "None", as the reference grades it


# --------------------------------------------------------------------------- one problem


def sampling_rows(answers: Sequence[str], step_scores: dict[str, Sequence[Sequence[float] | None]],
                  truth: Callable[[int], str], ns: Sequence[int],
                  aggregations: Sequence[str] = AGGREGATIONS) -> list[tuple]:
    """(strategy, prm, aggregation, n, accuracy, answer) of one problem's cached samples
    (in sample order): majority, and per PRM (step_scores: prm -> per-sample step
    scores) and aggregation best-of-n and weighted majority, over the first n of them."""
    matches = class_matches(answers)
    rows = []
    for n, lead in leaders(answers, None, ns, matches).items():
        rows.append(("reference_majority", None, None, n, float(grade_leader(lead, truth(n))), str(lead)))
    for prm in sorted(step_scores):
        for how in aggregations:
            w = [aggregate(s, how) for s in step_scores[prm]]
            for n, lead in leaders(answers, w, ns, matches).items():
                rows.append(("reference_weighted_majority", prm, how, n,
                             float(grade_leader(lead, truth(n))), str(lead)))
            for n, pick in best_picks(answers, w, ns).items():
                rows.append(("reference_best_of_n", prm, how, n, float(grade_answer(pick, truth(n))), pick))
    return rows


def leaf_rows(answers: Sequence[str], step_scores: Sequence[Sequence[float] | None], truth: str,
              search: str, budget: int, aggregations: Sequence[str] = AGGREGATIONS) -> list[tuple]:
    """(strategy, aggregation, accuracy, answer, default_strategy) of one problem's tree
    search: math_evaluate.py over the complete leaves, in the order the search completed them."""
    size = len(answers)
    matches = class_matches(answers)
    lead = leaders(answers, None, [size], matches).get(size)
    rows = [(f"reference_{search}_majority", None, float(grade_leader(lead, truth)), str(lead),
             f"{search}_majority")]
    for how in aggregations:
        w = [aggregate(s, how) for s in step_scores]
        lead = leaders(answers, w, [size], matches).get(size)
        rows.append((f"reference_{search}_weighted_majority", how, float(grade_leader(lead, truth)), str(lead),
                     f"{search}_weighted_majority"))
        pick = best_picks(answers, w, [size]).get(size, INVALID)
        rows.append((f"reference_{search}_best_of_n", how, float(grade_answer(pick, truth)), pick,
                     f"{search}_best_of_n"))
    return rows


# --------------------------------------------------------------------------- from the caches


def _truths(problems: pl.DataFrame, source: str | None) -> dict[str, tuple[str, str | None]]:
    """problem_id -> (answer, the GSM8K solution sgl_baseline.py would store, or None)."""
    out = {}
    for pid, answer, meta in problems.select("problem_id", "answer", "metadata").iter_rows():
        solution = None
        if source == "gsm8k" and meta:
            solution = json.loads(meta).get("solution")
        out[pid] = (answer, solution)
    return out


def _per_problem(frame: pl.DataFrame, column: str, what: str) -> dict[str, list]:
    """problem_id -> the column's values in sample order; every problem the same count."""
    out: dict[str, list] = {}
    for pid, vals in frame.sort("problem_id", "sample_idx").group_by("problem_id", maintain_order=True).agg(
            pl.col(column)).iter_rows():
        out[pid] = vals
    counts = {len(v) for v in out.values()}
    if len(counts) > 1:
        pid = min(out, key=lambda p: len(out[p]))
        raise ValueError(f"reference: {what}: problem {pid!r} has {len(out[pid])} samples, others {max(counts)}")
    return out


def _sampling_table(cache: dict, problems: pl.DataFrame, scores: dict[str, list[str]], source: str | None,
                    cfg: dict) -> pl.DataFrame:
    texts = pl.concat([pl.read_parquet(f, columns=["problem_id", "sample_idx", "text"]) for f in cache["shards"]])
    what = f"cache {cache['dataset']}/{cache['model']}/{cache['key']}"
    text_of = _per_problem(texts, "text", what)
    step_of = {}
    for prm, files in scores.items():
        sc = pl.concat([pl.read_parquet(f, columns=["problem_id", "sample_idx", "scores"]) for f in files])
        step_of[prm] = _per_problem(sc, "scores", f"{what} scores of {prm}")
        missing = set(text_of) ^ set(step_of[prm])
        if missing:
            raise ValueError(f"reference: {what}: PRM {prm} scores cover other problems than the samples, "
                             f"e.g. {sorted(missing)[:3]}")
    truths = _truths(problems, source)
    rows = []
    for pid, texts_p in text_of.items():
        if pid not in truths:
            raise ValueError(f"reference: {what}: problem {pid!r} is not in the dataset's problems")
        answer, solution = truths[pid]
        ns = budgets(len(texts_p))
        answers = [answer_of(t, cfg["extraction"]) for t in texts_p]
        truth = (lambda n, a=answer, s=solution: ground_truth(a, mode=cfg["ground_truth"], n=n, solution=s))
        for strategy, prm, how, n, acc, chosen in sampling_rows(
                answers, {p: step_of[p][pid] for p in step_of}, truth, ns):
            rows.append((prm, how, pid, strategy, n, acc, chosen, strategy.removeprefix("reference_")))
    return _frame(rows, cache["dataset"], cache["model"], cfg)


def _search_table(entry: dict, problems: pl.DataFrame, cfg: dict) -> pl.DataFrame:
    results = pl.concat([pl.read_parquet(f, columns=["problem_id"]) for f in entry["files"]])
    leaves = pl.concat([pl.read_parquet(f.removesuffix(".parquet") + ".leaves.parquet",
                                        columns=["problem_id", "leaf", "text", "scores"])
                        for f in entry["files"]]).sort("problem_id", "leaf")
    by_problem = {pid: (t, s) for pid, t, s in
                  leaves.group_by("problem_id", maintain_order=True).agg("text", "scores").iter_rows()}
    truths = _truths(problems, None)
    rows = []
    for pid in results["problem_id"].unique(maintain_order=True).to_list():
        texts, scores = by_problem.get(pid, ([], []))
        answers = [answer_of(t, cfg["extraction"]) for t in texts]
        for strategy, how, acc, chosen, default in leaf_rows(answers, scores, truths[pid][0],
                                                             entry["search"], int(entry["budget"])):
            rows.append((entry["prm"], how, pid, strategy, int(entry["budget"]), acc, chosen, default))
    return _frame(rows, entry["dataset"], entry["model"], cfg)


def _frame(rows: list[tuple], dataset: str, model: str, cfg: dict) -> pl.DataFrame:
    cols = ["prm", "aggregation", "problem_id", "strategy", "n", "accuracy", "answer", "default_strategy"]
    df = pl.DataFrame(rows, schema={c: REFERENCE[c] for c in cols}, orient="row")
    return df.with_columns(dataset=pl.lit(dataset), model=pl.lit(model), protocol=pl.lit(PROTOCOL),
                           extraction=pl.lit(cfg["extraction"]), ground_truth=pl.lit(cfg["ground_truth"])
                           ).select([pl.col(c).cast(t) for c, t in REFERENCE.items()])


def database_table(manifest: dict, config: dict | None) -> pl.DataFrame | None:
    """The `reference_replay` table from the aggregate job's manifest (its sampled
    caches, their PRM scores, the tree searches' leaves) when the config's
    `analysis.compat.protocol` is "reference"; None otherwise."""
    cfg = settings(((config or {}).get("analysis") or {}).get("compat"))
    if cfg["protocol"] != PROTOCOL:
        return None
    datasets = (config or {}).get("datasets") or {}
    problems = {d: pl.read_parquet(p) for d, p in manifest["problems"].items()}
    parts = []
    for cache in manifest["caches"]:
        if cache["kind"] != "sampled":
            continue
        scores = {s["prm"]: s["files"] for s in manifest.get("scores", [])
                  if (s["dataset"], s["model"], s["key"]) == (cache["dataset"], cache["model"], cache["key"])}
        source = (datasets.get(cache["dataset"]) or {}).get("source")
        parts.append(_sampling_table(cache, problems[cache["dataset"]], scores, source, cfg))
    for entry in manifest.get("search", []):
        parts.append(_search_table(entry, problems[entry["dataset"]], cfg))
    if not parts:
        return pl.DataFrame(schema=REFERENCE)
    return pl.concat(parts).sort("dataset", "model", "strategy", "prm", "aggregation", "n", "problem_id",
                                 nulls_last=False)


# The reference protocol's points beside the default protocol's same points (a view over
# the table and the default's `accuracy_vs_flops`; created by pipeline.aggregate when the
# table exists). accuracy_se: standard error across problems, as accuracy_vs_flops.
VIEW_SQL = """
CREATE VIEW reference_protocol AS
WITH r AS (
    SELECT dataset, model, prm, strategy, aggregation, n, any_value(default_strategy) AS default_strategy,
           any_value(protocol) AS protocol, any_value(extraction) AS extraction,
           any_value(ground_truth) AS ground_truth, avg(accuracy) AS accuracy,
           CASE WHEN count(*) > 1 THEN stddev_samp(accuracy) / sqrt(count(*)) ELSE 0 END AS accuracy_se,
           count(*) AS num_problems
    FROM reference_replay
    GROUP BY dataset, model, prm, strategy, aggregation, n
)
SELECT r.dataset, point_label(r.model, r.prm, r.strategy, r.aggregation, r.n) AS point,
       r.model, r.prm, r.strategy, r.aggregation, r.n, r.protocol, r.extraction, r.ground_truth,
       r.accuracy, r.accuracy_se, r.num_problems,
       point_label(r.model, r.prm, r.default_strategy, r.aggregation, r.n) AS default_point,
       d.accuracy AS default_accuracy, d.accuracy_se AS default_accuracy_se,
       d.flops_paper, d.flops_full
FROM r LEFT JOIN accuracy_vs_flops d
  ON d.dataset = r.dataset AND d.model = r.model AND d.prm IS NOT DISTINCT FROM r.prm
 AND d.strategy = r.default_strategy AND d.aggregation IS NOT DISTINCT FROM r.aggregation AND d.n = r.n
ORDER BY r.dataset, r.model, r.prm NULLS FIRST, r.strategy, r.aggregation NULLS FIRST, r.n
"""


def create_view(con) -> None:
    """The view `reference_protocol`, on a database with `reference_replay` and the views."""
    con.execute(VIEW_SQL)
