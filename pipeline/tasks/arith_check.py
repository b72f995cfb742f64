"""arith-check: exact step labels for arith problems, by checking each step's arithmetic.

The cheap labeller of `prms.<name>.train.supervision: arith-check` (pipeline/prm/labels.py),
and the yardstick every PRM's step scores are compared on for arith data
(pipeline/analysis/prm_quality.py). Needs each problem's reference `expression` ("3 * 6 - 9",
metadata of the arith generator's problems, pipeline/tasks/datasets.py).

Every step is parsed for the equations it states ("3 + 5 = 8", "2 x 12 = 24 + 8 = 32",
"(12 - 4) * 2 = 16", with x, ×, *, /, ÷, −, –, numbers with thousands commas, "$", units
between a number and its operator, trailing units and periods) and for the other
numbers it mentions; a list marker ("1. ", "Step 2:") at the start of a step is no
number of it. A step is good when, and only when, no earlier step was bad (once wrong,
the solution is wrong, as in Math-Shepherd) and
  * every equation is right: each "=" compares the expression before it with the first
    number after it, exactly (rational arithmetic; a decimal result may be the value
    rounded to the digits it shows);
  * every equation computes a quantity of the problem's reference computation, by a
    legal step. The reference expression is a sum of signed terms, products being
    terms; its quantities (`Reference.nodes`) are the sums of any subset of the terms
    (orientated: "gives away 2 and 3" is the 5 taken away) and the factors of each
    product. Legal steps add two disjoint sums of one orientation, take a disjoint
    taken-away sum from a sum, or multiply a product's two factors; every number of the
    equation must be such a quantity. So any order of adding and taking away is right
    ("18 + 17 - 2" or "18 - 2 + 17"), while right arithmetic that computes something
    else is not: "3 + 6 = 9" in "3 * 6 - 9" adds the two factors and is bad although 9
    is the answer. This is what labels a final answer right for the wrong reason bad;
  * every number it mentions is a number of the question or a quantity of the
    reference ("her bag of 10 candies" in a problem without a 10 is made up);
  * a final answer it gives ("The answer is X"; "The answer is 17 + 4 = 21" gives 21)
    equals the reference answer, and, for the last step of a whole solution, the
    solution's final answer as grading reads it (the last one given; none is wrong)
    does too, so the last step's label is the grade unless an earlier step was bad.
Division and anything else off these rules is off the path: arith problems have none.

Public: `step_labels` (one solution's steps), `labels_for` (SAMPLES rows), `is_arith`
(whether a problems table carries expressions), `parse_step`, `Reference`.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import polars as pl

from pipeline.core.prompts import split_steps
from pipeline.tasks import answers

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


def step_labels(question: str, expression: str, answer: str, steps: Sequence[str], *,
                      whole: bool = True) -> list[int]:
    """1 (good) or 0 (bad) for every step of a solution (see the module docstring).
    `whole`: the steps are a whole solution, so its last step is good only if the
    solution's final answer (the last one it gives, as grading reads it) is right."""
    ref = Reference(expression)
    grounded = question_numbers(question) | ref.values
    reference = answers.normalize(str(answer))

    def right(found: str | None) -> bool:
        got = answers.normalize(found) if found is not None else ""
        return bool(got) and answers.equivalent(got, reference)

    labels: list[int] = []
    wrong = False
    for k, step in enumerate(steps):
        if not wrong:
            equations, numbers = parse_step(step)
            good = all(e.correct and ref.combine(e.lhs) for e in equations)
            # every number the step mentions is a quantity of the problem ("her bag of 10
            # candies" in a problem without a 10 is made up)
            good = good and all(n in grounded for n in numbers)
            found = answers.extract_answer(step)
            if good and found is not None:
                # "The answer is 17 + 4 = 21 oranges": the answer is what the equation gives
                good = right(found.rsplit("=", 1)[-1])
            if good and whole and k == len(steps) - 1:
                good = right(answers.extract_answer("\n".join(steps)))
            wrong = not good
        labels.append(0 if wrong else 1)
    return labels


def expression_of(metadata: str | None, where: str) -> str:
    """The reference expression in an arith problem's metadata."""
    try:
        meta = json.loads(metadata or "{}")
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: metadata is not JSON ({exc})") from None
    if not isinstance(meta, dict) or "expression" not in meta:
        raise ValueError(f"{where}: no `expression` in the problem's metadata (arith-check needs arith problems)")
    return str(meta["expression"])


def labels_for(samples: pl.DataFrame, problems: pl.DataFrame) -> list[list[int]]:
    """arith-check labels for every row of `samples` (SAMPLES rows of arith problems)."""
    info = {
        pid: (q, expression_of(m, f"problem {pid}"), a)
        for pid, q, a, m in problems.select("problem_id", "question", "answer", "metadata").iter_rows()
    }
    out = []
    for pid, text, ends in samples.select("problem_id", "text", "step_ends").iter_rows():
        q, expr, ans = info[pid]
        out.append(step_labels(q, expr, ans, split_steps(text, ends)))
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
