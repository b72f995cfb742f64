"""Code tasks: HumanEval and JSONL code datasets, the program a completion stands for,
the in-sandbox test harness (run in-process here), and grading in the real sandbox:
every HumanEval canonical solution passes, answer classes are behaviours on the
tests' inputs with correctness all-or-none per class, and the replays read the grades
as they read math grades."""

from __future__ import annotations

import gzip
import json

import polars as pl
import pytest

from pipeline.strategies.selection import replay_prm
from pipeline.strategies.voting import replay
from pipeline.tasks import code, code_grading, code_harness, datasets
from pipeline.tasks.sandbox import Limits, Sandbox
from pipeline.workflow import plan

PLAIN = {"format": "plain", "template": "{question}\n"}


def harness(program: str, test: str, entry: str) -> dict:
    out: list[dict] = []
    code_harness.run({"program": program, "test": test, "entry_point": entry}, out.append)
    [result] = out
    return result


# ------------------------------------------------------------------------------ datasets


def test_humaneval_from_the_package():
    df = datasets.load_problems("he", {"source": "humaneval"})
    assert df.height == code.HUMANEVAL_SIZE == 164
    assert df["problem_id"][0] == "HumanEval/0" and df["problem_id"][-1] == "HumanEval/163"
    meta = json.loads(df["metadata"][0])
    assert meta["task"] == "code" and meta["entry_point"] == "has_close_elements" and "canonical_solution" in meta
    assert "def check(candidate)" in df["answer"][0] and df["question"][0].rstrip().endswith('"""')
    assert datasets.load_problems("he", {"source": "humaneval", "limit": 3})["problem_id"].to_list() == \
        df["problem_id"][:3].to_list()
    assert datasets.count_problems("he", {"source": "humaneval"}) == 164
    assert datasets.count_problems("he", {"source": "humaneval", "limit": 5}) == 5


def test_code_jsonl_fields_gzip_and_errors(tmp_path):
    rows = [{"name": "sq", "src": "def sq(x):\n", "fn": "sq", "tests": "assert sq(3) == 9\n"},
            {"name": "neg", "src": "def neg(x):\n", "fn": "neg", "tests": "assert neg(1) == -1\n"}]
    path = tmp_path / "c.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(map(json.dumps, rows)) + "\n")
    cfg = {"source": "code", "path": str(path), "fields": {"id": "name", "prompt": "src", "entry_point": "fn", "test": "tests"}}
    df = datasets.load_problems("c", cfg)
    assert df["problem_id"].to_list() == ["sq", "neg"] and df["answer"][0] == "assert sq(3) == 9\n"
    # default fields, ids from the record number when there is no task_id
    plain = tmp_path / "d.jsonl"
    plain.write_text(json.dumps({"prompt": "def f():\n", "entry_point": "f", "test": "assert f() == 1\n"}) + "\n")
    assert datasets.load_problems("d", {"source": "code", "path": str(plain)})["problem_id"].to_list() == ["d-0"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "entry_point": "not a name", "test": "pass"}) + "\n")
    with pytest.raises(ValueError, match=f"{bad}:1: field 'entry_point' must be a function name"):
        datasets.load_problems("b", {"source": "code", "path": str(bad)})
    bad.write_text(json.dumps({"prompt": "x", "entry_point": "f", "test": "assert (("}) + "\n")
    with pytest.raises(ValueError, match=f"{bad}:1: field 'test' is not valid Python"):
        datasets.load_problems("b", {"source": "code", "path": str(bad)})
    bad.write_text(json.dumps({"prompt": "x", "entry_point": "f"}) + "\n")
    with pytest.raises(ValueError, match=f"{bad}:1: missing field 'test'"):
        datasets.load_problems("b", {"source": "code", "path": str(bad)})
    with pytest.raises(ValueError, match="unknown `fields` key"):
        datasets.load_problems("b", {"source": "code", "path": str(bad), "fields": {"question": "q"}})


def test_execution_settings_stay_out_of_the_cache_key():
    base = {"source": "humaneval", "limit": 4}
    ident = plan.dataset_identity("he", base)
    assert ident == plan.dataset_identity("he", {**base, "execution": {"timeout_s": 1}})
    assert ident["sha256"]  # the package's data file pins the problems
    config = {"datasets": {"he": base, "arith": {"source": "arith", "limit": 2}}, "prms": {}}
    assert plan.code_datasets(config) == ["he"]
    with pytest.raises(ValueError, match="datasets.arith.execution: only code datasets"):
        plan.dataset_identity("arith", {"source": "arith", "limit": 2, "execution": {}})


# ------------------------------------------------------------------------------ programs


def test_program_plain_continuation_and_chat_blocks():
    q = 'from math import sqrt\n\n\ndef f(x):\n    """Doc."""\n'
    plain = {"format": "plain", "template": "# a few-shot example\n{question}"}
    assert code.program(plain, q, "\n    return sqrt(x)\n```\nmore text", "f") == \
        'from math import sqrt\n\n\ndef f(x):\n    """Doc."""\n    return sqrt(x)\n'
    chat = {"format": "chat", "template": "Complete:\n{question}"}
    reply = "Sure!\n```python\ndef g():\n    pass\n```\nand\n```python\ndef f(x):\n    return sqrt(x)\n```\nDone."
    program = code.program(chat, q, reply, "f")
    assert program.startswith(q.strip()) and program.rstrip().endswith("def f(x):\n    return sqrt(x)")
    assert "def g" not in program
    assert code.program(chat, q, "def f(x):\n    return 1", "f").endswith("def f(x):\n    return 1\n")
    assert code.code_blocks("```py\nx = 1") == ["x = 1"]  # an unclosed last fence


# ------------------------------------------------------------------------------- harness

TEST = "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(3) == 9\n    assert candidate(-1) == 1\n"


def test_harness_pass_fail_and_every_assertion():
    ok = harness("def sq(x):\n    return x * x\n", TEST, "sq")
    assert ok["status"] == "pass" and ok["calls"] == 3 and ok["failed"] == 0 and ok["reason"] == ""
    same = harness("def sq(x):\n    return x ** 2\n", TEST, "sq")
    assert same["behaviour"] == ok["behaviour"]  # other code, same outputs: one class
    wrong = harness("def sq(x):\n    return 2 * x\n", TEST, "sq")
    # 2*2 == 4 passes; the other two fail, and all three calls are made
    assert wrong["status"] == "fail" and wrong["calls"] == 3 and wrong["failed"] == 2
    assert wrong["reason"].startswith("assertion failed (test line 3: assert candidate(3) == 9)")
    assert wrong["behaviour"] != ok["behaviour"]
    raises = harness("def sq(x):\n    if x < 0:\n        raise ValueError('neg')\n    return x * x\n", TEST, "sq")
    assert raises["calls"] == 3 and "ValueError: neg" in raises["reason"] and "solution line 3" in raises["reason"]


def test_harness_program_errors():
    assert "SyntaxError" in harness("def sq(x) return x\n", TEST, "sq")["reason"]
    assert harness("def other(x):\n    return x\n", TEST, "sq")["reason"] == "the program defines no function 'sq'"
    boom = harness("import not_a_module_anywhere\ndef sq(x):\n    return x * x\n", TEST, "sq")
    assert boom["status"] == "fail" and "ModuleNotFoundError" in boom["reason"] and boom["behaviour"] == ""
    never = harness("def sq(x):\n    return x\n", "def check(candidate):\n    pass\n", "sq")
    assert never["status"] == "fail" and "never called" in never["reason"]


def test_harness_module_level_asserts_recursion_and_seeded_inputs():
    module_level = "assert fib(10) == 55\nassert fib(1) == 1\n"
    rec = harness("def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n", module_level, "fib")
    assert rec["status"] == "pass" and rec["calls"] == 2  # the program's own recursive calls are not the test's
    seeded = ("def check(candidate):\n    import random\n    for _ in range(20):\n"
              "        x = random.randint(0, 10**6)\n        assert candidate(x) == x\n")
    a = harness("def ident(x):\n    return x\n", seeded, "ident")
    b = harness("def ident(x):\n    return int(str(x))\n", seeded, "ident")
    assert a["status"] == b["status"] == "pass" and a["behaviour"] == b["behaviour"] and a["calls"] == 20


# -------------------------------------------------------------------- grading (sandboxed)


@pytest.fixture(scope="module")
def sandbox(bwrap) -> Sandbox:
    s = Sandbox(Limits(timeout_s=20, cpu_s=5, memory_mb=512))
    s.check()
    return s


def test_every_humaneval_canonical_solution_passes(sandbox):
    problems = datasets.load_problems("he", {"source": "humaneval"})
    canon = [json.loads(m)["canonical_solution"] for m in problems["metadata"]]
    samples = pl.DataFrame({"problem_id": problems["problem_id"], "sample_idx": [0] * problems.height, "text": canon})
    grades, summary = code_grading.grade_code(samples, problems, prompt=PLAIN, sandbox=sandbox, workers=8)
    failed = grades.filter(pl.col("status") != "pass")
    assert failed.height == 0, failed.select("problem_id", "status", "reason").rows()[:5]
    assert summary["status"]["pass"] == 164 and grades["answer_class"].min() == 0


def test_classes_are_behaviours_and_the_replays_read_them(sandbox):
    problems = datasets.load_problems("he", {"source": "humaneval", "limit": 2})
    canon = [json.loads(m)["canonical_solution"] for m in problems["metadata"]]
    p0 = [canon[0],                                   # pass
          "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n",  # pass, same outputs
          "    return False\n",                        # fail
          "    return False\n",                        # fail, the same program (run once)
          "    return not_defined\n",                  # fail: raises on every call
          "    return (\n"]                            # syntax error: no behaviour
    p1 = [canon[1]] + ["    return []\n"] * 5
    texts = p0 + p1
    samples = pl.DataFrame({"problem_id": ["HumanEval/0"] * 6 + ["HumanEval/1"] * 6,
                            "sample_idx": list(range(6)) * 2, "text": texts})
    grades, summary = code_grading.grade_code(samples.reverse(), problems, prompt=PLAIN, sandbox=sandbox, workers=4)
    g0 = grades.filter(pl.col("problem_id") == "HumanEval/0")
    assert g0["sample_idx"].to_list() == list(range(6))
    assert g0["status"].to_list() == ["pass", "pass", "fail", "fail", "fail", "fail"]
    assert g0["answer_class"].to_list() == [0, 0, 1, 1, 2, -1]
    assert g0["answer"][5] is None and "SyntaxError" in g0["reason"][5] and "NameError" in g0["reason"][4]
    assert summary["executions"] == 7  # 5 + 2 distinct programs: repeated ones ran once
    # correctness is all-or-none per class, so the exact replays accept the grades
    tokens = pl.DataFrame({"problem_id": samples["problem_id"], "sample_idx": samples["sample_idx"],
                           "prompt_tokens": [100] * 12, "output_tokens": [50] * 12, "source": ["sampled"] * 12})
    out = replay(grades, None, tokens, params=1000)
    maj = out.filter((pl.col("strategy") == "majority") & (pl.col("n") == 6)).sort("problem_id")["accuracy"].to_list()
    cov = out.filter((pl.col("strategy") == "coverage") & (pl.col("n") == 1)).sort("problem_id")["accuracy"].to_list()
    assert maj == pytest.approx([0.5, 0.0]) and cov == pytest.approx([2 / 6, 1 / 6])
    scores = samples.select("problem_id", "sample_idx", scores=pl.lit([0.5]).cast(pl.List(pl.Float64)))
    prm = replay_prm(grades, scores, tokens, params=1000, prm="flat", prm_params=1000,
                     prm_tokens=samples.select("problem_id", "sample_idx", prm_tokens=pl.lit(10)), num_draws=10, seed=0)
    assert set(prm["strategy"]) == {"best_of_n", "weighted_majority"}
