"""The reference protocol (`analysis.compat`, pipeline/strategies/reference.py): the
paper's math_evaluate.py transcribed here from its behaviour and fed the same samples,
the grader pinned to outputs of the paper's own grader, the default protocol beside it
on the cases of issue 24, and the tables it writes kept apart from the default ones."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import duckdb
import polars as pl
import pytest
from conftest import TINY, copy_run, dry_run, open_db, planned_jobs, snakemake

from pipeline import aggregate
from pipeline.strategies import reference, voting
from pipeline.strategies.selection import replay_prm, weighted_majority_accuracy
from pipeline.strategies.shared import budgets
from pipeline.tasks.answers import grade
from pipeline.tasks.reference_grader import extract_final, grade_answer, shepherd_answer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# (given, truth, what the paper's grader says): each verdict was produced by running
# evaluate/evaluate_utils/grader.py of thu-wyz/inference_scaling on the pair.
GRADER_CASES = [
    ("[invalid]", "[invalid]", True), ("[invalid]", "5", False), ("None", "\\text{None}", True),
    ("5", "5", True), ("5.0", "5", True), ("5", "5.0", True), ("10\\%", "10", True), ("10", "10\\%", True),
    ("10\\%", "0.1", False), ("0.1", "10\\%", False), ("0.5", "\\frac{1}{2}", True), ("\\frac{1}{2}", "0.5", True),
    ("1/2", "\\frac12", True), ("\\dfrac{3}{4}", "\\frac{3}{4}", True), ("0.75", "\\frac{3}{4}", False),
    ("\\frac{14}{3}", "3", False), ("3", "\\frac{14}{3}", False), ("4.666667", "\\frac{14}{3}", False),
    ("(12)", "(1,2)", False), ("(1,2)", "(1,2)", True), ("(1, 2)", "(1,2)", True), ("[1,2]", "(1,2)", False),
    ("1 -2", "1,-2", False), ("1000", "1,000", True), ("1,000", "1000", True), ("\\text{Evelyn}", "Evelyn", True),
    ("evelyn", "\\text{Evelyn}", True), ("", "\\text{Evelyn}", False), ("5 \\text{ cm}", "5", True),
    ("5 cm", "5", True), ("90^\\circ", "90", True), ("x = 5", "5", True), ("k=5", "5", True), ("\\$5", "5", True),
    ("5 dollars", "5", False), ("2\\sqrt{2}", "\\sqrt{8}", False), ("\\sqrt{51}", "51", False), ("\\pi", "3.14", False),
    ("1/3", "0.333", False), ("2.99999999", "3", True), ("7 3/4", "7\\frac{3}{4}", True), ("C", "\\text{(C)}", False),
    ("(C)", "\\text{(C)}", True), ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("\\frac", "1", False), ("2 million", "2000000", False), ("1 and 2", "1, 2", True), ("-3/4", "-\\frac{3}{4}", True),
]

# (stored truth, what hf_score.py's extract_answer makes of it), from the original too.
TRUTH_CASES = [
    ("\\frac{14}{3}", "3"), ("\\sqrt{51}", "51"), ("\\text{Evelyn}", ""), ("18", "18"), ("1,000", "1000"),
    ("\\boxed{5}", "5"), ("The answer is 7.", "7"), ("(3, \\frac{\\pi}{2})", "2"), ("3.50", "3.50"), (".5", "0.5"),
    ("x^2+1", "1"), ("10\\%", "10"), ("\\frac{1}{2}\\text{ cm}", "2"),
    ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18 every day.\n"
     "#### 18<|endoftext|>", "18"),
]


@pytest.mark.parametrize("given, truth, same", GRADER_CASES, ids=[f"{g} vs {t}" for g, t, _ in GRADER_CASES])
def test_grader_says_what_the_papers_grader_says(given: str, truth: str, same: bool) -> None:
    assert grade_answer(given, truth) is same


@pytest.mark.parametrize("truth, extracted", TRUTH_CASES)
def test_ground_truth_extraction_as_hf_score(truth: str, extracted: str) -> None:
    assert extract_final(truth) == extracted


def test_shepherd_extraction() -> None:
    assert shepherd_answer("Step 1: 2 + 3 = 5 ки\nThe answer is: 5 ки") == "5"
    assert shepherd_answer("The answer is: 1,000 ки") == "1000"  # commas deleted
    assert shepherd_answer("The answer is: (1, -2) ки") == "(1 -2)"
    assert shepherd_answer("The answer is: 5") == "[invalid]"  # no tag after it
    assert shepherd_answer("The answer is 5 ки") == "[invalid]"  # no colon
    assert shepherd_answer("") == shepherd_answer(None) == "[invalid]"
    assert reference.answer_of("The answer is 5.", "product") == "5"
    assert reference.answer_of("no answer", "product") == "[invalid]"


def test_math500_truths_mangled_on_the_sampling_path() -> None:
    path = DATA / "math500_test.jsonl"
    if not path.exists():
        pytest.skip(f"real data {path} not present (shared/data is outside the project)")
    answers = [json.loads(line)["answer"] for line in path.read_text().splitlines()]
    # a prediction equal to the dataset's answer, graded against what hf_score.py leaves
    wrong = [a for a in answers if not grade_answer(a, reference.ground_truth(a, mode="extracted", n=16))]
    assert len(answers) == 500 and len(wrong) == 163
    assert all(grade_answer(a, reference.ground_truth(a, mode="dataset", n=16)) for a in answers)


# --------------------------------------------------------------------------- math_evaluate.py, transcribed
# Written from what the script does (thu-wyz/inference_scaling, math_evaluate.py, run by
# scripts/evaluate.sh with --model_type llemma): `data` is its answers.json, a list of
# {"model_answer": [{"text", "step_scores"}], "ground_truth_answer"}.

TAG_LINE = re.compile("The answer is:(.+) \u043a\u0438")


def ref_extract(completion):
    if completion is None:
        return "[invalid]"
    found = TAG_LINE.search(completion)
    if found is None:
        return "[invalid]"
    return found.group(1).strip().replace(",", "")


def ref_score(how, steps):
    if steps == []:
        return 0
    if how == "min":
        low = 1
        for s in steps:
            if s is not None and s < low:
                low = s
        return low
    if how == "mean":
        return sum(steps) / len(steps)
    if how == "prod":
        p = 1.0
        for s in steps:
            p *= s
        return p
    return 0 if steps[-1] is None else steps[-1]


def ref_best_of(data, how):
    hits = 0
    for q in data:
        top, text = -999.999, None
        for cand in q["model_answer"]:
            if ref_score(how, cand["step_scores"]) > top:
                text, top = cand["text"], ref_score(how, cand["step_scores"])
        hits += grade_answer(ref_extract(text), q["ground_truth_answer"])
    return hits / len(data)


def ref_vote(data, weighted, how):
    hits = 0
    for q in data:
        top, winner, reps, totals = 0, None, [], []
        for cand in q["model_answer"]:
            ans = ref_extract(cand["text"])
            w = ref_score(how, cand["step_scores"]) if weighted else 1
            seen = False
            for i, rep in enumerate(reps):
                if grade_answer(ans, rep):
                    seen = True
                    totals[i] = totals[i] + w
                    if totals[i] > top:
                        top, winner = totals[i], ans
            if seen:
                continue
            reps.append(ans)
            totals.append(w)
            if w > top:
                top, winner = w, ans
        hits += grade_answer(str(winner), q["ground_truth_answer"])
    return hits / len(data)


def hf_score_truth(stored, num):
    """hf_score.py's loop: the truth re-extracted once per batch of 4 samples."""
    for _ in range(0, num, 4):
        stored = extract_final(stored)
    return stored


# A small set with everything that separates the protocols: unanswered and untagged
# samples, ties, commas, MATH answers the truth extraction mangles, empty step scores.
TRUTHS = ["5", "\\frac{14}{3}", "(1,2)", "1,000", "\\text{Evelyn}", "10\\%", "7"]
POOL = {
    "5": ["5", "5.0", "6", "x = 5"], "\\frac{14}{3}": ["\\frac{14}{3}", "14/3", "4.67", "3"],
    "(1,2)": ["(1,2)", "(2,1)", "(1, 2)"], "1,000": ["1,000", "1000", "999"],
    "\\text{Evelyn}": ["Evelyn", "\\text{Evelyn}", "Bob"], "10\\%": ["10", "10\\%", "0.1"], "7": ["7", "8"],
}


def toy_samples(seed: int = 0, num: int = 8) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    rng = random.Random(seed)
    problems, samples, scores = [], [], []
    for i, truth in enumerate(TRUTHS):
        pid = f"p{i}"
        problems.append((pid, f"question {i}", truth, "{}"))
        for j in range(num):
            kind = rng.random()
            ans = rng.choice(POOL[truth])
            if kind < 0.2:
                text = "Step 1: let me think ки\nStep 2: still thinking ки"
            elif kind < 0.3:
                text = f"Step 1: so ки\nThe answer is: {ans}"  # no tag: "[invalid]" for the reference
            else:
                text = f"Step 1: so ки\nThe answer is: {ans} ки"
            steps = [] if kind > 0.95 else [rng.choice([0.25, 0.5, 0.75, rng.random()]) for _ in range(rng.randint(1, 3))]
            samples.append((pid, j, text, 10 + j, 3))
            scores.append((pid, j, steps, 13 + j, 1000))
    return (pl.DataFrame(problems, schema=["problem_id", "question", "answer", "metadata"], orient="row"),
            pl.DataFrame(samples, schema={"problem_id": pl.String, "sample_idx": pl.Int32, "text": pl.String,
                                          "output_tokens": pl.Int32, "prompt_tokens": pl.Int32}, orient="row"),
            pl.DataFrame(scores, schema={"problem_id": pl.String, "sample_idx": pl.Int32,
                                         "scores": pl.List(pl.Float64), "prm_tokens": pl.Int32,
                                         "prm_params": pl.Int64}, orient="row"))


def write_toy_run(tmp_path: Path, seed: int = 0) -> dict:
    """The toy set as the aggregate job sees a run: problems, one shard, one PRM's scores."""
    problems, samples, scores = toy_samples(seed)
    for name, df in (("problems", problems), ("shard", samples), ("scores", scores)):
        df.write_parquet(tmp_path / f"{name}.parquet")
    return {"problems": {"toy": str(tmp_path / "problems.parquet")},
            "caches": [{"dataset": "toy", "model": "m", "kind": "sampled", "key": "k",
                        "shards": [str(tmp_path / "shard.parquet")]}],
            "scores": [{"dataset": "toy", "model": "m", "key": "k", "prm": "prm",
                        "files": [str(tmp_path / "scores.parquet")]}]}


def transcribed(problems, samples, scores, *, truth_mode):
    """Per (strategy, aggregation, n): the transcription's accuracy on the first n samples."""
    merged = samples.join(scores, on=["problem_id", "sample_idx"]).sort("problem_id", "sample_idx")
    truth = dict(zip(problems["problem_id"], problems["answer"]))
    out = {}
    for n in budgets(8):
        data = [{"model_answer": [{"text": t, "step_scores": s} for t, s in zip(g["text"].to_list(), g["scores"].to_list())][:n],
                 "ground_truth_answer": truth[pid] if truth_mode == "dataset" else hf_score_truth(truth[pid], n)}
                for (pid,), g in merged.group_by("problem_id", maintain_order=True)]
        out[("reference_majority", None, n)] = ref_vote(data, False, None)
        for how in reference.AGGREGATIONS:
            out[("reference_weighted_majority", how, n)] = ref_vote(data, True, how)
            out[("reference_best_of_n", how, n)] = ref_best_of(data, how)
    return out


@pytest.mark.parametrize("seed, truth_mode", [(0, "dataset"), (1, "extracted"), (2, "dataset")])
def test_same_accuracies_as_the_transcribed_script(tmp_path, seed, truth_mode) -> None:
    manifest = write_toy_run(tmp_path, seed)
    table = reference.database_table(
        manifest, {"analysis": {"compat": {"protocol": "reference", "ground_truth": truth_mode}},
                   "datasets": {"toy": {"source": "math500"}}})
    ours = {(s, a, n): acc for s, a, n, acc in table.group_by("strategy", "aggregation", "n")
            .agg(pl.col("accuracy").mean()).iter_rows()}
    problems, samples, scores = toy_samples(seed)
    theirs = transcribed(problems, samples, scores, truth_mode=truth_mode)
    assert ours == theirs  # identical floats: the same counts over the same 7 problems
    assert len(ours) == 9 * len(budgets(8))
    assert set(table["protocol"]) == {"reference"} and set(table["ground_truth"]) == {truth_mode}
    assert (table["default_strategy"] == table["strategy"].str.strip_prefix("reference_")).all()


# --------------------------------------------------------------------------- side by side (issue 24)


def test_unanswered_vote_in_the_reference_not_in_the_default() -> None:
    # 3 samples without an answer, 2 answering "5" (correct)
    texts = ["Step 1: hmm ки"] * 3 + ["Step 1: so ки\nThe answer is: 5 ки"] * 2
    problems = pl.DataFrame({"problem_id": ["p"], "question": ["q"], "answer": ["5"], "metadata": ["{}"]})
    samples = pl.DataFrame({"problem_id": ["p"] * 5, "sample_idx": pl.Series(range(5), dtype=pl.Int32),
                            "text": texts})
    g = grade(samples, problems)
    weights = [0.5] * 5
    default_majority = voting.majority_accuracy([2], 0, 3, 5)
    default_weighted, _ = weighted_majority_accuracy(weights, g["answer_class"].to_list(), [True], 5)
    answers = [reference.answer_of(t) for t in texts]
    rows = {(s, a): acc for s, _, a, n, acc, _ in reference.sampling_rows(
        answers, {"prm": [[w] for w in weights]}, lambda n: "5", [5])}
    assert (default_majority, default_weighted) == (1.0, 1.0)
    assert rows[("reference_majority", None)] == 0.0  # "[invalid]" has 3 votes and wins
    assert rows[("reference_weighted_majority", "last")] == 0.0  # 1.5 against 1.0
    assert rows[("reference_best_of_n", "last")] == 0.0  # all tied: the first sample, unanswered


def test_tie_goes_to_the_class_that_reached_the_maximum_first() -> None:
    answers = ["3", "7", "7", "3"]  # A, B, B, A: B reaches 2 first
    assert reference.leaders(answers, None, [4]) == {4: "7"}
    for truth, reference_acc in (("3", 0.0), ("7", 1.0)):
        rows = reference.sampling_rows(answers, {}, lambda n, t=truth: t, [4])
        assert rows == [("reference_majority", None, None, 4, reference_acc, "7")]
        # default: a 2-2 tie is broken uniformly at random, so either answer wins half the time
        assert voting.majority_accuracy([2, 2], 0, 0, 4) == 0.5


def test_leaders_of_every_prefix_and_non_transitive_matches() -> None:
    # "10\%" matches "10" in the reference's grader; "10" founds the class, "10\%" joins it
    assert reference.class_matches(["10", "10\\%", "0.1"]) == [[0], [0], [1]]
    # "10" matches both "10%" and "x=10", which do not match each other: its vote counts
    # for both classes (the reference's loop does not stop at the first match)
    assert reference.class_matches(["10%", "x=10", "10"]) == [[0], [1], [0, 1]]
    assert reference.leaders(["10%", "x=10", "10"], [0.25, 0.5, 0.5], [2, 3]) == {2: "x=10", 3: "10"}
    assert reference.leaders(["a", "b", "b", "c", "c", "c"], None, [1, 2, 3, 6]) == {1: "a", 2: "a", 3: "b", 6: "c"}
    # no weight above 0: no leader, graded as the string "None"
    assert reference.leaders(["a", "b"], [0.0, 0.0], [2]) == {2: None}
    assert reference.best_picks(["a", "b", "c"], [0.5, 0.9, 0.9], [1, 3]) == {1: "a", 3: "b"}
    assert reference.aggregate([], "last") == reference.aggregate([], "min") == 0.0
    assert reference.aggregate([1.0, 1.0], "min") == 1.0 and reference.aggregate([0.5, 0.25], "prod") == 0.125
    assert reference.ground_truth("\\frac{14}{3}", mode="extracted", n=1) == "3"
    assert reference.ground_truth("4", mode="extracted", n=1, solution="2 + 2 = 4\n#### 4") == "4"


def test_settings_are_checked() -> None:
    assert reference.settings(None) == reference.DEFAULTS
    with pytest.raises(ValueError, match="analysis.compat.protocol"):
        reference.settings({"protocol": "paper"})
    with pytest.raises(ValueError, match="unknown key 'grader'"):
        reference.settings({"grader": "x"})
    assert reference.database_table({}, {"analysis": {}}) is None  # off by default


# --------------------------------------------------------------------------- in the database


def test_reference_rows_stay_out_of_the_default_tables(tmp_path) -> None:
    manifest = write_toy_run(tmp_path)
    problems, samples, scores = toy_samples(0)
    grades = grade(samples, problems)
    tokens = samples.select("problem_id", "sample_idx", "prompt_tokens", "output_tokens", source=pl.lit("sampled"))
    tags = {"dataset": pl.lit("toy"), "model": pl.lit("m")}
    parts = [voting.replay(grades, None, tokens, params=100).with_columns(**tags),
             replay_prm(grades, scores.select("problem_id", "sample_idx", "scores").with_columns(
                 pl.when(pl.col("scores").list.len() == 0).then([0.0]).otherwise("scores").alias("scores")),
                 tokens, params=100, prm="prm", prm_params=1000, prm_tokens=None).with_columns(**tags)]
    ref = reference.database_table(manifest, {"analysis": {"compat": {"protocol": "reference"}}})
    db = tmp_path / "r.duckdb"
    aggregate.write_duckdb({"replay": aggregate._replay_table(parts), "reference_replay": ref}, db)
    with duckdb.connect(str(db), read_only=True) as con:
        for view in ("replay", "points", "pareto", "claims"):
            col = "subject" if view == "claims" else "strategy"
            hit = con.execute(f"SELECT count(*) FROM {view} WHERE {col} LIKE '%reference%'").fetchall()[0][0]
            assert hit == 0, view
        rows = con.execute("SELECT point, accuracy, default_point, default_accuracy FROM reference_protocol "
                           "WHERE strategy = 'reference_majority' ORDER BY n").fetchall()
    assert [r[0] for r in rows] == [f"m/reference_majority@{n}" for n in budgets(8)]
    assert [r[2] for r in rows] == [f"m/majority@{n}" for n in budgets(8)]
    assert all(r[3] is not None for r in rows)
    # at n = 1 both protocols grade one sample; the default averages over all 8 of them
    first = ref.filter(pl.col("strategy") == "reference_majority", pl.col("n") == 1)
    assert rows[0][1] == pytest.approx(first["accuracy"].mean())


# --------------------------------------------------------------------------- the real workflow


@pytest.mark.integration
def test_compat_setting_reruns_only_the_aggregation(baseline, tmp_path_factory) -> None:
    run = copy_run(baseline, tmp_path_factory.mktemp("compat"))
    config = {**TINY, "analysis": {"compat": {"protocol": "reference", "extraction": "product"}}}
    planned = {rule for rule, _ in planned_jobs(dry_run(run, config).stdout)}
    assert planned == {"aggregate", "all"}  # no sample, score or search job: the same caches
    snakemake(run, config)
    with open_db(run) as con:
        table = pl.from_arrow(con.sql("SELECT * FROM reference_replay").to_arrow_table())
        grades = pl.from_arrow(con.sql("SELECT problem_id, answer AS ours, correct FROM grades "
                                       "WHERE kind = 'sampled' AND sample_idx = 0").to_arrow_table())
        view = con.execute("SELECT count(*), count(default_accuracy) FROM reference_protocol").fetchall()[0]
        leaked = con.execute("SELECT count(*) FROM points WHERE strategy LIKE 'reference%'").fetchall()[0][0]
    assert leaked == 0 and view[0] == view[1] > 0
    assert {"reference_majority", "reference_rebase_majority", "reference_mcts_best_of_n"} <= set(table["strategy"])
    # at n = 1 the reference evaluates sample 0 alone: where it reads the answer this
    # product reads (a plain integer on arith), both graders agree
    first = table.filter(pl.col("strategy") == "reference_majority", pl.col("n") == 1).join(grades, on="problem_id")
    assert first.height == 6
    alike = first.filter(pl.col("answer") == pl.col("ours"))
    assert alike.height > 0 and alike["accuracy"].to_list() == alike["correct"].cast(pl.Float64).to_list()


# --------------------------------------------------------------------------- REBASE's width split


def float32_split(scores, width, temperature=0.2):
    """rebase.py's select_softmax, transcribed: nodes by score, descending (sorted
    ascending, then reversed: of equal scores the last comes first), each takes
    ceil(width_left * w / mass_left) in float32, no cap."""
    import numpy as np

    order = sorted(range(len(scores)), key=lambda i: scores[i])[::-1]
    w = np.exp(np.asarray([scores[i] for i in order], dtype=np.float32) / np.float32(temperature))
    mass, out = w.sum(dtype=np.float32), [0] * len(scores)
    for i, x in zip(order, w):
        out[i] = int(math.ceil(np.float32(width) * x / mass))
        width, mass = width - out[i], np.float32(mass - x)
    return out


def test_rebase_split_over_allocates_in_float32_not_here() -> None:
    from pipeline.treesearch.tree import allocate

    assert float32_split([0.941, 0.691, 0.967], 16) == [7, 2, 8]  # 17 children for width 16
    assert allocate([0.941, 0.691, 0.967], 16, 0.2) == [7, 1, 8]
    assert float32_split([0.5, 0.5], 3) == [1, 2] and allocate([0.5, 0.5], 3, 0.2) == [2, 1]  # ties
    rng = random.Random(0)
    over = 0
    for _ in range(20000):
        num, width = rng.randint(2, 8), rng.choice([2, 4, 8, 16, 32, 64, 128, 256])
        scores = [rng.random() for _ in range(num)]
        over += sum(float32_split(scores, width)) > width
        assert sum(allocate(scores, width, 0.2)) == width
    print(f"float32 split: more children than the width in {over} of 20000 random splits")
    assert over == 3276
