"""Step-level labels for the value head, made automatically from the policy's own samples.

`prms.<name>.train.supervision` chooses how the training samples' steps are labelled:

    outcome     every step gets the sample's final correctness (the grades); no step
                information, the baseline
    arith-check (arith problems only) each step's arithmetic is checked exactly; cheap
    rollouts    Math-Shepherd style (Wang et al. 2024): from every step prefix, k
                completions by the policy; a step is good if one reaches the reference
                answer; works for any dataset, costs a vLLM job (the `rollouts` rule)

arith-check (`arith_step_labels`). Every step is parsed for the equations it states
("3 + 5 = 8", "2 x 12 = 24 + 8 = 32", "(12 - 4) * 2 = 16", with x, ×, *, /, ÷, −, –,
numbers with thousands commas, "$", units between a number and its operator, trailing
units and periods) and for the other numbers it mentions; a list marker ("1. ",
"Step 2:") at the start of a step is no number of it. A step is good when, and only
when, no earlier step was bad (once wrong, the solution is wrong, as in Math-Shepherd)
and
  * every equation is right: each "=" compares the expression before it with the first
    number after it, exactly (rational arithmetic; a decimal result may be the value
    rounded to the digits it shows);
  * every equation computes a quantity of the problem's reference computation, by a
    legal step. The problem's `expression` (metadata of arith problems, "3 * 6 - 9") is
    a sum of signed terms, products being terms; its quantities (`Reference.nodes`) are
    the sums of any subset of the terms (orientated: "gives away 2 and 3" is the 5 taken
    away) and the factors of each product. Legal steps add two disjoint sums of one
    orientation, take a disjoint taken-away sum from a sum, or multiply a product's two
    factors; every number of the equation must be such a quantity. So any order of
    adding and taking away is right ("18 + 17 - 2" or "18 - 2 + 17"), while right
    arithmetic that computes something else is not: "3 + 6 = 9" in "3 * 6 - 9" adds the
    two factors and is bad although 9 is the answer. This is what labels a final
    answer right for the wrong reason bad;
  * every number it mentions is a number of the question or a quantity of the
    reference ("her bag of 10 candies" in a problem without a 10 is made up);
  * a final answer it gives ("The answer is X"; "The answer is 17 + 4 = 21" gives 21)
    equals the reference answer, and, for the last step of a whole solution, the
    solution's final answer as grading reads it (the last one given; none is wrong)
    does too, so the last step's label is the grade unless an earlier step was bad.
Division and anything else off these rules is off the path: arith problems have none.

rollouts (`rollout_requests`, `rollout_rows`, `step_labels_from_rollouts`): a prefix is
the sampling prompt + the sample's text up to the end of step k + "\\n"; the policy
continues it k times (ONE batched generate call for all prefixes of all samples; the
prompt's stop strings end a continuation, checked as the text sits after that "\\n").
A step whose prefix already holds a final answer is not rolled out: its label is
whether that answer is right. A step's estimate is reached / k, the share of
completions whose final answer equals the reference. `label: hard` (default) trains on
1 if any completion reached it (Math-Shepherd's hard estimate, which the paper found
as good as the soft one for verification), `label: soft` on the share.

Rollouts (results/rollouts/{dataset}/{model}/{key}/rollouts.parquet, protected; `key`
hashes the training cache key and the rollout settings k, max_tokens, temperature,
top_p, so a changed setting writes a new folder), one row per training sample x step:
    problem_id     str
    sample_idx     int32
    step           int32         0-based step index
    kind           str           "rollouts" (continued k times) | "answer" (the prefix
                                 holds a final answer; k = 1, reached = its correctness)
    k              int32         completions
    reached        int32         completions whose final answer equals the reference
    output_tokens  int64         tokens the completions generated
    completions    list[str]     the continuations (empty for kind "answer")
    answers        list[str]     their normalised final answers (null: none)

Labels for training (`training_labels`): one target per step of every training sample,
in [0, 1], or None for outcome supervision (then every step gets the grade).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from pipeline import grading, io, prompts
from pipeline.prm.positions import split_steps

SUPERVISIONS = ("outcome", "rollouts", "arith-check")
ROLLOUT_DEFAULTS = {"k": 4, "max_tokens": 96, "temperature": 0.7, "top_p": 0.95, "label": "hard"}
# What the rollouts depend on besides the training cache (the rollout cache key); the
# label choice (hard / soft) only changes how training reads them.
ROLLOUT_KEY_SETTINGS = ("k", "max_tokens", "temperature", "top_p")

ROLLOUTS = {
    "problem_id": pl.String,
    "sample_idx": pl.Int32,
    "step": pl.Int32,
    "kind": pl.String,
    "k": pl.Int32,
    "reached": pl.Int32,
    "output_tokens": pl.Int64,
    "completions": pl.List(pl.String),
    "answers": pl.List(pl.String),
}


def supervision_of(spec: dict) -> str:
    """The value-head entry's supervision (default outcome)."""
    return spec.get("train", {}).get("supervision", "outcome")


def rollout_settings(spec: dict) -> dict:
    """The entry's rollout settings with defaults filled in."""
    return {**ROLLOUT_DEFAULTS, **spec.get("train", {}).get("rollouts", {})}


def check_config(name: str, spec: dict) -> None:
    """What the schema cannot say about a value head's supervision (workflow-parse time)."""
    train = spec.get("train", {})
    where = f"prms.{name}.train"
    sup = supervision_of(spec)
    if sup == "arith-check" and train.get("dataset", {}).get("source") != "arith":
        raise ValueError(
            f"{where}.supervision: arith-check checks arithmetic problems only, but "
            f"{where}.dataset has source {train.get('dataset', {}).get('source')!r}; use "
            "supervision: rollouts (any dataset) or outcome"
        )
    if "rollouts" in train and sup != "rollouts":
        raise ValueError(f"{where}.rollouts: only used with supervision: rollouts (this entry has {sup!r})")


# --------------------------------------------------------------------------- arith-check

_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+"
_TOKEN = re.compile(
    rf"(?P<num>\$?(?:{_NUM}))"
    r"|(?P<op>[+\-−–*×·/÷])"
    r"|(?P<x>(?<![A-Za-z])[xX](?![A-Za-z])(?=\s*[\d($]))"
    r"|(?P<eq>=)"
    r"|(?P<lp>\()|(?P<rp>\))"
    r"|(?P<word>[A-Za-z]+)"
    r"|(?P<space>\s+)"
    r"|(?P<other>.)"
)
_OPS = {"+": "+", "-": "-", "−": "-", "–": "-", "*": "*", "×": "*", "·": "*", "x": "*", "X": "*", "/": "/", "÷": "/"}
_LIST_MARKER = re.compile(r"^\s*(?:step\s*)?\d+\s*[.):]\s+", re.IGNORECASE)
_UNIT_WORDS = 3  # words allowed between a number and the operator or "=" after it ("4 boxes x 5")


@dataclass(frozen=True)
class _Tok:
    kind: str  # num | op | eq | lp | rp | word | stop
    value: Any = None


def _number(text: str) -> Fraction:
    return Fraction(text.lstrip("$").replace(",", ""))


def _decimals(text: str) -> int:
    text = text.lstrip("$").replace(",", "")
    return len(text.split(".", 1)[1]) if "." in text else 0


def _tokens(step: str) -> list[_Tok]:
    """The step as numbers, operators, "=", parentheses, words and breaks."""
    out: list[_Tok] = []
    for m in _TOKEN.finditer(step):
        kind = m.lastgroup
        text = m.group()
        if kind == "num":
            # "29." is 29 and a full stop: a decimal part needs digits
            out.append(_Tok("num", (_number(text), _decimals(text))))
        elif kind in ("op", "x"):
            # a lone "x" is a times sign only before a number ("4 x 5", "4 boxes x 5")
            out.append(_Tok("op", _OPS[text]))
        elif kind in ("eq", "lp", "rp", "word"):
            out.append(_Tok(kind, text))
        elif kind == "space":
            continue
        else:
            out.append(_Tok("stop", text))
    return out


Ast = tuple  # ("num", value) | ("op", "+-*/", left, right) | ("neg", child)


class _Parser:
    """Recursive descent over a token run: expr := term (('+'|'-') term)*,
    term := factor (('*'|'/') factor)*, factor := num | '-' factor | '(' expr ')'.
    Words right after a number are skipped when an operator or "=" follows them (units).
    Each method returns the expression tree, or None where the run is no expression."""

    def __init__(self, toks: list[_Tok], start: int):
        self.toks, self.i = toks, start

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def skip_units(self) -> None:
        j = self.i
        while j < len(self.toks) and j - self.i < _UNIT_WORDS and self.toks[j].kind == "word":
            j += 1
        if j > self.i and j < len(self.toks) and self.toks[j].kind in ("op", "eq"):
            self.i = j

    def factor(self) -> Ast | None:
        t = self.peek()
        if t is None:
            return None
        if t.kind == "num":
            self.i += 1
            self.skip_units()
            return ("num", t.value[0])
        if t.kind == "op" and t.value == "-":
            self.i += 1
            v = self.factor()
            return None if v is None else ("neg", v)
        if t.kind == "lp":
            self.i += 1
            v = self.expr()
            if v is None or self.peek() is None or self.peek().kind != "rp":
                return None
            self.i += 1
            self.skip_units()
            return v
        return None

    def _binary(self, sub, ops: str) -> Ast | None:
        v = sub()
        while v is not None and (t := self.peek()) is not None and t.kind == "op" and t.value in ops:
            self.i += 1
            rhs = sub()
            v = None if rhs is None else ("op", t.value, v, rhs)
        return v

    def term(self) -> Ast | None:
        return self._binary(self.factor, "*/")

    def expr(self) -> Ast | None:
        return self._binary(self.term, "+-")


def evaluate(ast: Ast) -> Fraction | None:
    """The exact value of an expression tree (None: division by zero)."""
    if ast[0] == "num":
        return ast[1]
    if ast[0] == "neg":
        v = evaluate(ast[1])
        return None if v is None else -v
    a, b = evaluate(ast[2]), evaluate(ast[3])
    if a is None or b is None:
        return None
    if ast[1] == "/":
        return None if b == 0 else a / b
    return {"+": a + b, "-": a - b, "*": a * b}[ast[1]]


def numbers_of(ast: Ast) -> list[Fraction]:
    if ast[0] == "num":
        return [ast[1]]
    if ast[0] == "neg":
        return numbers_of(ast[1])
    return numbers_of(ast[2]) + numbers_of(ast[3])


@dataclass(frozen=True)
class Equation:
    """One "=" of a step: the expression before it, its exact value, and the number after
    it (with the decimals it shows)."""

    lhs: Ast
    value: Fraction | None
    rhs: Fraction
    rhs_decimals: int

    @property
    def correct(self) -> bool:
        if self.value is None:
            return False
        if self.rhs_decimals == 0:
            return self.value == self.rhs
        # "10 / 3 = 3.33": a decimal result may be the value rounded to the digits shown
        return abs(self.value - self.rhs) <= Fraction(1, 2 * 10 ** self.rhs_decimals)


def parse_step(step: str) -> tuple[list[Equation], list[Fraction]]:
    """The equations a step states, in order, and every number it mentions (operands,
    results and the rest), without a leading list marker."""
    step = _LIST_MARKER.sub("", step, count=1)
    toks = _tokens(step)
    numbers = [t.value[0] for t in toks if t.kind == "num"]
    equations: list[Equation] = []
    i = 0
    while i < len(toks):
        if toks[i].kind not in ("num", "lp") and not (toks[i].kind == "op" and toks[i].value == "-"):
            i += 1
            continue
        p = _Parser(toks, i)
        lhs = p.expr()
        if lhs is None or p.peek() is None or p.peek().kind != "eq":
            i += 1
            continue
        # a chain "a op b = c op d = e": each "=" compares the expression before it with
        # the first number after it
        while lhs is not None and p.peek() is not None and p.peek().kind == "eq":
            p.i += 1
            nxt = p.peek()
            if nxt is None or nxt.kind != "num":
                break
            equations.append(Equation(lhs, evaluate(lhs), nxt.value[0], nxt.value[1]))
            lhs = p.expr()
        i = max(p.i, i + 1)
    return equations, numbers


# A quantity of the reference computation: ("sum", terms, orientation) is the sum of the
# signed terms with these indices, times orientation (+1, or -1 for an amount taken
# away: "gives away 3 and 4", 7); ("factor", term, position) a factor of a product term.
Node = tuple


class Reference:
    """The reference computation of an arith problem, from its `expression` ("3 * 6 - 9"):
    a sum of signed terms, products ("k * m") being terms. `nodes` are the quantities a
    correct solution may state, `combine` the legal ways to compute one from others."""

    def __init__(self, expression: str):
        self.factors: list[list[Fraction]] = []  # of every term
        self.signs: list[int] = []
        sign, need_number, new_term = 1, True, True
        for t in _tokens(expression):
            if need_number and t.kind == "num":
                if new_term:
                    self.factors.append([])
                    self.signs.append(sign)
                self.factors[-1].append(t.value[0])
                need_number = False
            elif not need_number and t.kind == "op" and t.value in "+-*":
                new_term = t.value != "*"
                sign = -1 if t.value == "-" else 1
                need_number = True
            else:
                raise ValueError(f"arith-check: cannot read the reference expression {expression!r}")
        if need_number:
            raise ValueError(f"arith-check: cannot read the reference expression {expression!r}")
        self.terms = [self.signs[i] * math.prod(f) for i, f in enumerate(self.factors)]
        self.nodes: dict[Node, Fraction] = {}
        idx = range(len(self.terms))
        for r in range(1, len(self.terms) + 1):
            for subset in itertools.combinations(idx, r):
                total = sum((self.terms[i] for i in subset), Fraction(0))
                for orient in (1, -1):
                    if orient * total >= 0:
                        self.nodes[("sum", frozenset(subset), orient)] = orient * total
        for i, f in enumerate(self.factors):
            if len(f) > 1:
                for j, v in enumerate(f):
                    self.nodes[("factor", i, j)] = v
        self.values = set(self.nodes.values())

    def of_value(self, value: Fraction) -> set[Node]:
        return {n for n, v in self.nodes.items() if v == value}

    def combine(self, ast: Ast) -> set[Node]:
        """The nodes an expression tree can stand for when every number in it is a node
        and every operation a legal step: adding two disjoint sums of one orientation,
        taking away a disjoint sum of the other orientation, multiplying the two
        factors of one product term. Empty: off the reference path."""
        if ast[0] == "num":
            return self.of_value(ast[1])
        if ast[0] != "op" or ast[1] == "/":
            return set()
        left, right = self.combine(ast[2]), self.combine(ast[3])
        out: set[Node] = set()
        for a in left:
            for b in right:
                if ast[1] == "*":
                    if a[0] == b[0] == "factor" and a[1] == b[1] and a[2] != b[2] and len(self.factors[a[1]]) == 2:
                        out.add(("sum", frozenset([a[1]]), self.signs[a[1]]))
                elif a[0] == b[0] == "sum" and not (a[1] & b[1]):
                    orient = a[2] if ast[1] == "+" else -a[2]
                    if b[2] == orient:
                        node = ("sum", a[1] | b[1], a[2])
                        if node in self.nodes:
                            out.add(node)
        return out


def question_numbers(question: str) -> set[Fraction]:
    return {t.value[0] for t in _tokens(question) if t.kind == "num"}


def arith_step_labels(question: str, expression: str, answer: str, steps: Sequence[str], *,
                      whole: bool = True) -> list[int]:
    """1 (good) or 0 (bad) for every step of a solution (see the module docstring).
    `whole`: the steps are a whole solution, so its last step is good only if the
    solution's final answer (the last one it gives, as grading reads it) is right."""
    ref = Reference(expression)
    grounded = question_numbers(question) | ref.values
    reference = grading.normalize(str(answer))

    def right(found: str | None) -> bool:
        got = grading.normalize(found) if found is not None else ""
        return bool(got) and grading.equivalent(got, reference)

    labels: list[int] = []
    wrong = False
    for k, step in enumerate(steps):
        if not wrong:
            equations, numbers = parse_step(step)
            good = all(e.correct and ref.combine(e.lhs) for e in equations)
            # every number the step mentions is a quantity of the problem ("her bag of 10
            # candies" in a problem without a 10 is made up)
            good = good and all(n in grounded for n in numbers)
            found = grading.extract_answer(step)
            if good and found is not None:
                # "The answer is 17 + 4 = 21 oranges": the answer is what the equation gives
                good = right(found.rsplit("=", 1)[-1])
            if good and whole and k == len(steps) - 1:
                good = right(grading.extract_answer("\n".join(steps)))
            wrong = not good
        labels.append(0 if wrong else 1)
    return labels


def arith_expression(metadata: str | None, where: str) -> str:
    """The reference expression in an arith problem's metadata."""
    try:
        meta = json.loads(metadata or "{}")
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: metadata is not JSON ({exc})") from None
    if not isinstance(meta, dict) or "expression" not in meta:
        raise ValueError(f"{where}: no `expression` in the problem's metadata (arith-check needs arith problems)")
    return str(meta["expression"])


def arith_labels_for(samples: pl.DataFrame, problems: pl.DataFrame) -> list[list[int]]:
    """arith-check labels for every row of `samples` (SAMPLES rows of arith problems)."""
    info = {
        pid: (q, arith_expression(m, f"problem {pid}"), a)
        for pid, q, a, m in problems.select("problem_id", "question", "answer", "metadata").iter_rows()
    }
    out = []
    for pid, text, ends in samples.select("problem_id", "text", "step_ends").iter_rows():
        q, expr, ans = info[pid]
        out.append(arith_step_labels(q, expr, ans, split_steps(text, ends)))
    return out


def is_arith(problems: pl.DataFrame) -> bool:
    """Whether every problem carries an arith `expression` (so arith-check applies)."""
    if "metadata" not in problems.columns or problems.height == 0:
        return False
    for m in problems["metadata"]:
        try:
            meta = json.loads(m or "{}")
        except json.JSONDecodeError:
            return False
        if not isinstance(meta, dict) or "expression" not in meta:
            return False
    return True


# --------------------------------------------------------------------------- rollouts


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int


class Completer(Protocol):
    def complete(self, contexts: list[str], k: int) -> list[list[Completion]]:
        """`k` sampled continuations of every context."""


@dataclass(frozen=True)
class Prefix:
    problem_id: str
    sample_idx: int
    step: int
    context: str | None  # None: the prefix holds a final answer (not rolled out)
    answer: str | None  # that answer, normalised


def rollout_requests(samples: pl.DataFrame, problems: pl.DataFrame, render) -> list[Prefix]:
    """One Prefix per step of every sample with steps, in sample order. `render(question)`
    is the sampling prompt of a question."""
    questions = dict(zip(problems["problem_id"], problems["question"]))
    out: list[Prefix] = []
    rows = samples.filter(pl.col("step_ends").list.len() > 0).sort("problem_id", "sample_idx")
    prompts_: dict[str, str] = {}
    for pid, idx, text, ends in rows.select("problem_id", "sample_idx", "text", "step_ends").iter_rows():
        if pid not in questions:
            raise ValueError(f"rollouts: problem {pid!r} of the samples is not in the problems file")
        prompt = prompts_.setdefault(pid, render(questions[pid]))
        for k, end in enumerate(ends):
            head = text[:end]
            found = grading.extract_answer(head)
            if found is not None:
                out.append(Prefix(pid, idx, k, None, grading.normalize(found) or None))
            else:
                out.append(Prefix(pid, idx, k, prompt + head + "\n", None))
    return out


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The continuation up to the first stop string, looking at it as it sits after the
    prefix's newline (stop strings such as "\\n\\n" start with that newline)."""
    framed = "\n" + text
    cut = min((framed.find(s) for s in stop if s and s in framed), default=-1)
    return framed[1:max(cut, 1)] if cut >= 0 else text


def rollout_rows(prefixes: Sequence[Prefix], problems: pl.DataFrame, completer: Completer, *, k: int,
                 stop: Sequence[str]) -> pl.DataFrame:
    """ROLLOUTS rows: every prefix without an answer continued `k` times in ONE call."""
    if k < 1:
        raise ValueError(f"rollouts: k must be >= 1, got {k}")
    reference = dict(zip(problems["problem_id"], problems["answer"]))
    todo = [p for p in prefixes if p.context is not None]
    got = completer.complete([p.context for p in todo], k) if todo else []
    if len(got) != len(todo):
        raise RuntimeError(f"rollouts: {len(todo)} prefixes continued, {len(got)} results")
    by_prefix = dict(zip(((p.problem_id, p.sample_idx, p.step) for p in todo), got))
    verdicts: dict[tuple[str, str], bool] = {}

    def right(pid: str, answer: str | None) -> bool:
        if not answer:
            return False
        if (pid, answer) not in verdicts:
            verdicts[(pid, answer)] = grading.equivalent(answer, str(reference[pid]))
        return verdicts[(pid, answer)]

    rows: dict[str, list] = {c: [] for c in ROLLOUTS}
    for p in prefixes:
        if p.context is None:
            kind, n, reached, tokens, texts, answers = "answer", 1, int(right(p.problem_id, p.answer)), 0, [], []
        else:
            comps = by_prefix[(p.problem_id, p.sample_idx, p.step)]
            if len(comps) != k:
                raise RuntimeError(f"rollouts: {len(comps)} completions for problem {p.problem_id} "
                                   f"sample {p.sample_idx} step {p.step}, asked for {k}")
            texts = [cut_at_stop(c.text, stop) for c in comps]
            answers = []
            for t in texts:
                found = grading.extract_answer(t)
                answers.append((grading.normalize(found) or None) if found is not None else None)
            kind, n, tokens = "rollouts", k, sum(c.tokens for c in comps)
            reached = sum(right(p.problem_id, a) for a in answers)
        rows["problem_id"].append(p.problem_id)
        rows["sample_idx"].append(p.sample_idx)
        rows["step"].append(p.step)
        rows["kind"].append(kind)
        rows["k"].append(n)
        rows["reached"].append(reached)
        rows["output_tokens"].append(tokens)
        rows["completions"].append(texts)
        rows["answers"].append(answers)
    return pl.DataFrame(rows, schema=ROLLOUTS)


def step_labels_from_rollouts(samples: pl.DataFrame, rollouts: pl.DataFrame, *, label: str = "hard",
                              where: str = "rollouts") -> list[list[float]]:
    """One target per step of every row of `samples`: hard (1 if any completion reached
    the reference answer) or soft (the share that did)."""
    if label not in ("hard", "soft"):
        raise ValueError(f"rollouts label must be hard or soft, got {label!r}")
    est = {
        (pid, idx, step): (reached / k if label == "soft" else float(reached > 0))
        for pid, idx, step, k, reached in rollouts.select("problem_id", "sample_idx", "step", "k", "reached").iter_rows()
    }
    out = []
    for pid, idx, ends in samples.select("problem_id", "sample_idx", "step_ends").iter_rows():
        row = []
        for step in range(len(ends)):
            if (pid, idx, step) not in est:
                raise ValueError(
                    f"{where}: no rollout for problem {pid!r} sample {idx} step {step} (rollouts made from "
                    "other training samples? delete the rollouts folder to redo them)"
                )
            row.append(est[(pid, idx, step)])
        out.append(row)
    return out


def training_labels(spec: dict, samples: pl.DataFrame, problems: pl.DataFrame,
                    rollouts: str | None = None) -> list[list[float]] | None:
    """Targets per step for `samples` under the entry's supervision (None: outcome)."""
    sup = supervision_of(spec)
    if sup == "outcome":
        return None
    if sup == "arith-check":
        return [[float(v) for v in row] for row in arith_labels_for(samples, problems)]
    if sup == "rollouts":
        if rollouts is None:
            raise ValueError("supervision rollouts: the training job got no rollouts file (--rollouts)")
        return step_labels_from_rollouts(samples, pl.read_parquet(rollouts), label=rollout_settings(spec)["label"],
                                         where=rollouts)
    raise ValueError(f"unknown supervision {sup!r}; known: {SUPERVISIONS}")


# --------------------------------------------------------------------------- the vLLM edge


class VLLMCompleter:
    """`Completer` on a vLLM engine: one `LLM.generate` call for all contexts."""

    def __init__(self, llm: Any, settings: dict, stop: Sequence[str]):
        self.llm, self.settings, self.stop = llm, settings, list(stop)

    def complete(self, contexts: list[str], k: int) -> list[list[Completion]]:
        from pipeline import generate

        params = generate.sampling_params(self.settings, n=k, stop=self.stop)
        outputs = self.llm.generate(contexts, params)
        return [[Completion(c.text, len(c.token_ids)) for c in sorted(o.outputs, key=lambda c: c.index)]
                for o in outputs]


def run_rollouts(*, spec: dict, model_dir: str, problems: str, shards: list[str], out: str) -> None:
    """The rollouts job: continue every step prefix of the training samples, write ROLLOUTS."""
    from pipeline import generate, search

    settings = spec["rollouts"]
    prompt = spec["prompt"]
    samples = pl.concat([pl.read_parquet(f) for f in shards])
    probs = pl.read_parquet(problems)
    # search.engine_args: small KV blocks on CPU, so prefix caching shares each sample's
    # path among its step prefixes as it does a node's path in tree search
    llm = generate.make_engine(model_dir, seed=generate.engine_seed(spec["key"], "rollouts"),
                               engine_args=search.engine_args(spec.get("engine_args")))
    tokenizer = llm.get_tokenizer() if prompt.get("format") == "chat" else None
    prefixes = rollout_requests(samples, probs, lambda q: prompts.render(prompt, q, tokenizer))
    sampling = {**settings, "seed": spec.get("seed", 0)}
    df = rollout_rows(prefixes, probs, VLLMCompleter(llm, sampling, prompt.get("stop", [])),
                      k=int(settings["k"]), stop=prompt.get("stop", []))
    io.write_json({"key": spec["key"], "train_key": spec["train_key"], "rollouts": settings, "prompt": prompt,
                   "engine_args": spec.get("engine_args", {})}, Path(out).parent / "key.json")
    io.write_parquet(df, out)
    rolled = df.filter(pl.col("kind") == "rollouts")
    print(f"{rolled.height} prefixes x {settings['k']} completions ({rolled['output_tokens'].sum()} tokens), "
          f"{df.height - rolled.height} answer steps; steps reached: "
          f"{(df['reached'] > 0).mean():.3f} -> {out}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="step labels: Math-Shepherd rollouts of the training samples")
    ap.add_argument("what", choices=["rollouts"])
    ap.add_argument("--spec", required=True, help="JSON from pipeline.plan.Rollouts.spec")
    ap.add_argument("--info", required=True, help="policy model info.json")
    ap.add_argument("--problems", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("shards", nargs="+")
    a = ap.parse_args(argv)
    from pipeline import models

    run_rollouts(spec=json.loads(a.spec), model_dir=models.model_dir_of(a.info), problems=a.problems,
                 shards=a.shards, out=a.out)


if __name__ == "__main__":  # vLLM's spawned workers re-import the main module
    main()
