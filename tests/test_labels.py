"""Step labels: the arithmetic checker (pipeline/tasks/arith_check.py) on hand-written solutions,
the rollout labeller (pipeline/rollouts.py) on a scripted generator, the supervision
setting (pipeline/prm/labels.py) and how the workflow plans the rollouts."""

from __future__ import annotations

import copy
import json

import polars as pl
import pytest
from conftest import TINY, dry_run, planned_jobs

from pipeline import rollouts
from pipeline.prm import labels
from pipeline.rollouts import Completion
from pipeline.tasks import arith_check
from pipeline.tasks.arith_check import parse_step, step_labels
from pipeline.workflow import plan

# --------------------------------------------------------------------------- arith-check

BEADS = ("Noah owns 3 strings of beads. Each string holds 6 beads. Then Noah trades away 9 beads. "
         "How many beads does Noah have now?", "3 * 6 - 9", "9")
BALLOONS = ("Ivy starts the day with 18 balloons. Ivy gives 2 balloons to Sam. She buys 17 more balloons. "
            "How many balloons does Ivy have in the end?", "18 - 2 + 17", "33")
COOKIES = ("Ben has 5 cookies. He loses 3 cookies. How many cookies does Ben have in the end?", "5 - 3", "2")


def check(problem, *steps):
    return step_labels(*problem, list(steps))


def test_a_right_solution_is_good_throughout():
    assert check(BEADS, "Noah has 3 strings of 6 beads.", "He has 3 * 6 = 18 beads.",
                 "After trading away 9, he has 18 - 9 = 9 beads.", "The answer is 9.") == [1, 1, 1, 1]
    # any order of adding and taking away the terms is right
    assert check(BALLOONS, "18 + 17 = 35", "35 - 2 = 33", "The answer is 33.") == [1, 1, 1]
    assert check(BALLOONS, "17 - 2 = 15", "18 + 15 = 33", "The answer is 33.") == [1, 1, 1]
    # everything in one equation, and a bare right answer (no step to get it wrong)
    assert check(BEADS, "He has 3 * 6 - 9 = 9 beads.", "The answer is 9.") == [1, 1]
    assert check(BEADS, "The answer is 9.") == [1]


def test_a_wrong_intermediate_result_is_bad_and_so_is_everything_after():
    assert check(BEADS, "Noah has 3 strings.", "He has 3 * 6 = 24 beads.", "24 - 9 = 15.",
                 "The answer is 15.") == [1, 0, 0, 0]
    # the first step is right, the second miscounts, the later right arithmetic cannot repair it
    assert check(BALLOONS, "18 - 2 = 16", "16 + 17 = 34", "34 - 1 = 33", "The answer is 33.") == [1, 0, 0, 0]


def test_a_wrong_final_answer_is_bad():
    assert check(BEADS, "He has 3 * 6 = 18 beads.", "The answer is 18.") == [1, 0]
    assert check(COOKIES, "5 - 3 = 2", "The answer is two cookies and more.") == [1, 0]


def test_right_answers_for_the_wrong_reason_are_bad():
    # right arithmetic on the problem's numbers, but not what the problem computes:
    # the sum of the two factors happens to equal the answer
    assert check(BEADS, "He has 3 + 6 = 9 beads.", "The answer is 9.") == [0, 0]
    # the wrong operation, then a made-up number to land on the answer
    assert check(COOKIES, "Ben has 5 + 3 = 8 cookies.", "8 - 6 = 2.", "The answer is 2.") == [0, 0, 0]
    # a quantity from nowhere (the problem has no 4), right arithmetic, right answer
    assert check(COOKIES, "Ben has 4 cookies.", "4 - 2 = 2.", "The answer is 2.") == [0, 0, 0]
    # taking away the wrong amount: 9 - 9 = 0 when the problem adds 9 to 9
    plus = ("David has 9 marbles. He buys 9 more marbles. How many marbles does David have now?", "9 + 9", "18")
    assert check(plus, "He has 9 - 9 = 0 marbles.", "The answer is 0.") == [0, 0]
    assert check(plus, "He has 9 + 9 = 18 marbles.", "The answer is 18.") == [1, 1]


def test_the_last_step_of_a_solution_carries_its_grade():
    # no final answer at all: the steps were right, the solution is not
    assert check(COOKIES, "Ben has 5 cookies.", "5 - 3 = 2.") == [1, 0]
    assert step_labels(*COOKIES, ["Ben has 5 cookies.", "5 - 3 = 2."], whole=False) == [1, 1]
    # grading reads the last answer given: an answer step followed by a wrong one
    assert check(COOKIES, "The answer is 2.", "The answer is 3.") == [1, 0]
    # an answer written as an equation gives what the equation gives
    assert check(("Jack has 4 oranges. He gets 17 more. How many now?", "4 + 17", "21"),
                 "The answer is 17 + 4 = 21 oranges.", "The answer is 21.") == [1, 1]


def test_numbers_without_equations_must_come_from_the_problem():
    assert check(COOKIES, "Ben has 5 cookies.", "He loses 3 of them.", "So he has 2 left.",
                 "The answer is 2.") == [1, 1, 1, 1]
    assert check(COOKIES, "Ben takes 5 cookies out of his bag of 10 cookies.", "The answer is 2.") == [0, 0]
    # list markers are not numbers of the step
    assert check(BALLOONS, "Let's break it down:", "1. Ivy gives 2 balloons to Sam.", "2. She buys 17 more.",
                 "3. 18 - 2 + 17 = 33", "The answer is 33.") == [1, 1, 1, 1, 1]


def test_equation_notation():
    def eqs(step):
        found, _ = parse_step(step)
        return [(e.value, e.rhs, e.correct) for e in found]

    assert eqs("12 + 17 = 29 balloons.") == [(29, 29, True)]
    assert eqs("4 cases x 5 toy cars = 20 toy cars.") == [(20, 20, True)]
    assert eqs("4 × 5 = 20, 4x5=20 and 4 * 5 = 21") == [(20, 20, True), (20, 20, True), (20, 21, False)]
    assert eqs("30 − 4 = 26 and 30 – 4 = 26 and 12 ÷ 4 = 3 and 12 / 4 = 4") == [
        (26, 26, True), (26, 26, True), (3, 3, True), (3, 4, False)]
    assert eqs("It costs $1,200 / 3 = $400.") == [(400, 400, True)]
    assert eqs("2 * 12 = 24 + 8 = 32.") == [(24, 24, True), (32, 32, True)]  # a running chain
    assert eqs("(12 - 4) * 2 = 16 pens") == [(16, 16, True)]
    assert eqs("10 / 3 = 3.33") == [(pytest.approx(10 / 3), pytest.approx(3.33), True)]
    assert eqs("10 / 3 = 3.4") == [(pytest.approx(10 / 3), pytest.approx(3.4), False)]
    assert eqs("The box has 6 boxes of toys.") == []
    _, numbers = parse_step("Step 2: the 1,500 boxes weigh 3.5 kg.")
    assert numbers == [1500, 3.5]


def test_arith_labels_need_the_expression():
    problems = pl.DataFrame({"problem_id": ["a"], "question": ["q"], "answer": ["1"], "metadata": ['{"level": 1}']})
    samples = pl.DataFrame({"problem_id": ["a"], "text": ["1 + 0 = 1"], "step_ends": [[9]]})
    with pytest.raises(ValueError, match="problem a: no `expression`"):
        arith_check.labels_for(samples, problems)
    assert not arith_check.is_arith(problems)


def test_arith_check_on_another_dataset_names_the_key():
    spec = {"format": "value-head", "train": {"dataset": {"source": "gsm8k", "path": "x.jsonl"},
                                               "supervision": "arith-check"}}
    with pytest.raises(ValueError, match=r"prms\.vh\.train\.supervision: arith-check"):
        labels.check_config("vh", spec)
    spec["train"].update(supervision="outcome", rollouts={"k": 2})
    with pytest.raises(ValueError, match=r"prms\.vh\.train\.rollouts: only used with supervision: rollouts"):
        labels.check_config("vh", spec)


# --------------------------------------------------------------------------- rollouts


class ScriptedCompleter:
    """Continues a context by the script entry whose key the context ends with (the
    prefix's last step); records every call."""

    def __init__(self, script: dict[str, list[str]]):
        self.script, self.calls = script, []

    def complete(self, contexts, k):
        self.calls.append((list(contexts), k))
        out = []
        for ctx in contexts:
            [texts] = [v for key, v in self.script.items() if ctx.endswith(key + "\n")]
            out.append([Completion(t, 3) for t in texts[:k]])
        return out


PROBLEMS = pl.DataFrame({"problem_id": ["p"], "question": ["Ben has 5 cookies. He loses 3 cookies."],
                         "answer": ["2"], "metadata": ['{"level": 1, "expression": "5 - 3"}']})


def sample_rows(*texts):
    from pipeline.core import prompts

    return pl.DataFrame(
        {"problem_id": ["p"] * len(texts), "sample_idx": list(range(len(texts))), "text": list(texts),
         "step_ends": [prompts.step_ends(t) for t in texts]},
        schema_overrides={"sample_idx": pl.Int32, "step_ends": pl.List(pl.Int32)},
    )


def test_rollout_labels_on_a_scripted_generator():
    samples = sample_rows("Ben has 5.\n5 - 3 = 2.\nThe answer is 2.", "Ben has 5.\n5 + 3 = 8.\nThe answer is 8.", "")
    completer = ScriptedCompleter({
        "Ben has 5.": ["5 - 3 = 2.\nThe answer is 2.", "The answer is 8.", "5 + 3 = 8.\nThe answer is 8."],
        "5 - 3 = 2.": ["The answer is 2.\n\nQuestion: The answer is 7.", "The answer is 2.", "So 2."],
        # a stop string ends the continuation: the answer after it is not the solution's
        "5 + 3 = 8.": ["The answer is 8.", "\nQuestion: x? The answer is 2.", "The answer is 2 cookies."],
    })
    prefixes = rollouts.rollout_requests(samples, PROBLEMS, lambda q: f"Q: {q}\nA:\n")
    assert [(p.sample_idx, p.step, p.context is None) for p in prefixes] == [
        (0, 0, False), (0, 1, False), (0, 2, True), (1, 0, False), (1, 1, False), (1, 2, True)]
    assert prefixes[1].context == "Q: Ben has 5 cookies. He loses 3 cookies.\nA:\nBen has 5.\n5 - 3 = 2.\n"
    rows = rollouts.rollout_rows(prefixes, PROBLEMS, completer, k=3, stop=["\n\n", "\nQuestion:"])
    assert len(completer.calls) == 1 and completer.calls[0][1] == 3  # one batched call
    assert len(completer.calls[0][0]) == 4  # answer steps are not rolled out
    assert rows.schema == pl.Schema(rollouts.ROLLOUTS)
    assert rows.select("sample_idx", "step", "kind", "k", "reached").rows() == [
        (0, 0, "rollouts", 3, 1), (0, 1, "rollouts", 3, 2), (0, 2, "answer", 1, 1),
        (1, 0, "rollouts", 3, 1), (1, 1, "rollouts", 3, 1), (1, 2, "answer", 1, 0)]
    assert rows["completions"][1].to_list()[0] == "The answer is 2."  # cut at "\n\n"
    assert rows["completions"][4].to_list()[1] == ""  # "\nQuestion:" at once: an empty continuation
    assert rows["answers"][4].to_list() == ["8", None, "2"]
    assert rows["output_tokens"].to_list() == [9, 9, 0, 9, 9, 0]

    hard = labels.step_labels_from_rollouts(samples.filter(pl.col("text") != ""), rows, label="hard")
    soft = labels.step_labels_from_rollouts(samples.filter(pl.col("text") != ""), rows, label="soft")
    assert hard == [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
    assert soft == [[pytest.approx(1 / 3), pytest.approx(2 / 3), 1.0], [pytest.approx(1 / 3), pytest.approx(1 / 3), 0.0]]
    with pytest.raises(ValueError, match="no rollout for problem 'p' sample 0 step 2"):
        labels.step_labels_from_rollouts(samples.head(1), rows.filter(pl.col("step") < 2))


def test_rollouts_count_must_match():
    class Short(ScriptedCompleter):
        def complete(self, contexts, k):
            return [[Completion("The answer is 2.", 1)] for _ in contexts]

    prefixes = rollouts.rollout_requests(sample_rows("Ben has 5."), PROBLEMS, lambda q: q)
    with pytest.raises(RuntimeError, match="1 completions for problem p sample 0 step 0, asked for 2"):
        rollouts.rollout_rows(prefixes, PROBLEMS, Short({}), k=2, stop=[])


def test_training_labels_follow_the_supervision(tmp_path):
    samples = sample_rows("Ben has 5.\n5 + 3 = 8.\nThe answer is 8.")
    spec = {"format": "value-head", "train": {"dataset": {"source": "arith"}}}
    assert labels.training_labels(spec, samples, PROBLEMS) is None
    spec["train"]["supervision"] = "arith-check"
    assert labels.training_labels(spec, samples, PROBLEMS) == [[1.0, 0.0, 0.0]]
    spec["train"].update(supervision="rollouts", rollouts={"label": "soft"})
    with pytest.raises(ValueError, match="--rollouts"):
        labels.training_labels(spec, samples, PROBLEMS)
    rows = pl.DataFrame({"problem_id": ["p"] * 3, "sample_idx": [0] * 3, "step": [0, 1, 2], "kind": ["rollouts"] * 3,
                         "k": [4, 4, 1], "reached": [2, 0, 0], "output_tokens": [1] * 3,
                         "completions": [[]] * 3, "answers": [[]] * 3}, schema=rollouts.ROLLOUTS)
    rows.write_parquet(tmp_path / "r.parquet")
    assert labels.training_labels(spec, samples, PROBLEMS, str(tmp_path / "r.parquet")) == [[0.5, 0.0, 0.0]]


# --------------------------------------------------------------------------- planning


def with_supervision(supervision, **rollouts):
    config = copy.deepcopy(TINY)
    train = config["prms"]["value-head"]["train"]
    train["supervision"] = supervision
    train.pop("rollouts", None)
    if rollouts:
        train["rollouts"] = rollouts
    return config


def rollout_keys(config):
    from conftest import REPO
    from snakemake.utils import validate

    config = copy.deepcopy(config)
    validate(config, schema=str(REPO / "config" / "config.schema.yaml"), set_default=True)
    return [r.key for r in plan.rollouts(config, plan.caches(config))]


def test_rollout_key_follows_the_settings_that_change_completions():
    base = rollout_keys(with_supervision("rollouts", k=2))
    assert len(base) == 1
    assert rollout_keys(with_supervision("rollouts", k=2, label="soft")) == base  # training reads it differently
    for change in ({"k": 3}, {"max_tokens": 12}, {"temperature": 1.0}, {"top_p": 0.5}):
        assert rollout_keys(with_supervision("rollouts", **{"k": 2, **change})) != base, change
    more_samples = with_supervision("rollouts", k=2)
    more_samples["prms"]["value-head"]["train"]["temperature"] = 1.0  # another training cache
    assert rollout_keys(more_samples) != base
    assert rollout_keys(with_supervision("arith-check")) == []


def test_dry_run_plans_rollouts_only_for_rollout_supervision(tmp_path):
    for supervision in ("outcome", "arith-check"):
        proc = dry_run(tmp_path, with_supervision(supervision))
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        rules = {r for r, _ in planned_jobs(proc.stdout)}
        assert "train_value_head" in rules and "rollouts" not in rules, supervision
    paths = []
    for k in (1, 2):
        proc = dry_run(tmp_path, with_supervision("rollouts", k=k, max_tokens=24))
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        jobs = [w for r, w in planned_jobs(proc.stdout) if r == "rollouts"]
        assert len(jobs) == 1 and jobs[0]["dataset"] == "value-head-train"
        paths.append(f"results/rollouts/{jobs[0]['dataset']}/{jobs[0]['model']}/{jobs[0]['key']}/rollouts.parquet")
        assert paths[-1] in proc.stdout
    assert paths[0] != paths[1]  # a changed setting is a new folder


def test_dry_run_names_the_key_of_a_wrong_supervision(tmp_path):
    config = with_supervision("arith-check")
    config["prms"]["value-head"]["train"]["dataset"] = {"source": "jsonl", "path": str(tmp_path / "d.jsonl")}
    (tmp_path / "d.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n")
    proc = dry_run(tmp_path, config)
    assert proc.returncode != 0 and "prms.value-head.train.supervision" in proc.stdout + proc.stderr
