"""Tests for pipeline.tasks.datasets: real GSM8K/MATH500 files, the JSONL loader and its
errors, and the seeded arithmetic generator."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import polars as pl
import pytest

from pipeline.core import schemas
from pipeline.tasks import datasets

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GSM8K = DATA / "gsm8k_test.jsonl"
MATH500 = DATA / "math500_test.jsonl"


def _need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"shared data file {path} is absent (the read-only ../shared/data folder)")
    return path


def _write(tmp_path: Path, lines: list[str], name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _check_schema(df: pl.DataFrame) -> None:
    assert dict(df.schema) == schemas.PROBLEMS
    for meta in df["metadata"]:
        assert isinstance(json.loads(meta), dict)


# ------------------------------------------------------------------------- real files


def test_gsm8k_file():
    path = _need(GSM8K)
    cfg = {"source": "gsm8k", "path": str(path)}
    df = datasets.load_problems("gsm8k", cfg)
    _check_schema(df)
    assert df.height == 1319 == datasets.count_problems("gsm8k", cfg)
    assert df["problem_id"].n_unique() == df.height
    assert df["problem_id"][0] == "gsm8k-0000" and df["problem_id"][-1] == "gsm8k-1318"

    # Reference answers come from the file itself, not from this test.
    with path.open(encoding="utf-8") as fh:
        first = json.loads(fh.readline())
    assert first["answer"].endswith("#### 18")
    assert df["answer"][0] == "18"
    assert df["question"][0] == first["question"]
    meta = json.loads(df["metadata"][0])
    assert meta["solution"] == first["answer"] and meta["line"] == 1

    # Thousands separators are removed; every reference is a plain number.
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", a) for a in df["answer"])
    assert "," not in "".join(df["answer"])


def test_gsm8k_limit_is_prefix():
    path = _need(GSM8K)
    full = datasets.load_problems("gsm8k", {"source": "gsm8k", "path": str(path)})
    cfg = {"source": "gsm8k", "path": str(path), "limit": 25}
    head = datasets.load_problems("gsm8k", cfg)
    assert head.height == 25 == datasets.count_problems("gsm8k", cfg)
    assert head.equals(full.head(25))
    big = {"source": "gsm8k", "path": str(path), "limit": 5000}
    assert datasets.count_problems("gsm8k", big) == 1319


def test_math500_file():
    path = _need(MATH500)
    cfg = {"source": "math500", "path": str(path)}
    df = datasets.load_problems("math500", cfg)
    _check_schema(df)
    assert df.height == 500 == datasets.count_problems("math500", cfg)
    assert df["problem_id"].n_unique() == 500

    with path.open(encoding="utf-8") as fh:
        first = json.loads(fh.readline())
    row = df.row(0, named=True)
    assert row["problem_id"] == first["unique_id"]
    assert row["question"] == first["problem"]
    assert row["answer"] == first["answer"]
    meta = json.loads(row["metadata"])
    assert meta["subject"] == first["subject"]
    assert meta["level"] == first["level"]
    assert meta["solution"] == first["solution"]

    cfg = {"source": "math500", "path": str(path), "limit": 7}
    head = datasets.load_problems("math500", cfg)
    assert head.equals(df.head(7)) and datasets.count_problems("math500", cfg) == 7


# ------------------------------------------------------------------------------- hub


def test_hub_needs_limit_for_count():
    with pytest.raises(ValueError, match="dataset gsm8k: set limit \\(or path\\) for hub datasets"):
        datasets.count_problems("gsm8k", {"source": "gsm8k"})
    assert datasets.count_problems("m", {"source": "math500", "limit": 12}) == 12


def test_hub_without_datasets_package_says_set_path(monkeypatch):
    # A None entry makes `import datasets` raise ImportError even if it is installed.
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(RuntimeError, match="set `path`"):
        datasets.load_problems("gsm8k", {"source": "gsm8k", "limit": 3})


def test_hub_download_failure_says_set_path(monkeypatch):
    import types

    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(RuntimeError, match="HuggingFaceH4/MATH-500.*offline.*set `path`"):
        datasets.load_problems("math500", {"source": "math500", "limit": 3})


def test_hub_rows_match_file_ids(monkeypatch):
    """A fake `datasets` module: hub rows are parsed like file rows, limit is applied."""
    import types

    rows = [
        {"question": "q0", "answer": "work\n#### 1,234"},
        {"question": "q1", "answer": "#### 5"},
        {"question": "q2", "answer": "#### 6"},
    ]
    calls = []

    def load_dataset(*args, split):
        calls.append((args, split))
        return rows

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    df = datasets.load_problems("g", {"source": "gsm8k", "limit": 2})
    assert calls == [(("openai/gsm8k", "main"), "test")]
    assert df["problem_id"].to_list() == ["gsm8k-0000", "gsm8k-0001"]
    assert df["answer"].to_list() == ["1234", "5"]


# ----------------------------------------------------------------------- jsonl loader


def test_jsonl_custom_fields(tmp_path):
    path = _write(
        tmp_path,
        [
            json.dumps({"qid": "a", "prompt": "1+1?", "target": 2, "extra": "x"}),
            "",
            "   ",
            json.dumps({"qid": "b", "prompt": "2+2?", "target": "4"}),
            json.dumps({"qid": "c", "prompt": "3+3?", "target": "6"}),
        ],
    )
    cfg = {
        "source": "jsonl",
        "path": str(path),
        "fields": {"id": "qid", "question": "prompt", "answer": "target"},
    }
    df = datasets.load_problems("toy", cfg)
    _check_schema(df)
    assert df["problem_id"].to_list() == ["a", "b", "c"]
    assert df["question"].to_list() == ["1+1?", "2+2?", "3+3?"]
    assert df["answer"].to_list() == ["2", "4", "6"]
    meta = [json.loads(m) for m in df["metadata"]]
    assert meta[0] == {"extra": "x", "line": 1}
    assert meta[1]["line"] == 4  # blank lines still count as lines for error locations
    assert datasets.count_problems("toy", cfg) == 3

    limited = {**cfg, "limit": 2}
    assert datasets.load_problems("toy", limited).equals(df.head(2))
    assert datasets.count_problems("toy", limited) == 2


def test_jsonl_default_fields_and_ids(tmp_path):
    path = _write(
        tmp_path,
        [
            "",
            json.dumps({"question": "q", "answer": "1"}),
            json.dumps({"question": "r", "answer": "2"}),
        ],
    )
    df = datasets.load_problems("toy", {"source": "jsonl", "path": str(path)})
    # ids count records, not physical lines, so they match a blank-free copy
    assert df["problem_id"].to_list() == ["toy-0", "toy-1"]


def test_missing_file_names_path_and_dataset(tmp_path):
    missing = tmp_path / "nope.jsonl"
    for source in ("jsonl", "gsm8k", "math500"):
        cfg = {"source": source, "path": str(missing)}
        for fn in (datasets.load_problems, datasets.count_problems):
            with pytest.raises(FileNotFoundError) as e:
                fn("mydata", cfg)
            assert "mydata" in str(e.value) and str(missing) in str(e.value)


def test_malformed_json_names_file_and_line(tmp_path):
    path = _write(tmp_path, [json.dumps({"question": "q", "answer": "1"}), "", "{not json"])
    with pytest.raises(ValueError, match=re.escape(f"{path}:3") + ".*malformed JSON"):
        datasets.load_problems("toy", {"source": "jsonl", "path": str(path)})


def test_non_object_line(tmp_path):
    path = _write(tmp_path, ["[1, 2]"])
    with pytest.raises(ValueError, match=re.escape(f"{path}:1") + ".*JSON object"):
        datasets.load_problems("toy", {"source": "jsonl", "path": str(path)})


@pytest.mark.parametrize("field", ["prompt", "target"])
def test_missing_field_names_file_line_field(tmp_path, field):
    row = {"prompt": "q", "target": "1"}
    bad = {k: v for k, v in row.items() if k != field}
    path = _write(tmp_path, [json.dumps(row), json.dumps(bad)])
    fields = {"question": "prompt", "answer": "target"}
    cfg = {"source": "jsonl", "path": str(path), "fields": fields}
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: missing field '{field}'")):
        datasets.load_problems("toy", cfg)


def test_empty_answer_names_file_line_field(tmp_path):
    rows = [{"question": "q", "answer": "1"}, {"question": "q", "answer": "  "}]
    path = _write(tmp_path, [json.dumps(r) for r in rows])
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: field 'answer' is empty")):
        datasets.load_problems("toy", {"source": "jsonl", "path": str(path)})


def test_duplicate_ids_name_id_and_lines(tmp_path):
    path = _write(
        tmp_path,
        [
            json.dumps({"id": "x", "question": "q", "answer": "1"}),
            json.dumps({"id": "y", "question": "q", "answer": "1"}),
            "",
            json.dumps({"id": "x", "question": "q", "answer": "1"}),
        ],
    )
    cfg = {"source": "jsonl", "path": str(path), "fields": {"id": "id"}}
    message = f"{path}: duplicate problem id 'x' on lines 1 and 4"
    with pytest.raises(ValueError, match=re.escape(message)):
        datasets.load_problems("toy", cfg)


def test_gsm8k_and_math500_row_errors(tmp_path):
    path = _write(tmp_path, [json.dumps({"question": "q", "answer": "no final answer"})], "g.jsonl")
    with pytest.raises(ValueError, match=re.escape(f"{path}:1") + ".*####"):
        datasets.load_problems("g", {"source": "gsm8k", "path": str(path)})
    path = _write(tmp_path, [json.dumps({"question": "q", "answer": "x\n####  "})], "g2.jsonl")
    with pytest.raises(ValueError, match=re.escape(f"{path}:1") + ".*empty"):
        datasets.load_problems("g", {"source": "gsm8k", "path": str(path)})
    row = {"problem": "p", "solution": "s", "answer": "1", "subject": "A", "level": 1}
    row["unique_id"] = "u"
    path = _write(tmp_path, [json.dumps(row), json.dumps(row)], "m.jsonl")
    with pytest.raises(ValueError, match="duplicate problem id 'u' on lines 1 and 2"):
        datasets.load_problems("m", {"source": "math500", "path": str(path)})


def test_bad_config():
    with pytest.raises(ValueError, match="dataset d: `source`"):
        datasets.load_problems("d", {"source": "nope"})
    with pytest.raises(ValueError, match="`limit`"):
        datasets.count_problems("d", {"source": "arith", "limit": 0})
    with pytest.raises(ValueError, match="`path` is required"):
        datasets.count_problems("d", {"source": "jsonl"})


# -------------------------------------------------------------------------- arithmetic


def _arith(split="test", seed=0, levels=(1, 2, 3), count=30):
    return datasets.arith_problems(split=split, seed=seed, levels=levels, count=count)


def _eval(expression: str) -> int:
    assert re.fullmatch(r"\d+( [-+*] \d+)*", expression), expression
    return eval(expression, {"__builtins__": {}})  # noqa: S307 - checked digits/operators only


def test_arith_deterministic_and_prefix_stable():
    a = _arith(count=30)
    _check_schema(a)
    assert a.equals(_arith(count=30))
    assert _arith(count=10).equals(a.head(10))
    assert not _arith(seed=1, count=30).equals(a)
    assert a["problem_id"].to_list() == [f"arith-test-{i:05d}" for i in range(30)]


def test_arith_answers_match_expression_and_levels():
    df = _arith(split="train", levels=[1, 2, 3], count=300)
    for i, row in enumerate(df.iter_rows(named=True)):
        meta = json.loads(row["metadata"])
        assert meta["level"] == [1, 2, 3][i % 3]
        ops = re.findall(r" [-+*] ", meta["expression"])
        assert len(ops) == meta["level"]
        if meta["level"] == 1:
            assert "*" not in meta["expression"]
        answer = int(row["answer"])
        assert str(answer) == row["answer"] and 0 <= answer < 1000
        assert answer == _eval(meta["expression"])
        assert all(1 <= int(n) <= 20 for n in re.findall(r"\d+", meta["expression"]))
        assert row["question"].count("?") == 1 and row["question"].endswith("?")
    only2 = _arith(levels=[2], count=20)
    assert {json.loads(m)["level"] for m in only2["metadata"]} == {2}


def _amounts(expression: str) -> tuple[list[int], list[tuple[int, int]]]:
    """(amounts started with, added or taken away; product factors (k, m)) of an expression."""
    amounts, products = [], []
    for term in re.split(r" [-+] ", expression):
        if "*" in term:
            k, m = map(int, term.split(" * "))
            products.append((k, m))
        else:
            amounts.append(int(term))
    return amounts, products


@pytest.mark.parametrize("top", [2, 3, 5, 10, 50])
def test_arith_max_number_bounds_every_amount(top):
    df = datasets.arith_problems(split="test", seed=0, levels=[1, 2, 3], count=240, max_number=top)
    largest, products = 0, 0
    for i, row in enumerate(df.iter_rows(named=True)):
        meta = json.loads(row["metadata"])
        assert (meta["level"], meta["max_number"]) == ([1, 2, 3][i % 3], top)
        assert len(re.findall(r" [-+*] ", meta["expression"])) == meta["level"]
        amounts, factors = _amounts(meta["expression"])
        assert all(1 <= a <= top for a in amounts), meta["expression"]
        assert all(2 <= k <= min(5, top) and 2 <= m <= min(10, top) for k, m in factors), meta["expression"]
        answer = int(row["answer"])
        assert str(answer) == row["answer"] and answer == _eval(meta["expression"]) >= 0
        largest, products = max([largest, *amounts]), products + len(factors)
    assert largest == top and products > 0  # the range is used up to its top, products occur


def test_arith_difficulty_mix_cycles_and_is_reproducible():
    levels = [{"ops": 1, "max_number": 5}, 2, {"ops": 3}, {"ops": 2, "max_number": 100}]
    df = datasets.arith_problems(split="train", seed=4, levels=levels, count=40, max_number=10)
    got = [(m["level"], m["max_number"]) for m in map(json.loads, df["metadata"])]
    assert got == [(1, 5), (2, 10), (3, 10), (2, 100)] * 10
    assert df.equals(datasets.arith_problems(split="train", seed=4, levels=levels, count=40, max_number=10))
    # Prefix-stable, and problem i depends only on its own difficulty: a dataset of
    # only the first difficulty shares every 4th problem with the mix.
    assert df.head(7).equals(datasets.arith_problems(split="train", seed=4, levels=levels, count=7, max_number=10))
    alone = datasets.arith_problems(split="train", seed=4, levels=[levels[0]], count=40)
    assert alone["question"].gather(range(0, 40, 4)).equals(df["question"].gather(range(0, 40, 4)))
    for row in df.iter_rows(named=True):
        assert int(row["answer"]) == _eval(json.loads(row["metadata"])["expression"]) >= 0
    # A mapping without max_number is the int level; the splits stay disjoint.
    assert datasets.arith_problems(split="test", seed=0, levels=[{"ops": 2}], count=20).equals(_arith(levels=[2], count=20))
    train = set(datasets.arith_problems(split="train", seed=0, levels=levels, count=400, max_number=5)["question"])
    test = set(datasets.arith_problems(split="test", seed=0, levels=levels, count=400, max_number=5)["question"])
    assert not train & test


def test_arith_default_numbers_are_the_original_problems():
    # Pinned from the generator before max_number existed (the embedded default's
    # caches depend on these): max_number 20 must draw exactly the same problems.
    for kwargs in ({}, {"max_number": 20}):
        df = datasets.arith_problems(split="test", seed=0, levels=[1, 2], count=4, **kwargs)
        assert [json.loads(m)["expression"] for m in df["metadata"]] == ["12 + 17", "3 * 6 - 9", "11 - 10", "4 * 7 - 13"]
        assert df["answer"].to_list() == ["29", "9", "1", "15"]
        assert df["question"][0] == ("Kim has 12 balloons. Then Kim gets 17 more balloons from Sam. "
                                     "How many balloons does Kim have now?")


@pytest.mark.parametrize(
    "cfg, words",
    [
        ({"max_number": 1}, "max_number must be an int from 2"),
        ({"max_number": True}, "max_number must be an int from 2"),
        ({"levels": [1, {"ops": 4}]}, r"levels\[1\]"),
        ({"levels": [{"ops": 1, "max_number": 0}]}, r"levels\[0\].max_number"),
        ({"levels": [{"max_number": 5}]}, r"levels\[0\]"),
        ({"levels": [{"ops": 1, "numbers": 5}]}, r"levels\[0\]"),
        ({"levels": []}, "non-empty"),
    ],
)
def test_arith_difficulty_errors_name_the_item(cfg, words):
    with pytest.raises(ValueError, match=words):
        datasets.load_problems("a", {"source": "arith", "limit": 3, **cfg})


def test_arith_via_config_with_difficulties():
    cfg = {"source": "arith", "seed": 1, "levels": [{"ops": 1, "max_number": 5}, 2], "max_number": 9, "limit": 6}
    df = datasets.load_problems("mix", cfg)
    assert df.equals(datasets.arith_problems(split="test", seed=1, levels=cfg["levels"], count=6, max_number=9))
    assert datasets.count_problems("mix", cfg) == 6


def test_arith_intermediate_values_non_negative():
    df = _arith(count=300, levels=[3])
    for meta in map(json.loads, df["metadata"]):
        # Terms are applied left to right ("k * m" binds first): every running total >= 0.
        terms = re.split(r" ([-+]) ", meta["expression"])
        total = _eval(terms[0])
        for sign, term in zip(terms[1::2], terms[2::2]):
            total += _eval(term) if sign == "+" else -_eval(term)
            assert total >= 0, meta["expression"]


def test_arith_splits_disjoint():
    train = set(_arith(split="train", count=2000)["question"])
    test = set(_arith(split="test", count=2000)["question"])
    assert not train & test
    # Disjoint even across seeds: the split is a function of the question text.
    assert not set(_arith(split="train", seed=7, count=500)["question"]) & test


def test_arith_via_config():
    cfg = {"source": "arith", "split": "train", "seed": 3, "levels": [1, 2], "limit": 12}
    df = datasets.load_problems("arith_train", cfg)
    assert df.equals(_arith(split="train", seed=3, levels=[1, 2], count=12))
    assert datasets.count_problems("arith_train", cfg) == 12
    with pytest.raises(ValueError, match="limit"):
        datasets.count_problems("a", {"source": "arith"})
    with pytest.raises(ValueError, match="limit"):
        datasets.load_problems("a", {"source": "arith"})
    with pytest.raises(ValueError, match="levels"):
        datasets.load_problems("a", {"source": "arith", "levels": [4], "limit": 3})
    with pytest.raises(ValueError, match="split"):
        datasets.load_problems("a", {"source": "arith", "split": "dev", "limit": 3})
