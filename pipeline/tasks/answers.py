"""Answer extraction, normalisation and equivalence for grading math completions.

`equivalent` is the single comparison used everywhere (correctness and voting), so
majority voting and correctness can never disagree about what "the same answer" means.

Rules worth knowing (MATH answers are exact values):
* A trailing step tag " ки" (MetaMath / Math-Shepherd style policies end with
  "The answer is: X ки") is not part of the answer.
* Numbers compare by exact value: 0.5 == \\frac12 == 1/2, 1.25 == \\frac54, but a
  rounded decimal of a value without a finite decimal form is a different answer
  (4.666667 != \\frac{14}{3}, 7.141428 != \\sqrt{51}). math-verify rounds floats to 6
  places before comparing; we hand it the decimals as exact rationals instead, so the
  same holds inside matrices, tuples, sets, intervals and equations.
* Digit-group separators are formatting: 11,\\! 111,\\! 111,\\! 100 == 11111111100,
  1,000,000 == 1000000 (a comma followed by exactly three digits, no space).
* Words compare case-insensitively (\\text{east} == East); single letters do not
  (they are variables or choice labels).
* LaTeX is read as TeX reads it: \\sqrt51 is \\sqrt{5}1 and \\frac123 is \\frac{1}{2}3.
* A percentage p\\% (also p%, "p percent", p\\text{\\%}) equals both p and p/100, in
  either order (10\\% == 10 and 10\\% == 0.1; 12.5\\% == 12.5 and 12.5\\% == \\frac18),
  and another percentage only with the same p (10\\% != 0.1\\%). So equivalence is not
  transitive there: 10 != 0.1, though both equal 10\\%.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
from decimal import Decimal, InvalidOperation
from fractions import Fraction

import polars as pl

from pipeline.core import schemas
from pipeline.core.progress import progress

# Longer "answers" are almost always runaway text; sympy on them is slow and pointless.
_MAX_VERIFY_CHARS = 1000
_VERIFY_TIMEOUT_S = 5

# GSM8K calculator annotations ("<<2*3=6>>") carry an "=" and the intermediate result,
# which would otherwise read as part of the answer.
_ANNOTATION = re.compile(r"<<[^<>]*>>")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOXED_BARE = re.compile(r"\\boxed[ \t]+([^\s${}]+)")
# Only "the/final answer is": "so our answer is correct" must not read as an answer.
_ANSWER_IS = re.compile(r"\b(?:the|final)\s+answer\s+is\s*:?[ \t]*([^\n]*)", re.IGNORECASE)
_HASHES = re.compile(r"####[ \t]*([^\n]*)")
# OpenAI's GSM8K example model solutions end with an "A: 18" line instead of "####".
_A_LINE = re.compile(r"^[ \t]*A:[ \t]*([^\n]*)", re.MULTILINE)

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_FRACTION = re.compile(r"([+-]?\d+)/(\d+)")
_REPEATING = re.compile(r"([+-]?)(\d*)\.(\d*)\\overline\{(\d+)\}")
_NUM_PREFIX = r"[+-]?(?:\d+\.?\d*|\.\d+)"
# The step tag of MetaMath-style policies ("The answer is: 3 ки"), possibly repeated.
_STEP_TAG = re.compile(r"(?:\s*ки)+\s*$")
# A thin space ("1\,000") but not a LaTeX row break "\\" followed by a space or comma.
_THIN_SPACE = re.compile(r"\\\\|\\[,;: ]")
# A text answer: a word or phrase of letters (3+ letters: "ab" may be a product of variables).
_WORDS = re.compile(r"[A-Za-z]{3,}(?: [A-Za-z]+)*")
# A percentage: its value, then a percent sign however written (normalised to "p%").
_PERCENT = re.compile(
    r"(.*?\S)\s*(?:\\?%|\\(?:text|mbox|mathrm)\s*\{\s*(?:\\?%|percent)\s*\}|percent)"
)


def _balanced(text: str, open_at: int) -> tuple[str, int] | None:
    """Content of the brace group opening at `open_at` and the index after it; None if unclosed."""
    depth = 0
    i = open_at
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2  # an escaped brace (\{ in a set) must not count toward nesting
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : i], i + 1
        i += 1
    return None


def _boxed_candidates(text: str) -> list[tuple[int, str]]:
    out = []
    for m in _BOXED.finditer(text):
        got = _balanced(text, m.end() - 1)
        if got is not None:
            out.append((m.start(), got[0]))
    out.extend((m.start(), m.group(1)) for m in _BOXED_BARE.finditer(text))
    return out


def _answer_is_value(rest: str) -> str:
    """Cut the text after "the answer is" down to the answer itself."""
    rest = rest.strip().lstrip("*").strip()
    if rest.startswith("$"):
        # Inline math ends at its closing dollar; periods inside it are decimals.
        inner = rest.lstrip("$")
        close = inner.find("$")
        return inner if close < 0 else inner[:close]
    if rest.startswith("\\("):
        close = rest.find("\\)")
        return rest[2:] if close < 0 else rest[2:close]
    # A sentence ends at a period followed by space/end; "3.5" keeps its point.
    end = re.search(r"\.(?:\s|$)", rest)
    return rest if end is None else rest[: end.start()]


def _clean(answer: str) -> str:
    answer = _STEP_TAG.sub("", _ANNOTATION.sub("", answer)).strip()
    answer = answer.strip("*").strip()  # markdown bold around the answer
    # Sentence-final period and closing math delimiters; an escaped "\$" is content.
    while answer.endswith((".", "$")) and not answer.endswith("\\$"):
        answer = answer[:-1].rstrip()
    return answer.lstrip("$").strip()


def extract_answer(text: str) -> str | None:
    """Final answer of a completion: the last "answer is" / \\boxed / #### / "A:" marker, else None."""
    try:
        if not isinstance(text, str) or not text:
            return None
        candidates = _boxed_candidates(text)
        for m in _ANSWER_IS.finditer(text):
            value = m.group(1)
            # "The answer is $\boxed{5}$" is also a boxed candidate further right; the
            # boxed one wins by position, so this value only matters without a box.
            candidates.append((m.start(), _answer_is_value(value)))
        candidates.extend((m.start(), m.group(1)) for m in _HASHES.finditer(text))
        candidates.extend((m.start(), m.group(1)) for m in _A_LINE.finditer(text))
        # A marker with nothing after it (truncated output) should not hide an earlier answer.
        for _, raw in sorted(candidates, key=lambda c: c[0], reverse=True):
            answer = _clean(raw)
            if answer:
                return answer
        return None
    except Exception:
        return None


def _unwrap(s: str) -> str:
    """Remove wrappers that enclose the whole answer: $..$, \\(..\\), \\[..\\], \\boxed{..}, \\text{..}."""
    while True:
        before = s
        s = s.strip()
        if len(s) >= 2 and s[0] == "$" and s[-1] == "$":
            s = s.strip("$")
        for a, b in (("\\(", "\\)"), ("\\[", "\\]")):
            if s.startswith(a) and s.endswith(b):
                s = s[len(a) : -len(b)]
        m = re.match(r"\\(?:boxed|fbox|text|textbf|mathrm|mbox)\s*\{", s)
        if m:
            got = _balanced(s, m.end() - 1)
            if got is not None and got[1] == len(s):
                s = got[0]
        if s == before:
            return s


def _canonical_number(s: str) -> str | None:
    if not _NUMBER.fullmatch(s):
        return None
    try:
        d = Decimal(s)
    except InvalidOperation:
        return None
    if d == d.to_integral_value():
        return str(int(d))  # also turns "-0" into "0"
    return format(d.normalize(), "f")


def _strip_spaces(s: str) -> str:
    # Spaces are insignificant in LaTeX except as the end of a command name ("\pi x").
    s = re.sub(r"\s+", " ", s)
    s = re.sub(r"(\\[A-Za-z]+) (?=[A-Za-z])", "\\1\x00", s)
    return s.replace(" ", "").replace("\x00", " ")


def normalize(answer: str) -> str:
    """Canonical string for grouping and fast comparison; conservative (never merges distinct values)."""
    try:
        s = _STEP_TAG.sub("", _ANNOTATION.sub("", str(answer)))
        s = _unwrap(s)
        s = s.replace("\\!", "").replace("{,}", ",").replace("\\$", "")
        s = _THIN_SPACE.sub(lambda m: m.group() if m.group() == "\\\\" else " ", s)  # "1\,000"
        s = re.sub(r"\\(?:left|right)(?![A-Za-z])", "", s)
        s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
        s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)
        s = s.strip().rstrip(".").strip().strip("$").strip()
        m = _PERCENT.fullmatch(s)
        if m and "%" not in m.group(1):
            body = normalize(m.group(1))
            return f"{body}%" if body else s
        # A trailing unit ("18 dollars", "5\text{ cm}") after a plain number is not part of the value.
        m = re.fullmatch(
            rf"({_NUM_PREFIX}|[+-]?\d{{1,3}}(?:,\d{{3}})+(?:\.\d+)?)\s*"
            r"(?:\\(?:text|mbox|mathrm)\s*\{[^{}]*\}|(?:[A-Za-z]{2,}\.?\s*)+)",
            s,
        )
        if m:
            s = m.group(1)
        # "x = 5": one assignment to a single variable; leave real equations alone.
        m = re.fullmatch(r"(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?\w+\}?)?\s*=\s*([^=<>]+)", s)
        if m:
            s = m.group(1)
        # "3 1/2" is a mixed number; with the space dropped it would read 31/2.
        s = re.sub(r"^([+-]?\d+)\s+(\d+)/(\d+)$", r"\1\\frac{\2}{\3}", s)
        s = _unwrap(_strip_spaces(s))
        # GSM8K-style "2*3=6": the value is the result, when the left side is plain arithmetic.
        m = re.fullmatch(rf"[\d.,+\-*/×()]+=({_NUM_PREFIX})", s)
        if m:
            s = m.group(1)
        if _THOUSANDS.fullmatch(s):
            s = s.replace(",", "")
        m = re.fullmatch(r"\(?([A-E])\)?", s)  # multiple-choice label "(C)" / "C"
        if m:
            s = m.group(1)
        m = re.fullmatch(r"\(([a-e])\)", s)  # "(c)": a label, not the variable c
        if m:
            s = m.group(1).upper()
        if _WORDS.fullmatch(s):
            s = s.lower()
        m = re.fullmatch(r"([+-]?)\\frac\{(\d+)\}\{(\d+)\}", s)
        if m:
            s = f"{m.group(1)}{m.group(2)}/{m.group(3)}"
        num = _canonical_number(s)
        return s if num is None else num
    except Exception:
        return str(answer).strip()


def _as_number(s: str) -> Fraction | None:
    # Exact rationals: floats would call two different 400-digit integers equal (both inf).
    if _NUMBER.fullmatch(s):
        return Fraction(s)
    m = _FRACTION.fullmatch(s)
    if m and int(m.group(2)) != 0:
        return Fraction(int(m.group(1)), int(m.group(2)))
    m = _REPEATING.fullmatch(s)
    if m:  # 0.1\overline{6} = 1/6: an exact value too
        sign, whole, fixed, cycle = m.groups()
        value = int(whole or 0) + Fraction(int(fixed or 0), 10 ** len(fixed))
        value += Fraction(int(cycle), 10 ** len(fixed) * (10 ** len(cycle) - 1))
        return -value if sign == "-" else value
    return None


def _split_top(s: str, sep: str) -> list[str]:
    """`s` split at `sep` where no brace, bracket or parenthesis is open."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        if depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            i += len(sep)
            start = i
            continue
        if s[i] in "{[(":
            depth += 1
        elif s[i] in "}])":
            depth -= 1
        i += 1
    parts.append(s[start:])
    return parts


def _vector(s: str) -> tuple[str, list[str]] | None:
    """A vector's kind and entries: a one-column or one-row matrix ("matrix"),
    \\langle a, b \\rangle ("angle") or a parenthesised tuple of 2+ entries ("tuple")."""
    m = re.fullmatch(r"\\begin\{([pbB]?matrix)\}(.*)\\end\{\1\}", s, re.DOTALL)
    if m:
        body = m.group(2).strip().removesuffix("\\\\")
        rows = _split_top(body, "\\\\")
        if len(rows) > 1 and all("&" not in r for r in rows):
            return "matrix", rows
        if len(rows) == 1:
            cols = _split_top(rows[0], "&")
            return ("matrix", cols) if len(cols) > 1 else None
        return None
    m = re.fullmatch(r"\\langle(.*)\\rangle", s, re.DOTALL)
    if m:
        return "angle", _split_top(m.group(1), ",")
    if s.startswith("(") and s.endswith(")"):
        inner = s[1:-1]
        if _split_top(inner, ")") == [inner]:  # "(a,b)" whole, not "(a)+(b)"
            entries = _split_top(inner, ",")
            if len(entries) > 1:
                return "tuple", entries
    return None


def _same_vector(p: str, r: str) -> bool | None:
    """A column vector written as a matrix, \\langle..\\rangle or a tuple is one vector:
    compare entries (each with `_equivalent`); None when not two vectors of different notation."""
    vp, vr = _vector(p), _vector(r)
    if vp is None or vr is None or vp[0] == vr[0]:
        return None
    if len(vp[1]) != len(vr[1]):
        return False
    return all(_equivalent(a.strip(), b.strip()) for a, b in zip(vp[1], vr[1]))


def _core(answer: str) -> str:
    # A reference may arrive as a full solution or boxed; compare only its final answer.
    extracted = extract_answer(answer)
    return normalize(answer if extracted is None else extracted)


def _timeouts() -> int | None:
    # math_verify times out with signal.alarm, which only works (and is only allowed) in
    # the main thread; elsewhere we run without a timeout rather than always failing.
    return _VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=16384)
def _parsed(s: str) -> list:
    """math_verify's parse of one answer with every decimal made an exact rational,
    cached: voting compares each distinct answer many times."""
    from math_verify import parse  # heavy import (sympy); only when needed
    from math_verify.errors import TimeoutException

    timeout = _timeouts()
    try:
        # Wrapping in $..$ makes the LaTeX extractor read the whole string as one expression.
        parsed = parse(f"${s}$", parsing_timeout=timeout) or parse(s, parsing_timeout=timeout)
    except (Exception, TimeoutException):  # TimeoutException is a BaseException
        return []
    return [_exact_decimals(e) for e in parsed]


def _exact_decimals(expr: object) -> object:
    """`expr` with every sympy Float replaced by the rational its decimal digits say
    (0.15 -> 3/20). math_verify compares a float by rounding both sides to 6 places,
    which calls 4.666667 equal to 14/3; with no floats left its comparisons are exact."""
    from sympy import Float, Rational

    try:
        floats = expr.atoms(Float)  # type: ignore[attr-defined]
        if not floats:
            return expr
        # str() of a parsed Float gives back the digits it was written with.
        return expr.xreplace({f: Rational(str(f)) for f in floats if f.is_finite})  # type: ignore[attr-defined]
    except Exception:
        return expr


@functools.lru_cache(maxsize=16384)
def _value(s: str) -> complex | None:
    """Numeric value of a constant answer such as 2\\sqrt{2}; None when symbolic or unsure."""
    if "%" in s:
        return None  # a percent inside a longer answer ("10\%, 20\%"): left to math_verify
    parsed = _parsed(s)
    try:
        expr = parsed[0]
        if not getattr(expr, "is_number", False):
            return None
        v = complex(expr.evalf(30))
        return v if math.isfinite(v.real) and math.isfinite(v.imag) else None
    except Exception:
        return None


def _symbolic(expr: object) -> bool:
    from sympy import Expr

    return isinstance(expr, Expr) and bool(expr.free_symbols)


def _math_verify(pred: str, ref: str) -> bool:
    from math_verify import verify

    gold, guess = _parsed(ref), _parsed(pred)
    if not gold or not guess:
        return False
    # Clearly different constants cannot verify; skipping sympy's verify (~5 ms a pair)
    # keeps voting over many distinct answers on hard problems cheap.
    a, b = _value(ref), _value(pred)
    if a is not None and b is not None and abs(a - b) > 1e-3 * max(abs(a), abs(b), 1.0):
        return False
    # A constant never equals an expression in free variables (equations are not Expr).
    if (a is not None and _symbolic(guess[0])) or (b is not None and _symbolic(gold[0])):
        return False
    return bool(verify(gold, guess, timeout_seconds=_timeouts()))


logging.getLogger("math_verify").setLevel(logging.ERROR)


def _percent_body(s: str) -> str | None:
    """p of a normalised percentage "p%" (one percent sign, at the end); else None."""
    if s.endswith("%") and s.count("%") == 1 and len(s) > 1:
        return s[:-1]
    return None


def _hundredth(body: str) -> str:
    """body / 100 as an answer string: exact for a number, LaTeX otherwise."""
    value = _as_number(body)
    if value is None:
        return f"\\frac{{{body}}}{{100}}"
    value /= 100
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


@functools.lru_cache(maxsize=65536)
def _equivalent(pred: str, ref: str) -> bool:
    p, r = _core(pred), _core(ref)
    if not p or not r:
        return False
    pp, rp = _percent_body(p), _percent_body(r)
    if pp is not None and rp is not None:
        return _same(pp, rp)
    if pp is not None or rp is not None:
        # p% against a plain value: the same whether the value was written as p or p/100
        body, other = (pp, r) if pp is not None else (rp, p)
        return _same(body, other) or _same(_hundredth(body), other)
    return _same(p, r)


def _same(p: str, r: str) -> bool:
    """Equivalence of two normalised answers without a percent sign at the end."""
    if not p or not r:
        return False
    if p == r:
        return True
    pn, rn = _as_number(p), _as_number(r)
    if pn is not None and rn is not None:
        # Two plain numbers: exact rationals, so equality is exact (and transitive);
        # skipping sympy is the common case.
        return pn == rn
    if len(p) > _MAX_VERIFY_CHARS or len(r) > _MAX_VERIFY_CHARS:
        return False
    vector = _same_vector(p, r)
    if vector is not None:
        return vector
    return _math_verify(p, r)


def equivalent(prediction: str, reference: str) -> bool:
    """Whether two raw answer strings denote the same value; any failure or timeout is False."""
    try:
        if not isinstance(prediction, str) or not isinstance(reference, str):
            return False
        return _equivalent(prediction, reference)
    except BaseException as exc:  # math_verify's TimeoutException, sympy errors, recursion
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return False


def answer_classes(answers: list[str | None]) -> list[int]:
    """Equivalence-class id per answer (first-appearance order); None gives -1."""
    by_norm: dict[str, int] = {}
    reps: list[str] = []  # normalised representative of each class
    out = []
    for a in answers:
        if a is None:
            out.append(-1)
            continue
        n = normalize(a)
        cls = by_norm.get(n)
        if cls is None:
            cls = next((i for i, rep in enumerate(reps) if equivalent(n, rep)), None)
            if cls is None:
                cls = len(reps)
                reps.append(n)
            by_norm[n] = cls
        out.append(cls)
    return out


def grade(samples: pl.DataFrame, problems: pl.DataFrame) -> pl.DataFrame:
    """Grade every sample against its problem's reference; rows follow `problems` order, then sample_idx."""
    order: dict[str, int] = {}
    reference: dict[str, str] = {}
    for i, (pid, ans) in enumerate(zip(problems["problem_id"].to_list(), problems["answer"].to_list())):
        if pid in order:
            raise ValueError(f"grade: duplicate problem_id {pid!r} in problems")
        order[pid] = i
        reference[pid] = ans

    pids = samples["problem_id"].to_list()
    unknown = sorted({p for p in pids if p not in order}, key=str)
    if unknown:
        raise ValueError(f"grade: sample problem_id(s) not in problems: {unknown[:10]}")
    # Sort first so class ids follow sample_idx, whatever order the shards were read in.
    samples = (
        samples.select("problem_id", pl.col("sample_idx").cast(pl.Int32), "text")
        .with_columns(pl.Series("_order", [order[p] for p in pids], dtype=pl.Int64))
        .sort(["_order", "sample_idx"])
    )
    pids = samples["problem_id"].to_list()

    answers = []
    for text in samples["text"].to_list():
        extracted = extract_answer(text) if text is not None else None
        n = normalize(extracted) if extracted is not None else None
        answers.append(n or None)  # an empty answer ("$$") is no answer

    rows_of: dict[str, list[int]] = {}
    for row, pid in enumerate(pids):
        rows_of.setdefault(pid, []).append(row)

    classes = [-1] * len(pids)
    correct = [False] * len(pids)
    for pid, rows in progress(rows_of.items(), desc="grade", total=len(rows_of), unit="problem"):
        cls = answer_classes([answers[r] for r in rows])
        verdict: dict[int, bool] = {}  # one equivalence check per class, not per sample
        for r, c in zip(rows, cls):
            classes[r] = c
            if c >= 0:
                if c not in verdict:
                    ref = reference[pid]
                    verdict[c] = ref is not None and equivalent(answers[r], ref)
                correct[r] = verdict[c]

    out = pl.DataFrame(
        {
            "problem_id": pl.Series(pids, dtype=pl.String),
            "sample_idx": samples["sample_idx"],
            "answer": pl.Series(answers, dtype=pl.String),
            "answer_class": pl.Series(classes, dtype=pl.Int32),
            "correct": pl.Series(correct, dtype=pl.Boolean),
        }
    )
    return schemas.conform(out, schemas.GRADES, "grades")
