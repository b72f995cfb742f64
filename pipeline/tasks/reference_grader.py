"""The answer checking of the paper's code (Wu et al., GitHub thu-wyz/inference_scaling),
re-implemented from its behaviour so that `analysis.compat` can replay its numbers.

Three functions, each reproducing one piece of that code exactly (quirks included; the
tests pin them to outputs of the original):

    grade_answer(given, truth)   `evaluate/evaluate_utils/grader.py`: the PRM800K grader
                                 as the paper's repository ships it, i.e. with its sympy
                                 check switched off. True when the MATH normaliser
                                 (`math_normalize.py`) or the PRM800K normaliser makes
                                 both strings equal; tuples compare element-wise, and
                                 then only unreduced-looking fractions written the same
                                 way count. `grade_answer("[invalid]", "[invalid]")` is
                                 True, which is what makes "[invalid]" a voting class.
    shepherd_answer(text)        `math_evaluate.py`'s extractor for the Llemma policies:
                                 the first match of `The answer is:(.+) ки`, stripped,
                                 every comma deleted; "[invalid]" without a match.
    extract_final(text)          `evaluate/data_processing/answer_extraction.py`'s
                                 `extract_answer`, which `hf_score.py` applies to every
                                 MATH / GSM8K ground truth on the sampling path: a boxed
                                 answer, the text after "he answer is", or else the last
                                 number, cleaned by its `strip_string`. On an unboxed
                                 MATH answer it keeps only the last number
                                 (\\frac{14}{3} -> "3", \\sqrt{51} -> "51", \\text{Evelyn} -> "").

The LaTeX-to-text step of the PRM800K normaliser is pylatexenc's, as in the original.
Nothing here is used by the default grading (pipeline/tasks/answers.py).
"""

from __future__ import annotations

import functools
import re

INVALID = "[invalid]"
_SHEPHERD = re.compile(r"The answer is:(.+) \u043a\u0438")


def shepherd_answer(text: str | None) -> str:
    """`math_evaluate.extract_shepherd_answer`: the answer of a "The answer is: X ки" line."""
    if text is None:
        return INVALID
    m = _SHEPHERD.search(text)
    if not m:
        return INVALID
    return m.group(1).strip().replace(",", "")


# --------------------------------------------------------------------------- MATH normaliser
# (math_normalize.py: Hendrycks' MATH equivalence normaliser)


class _Fallback(Exception):
    """The original raises here (an assert or an index error); its caller then returns
    the answer as it was before the string clean-up."""


def _fix_fracs(s: str, *, empty_fails: bool) -> str:
    """`\\frac12` -> `\\frac{1}{2}`, as both originals do. They differ only on a `\\frac`
    with nothing after it: math_normalize's indexes the empty string (its caller falls
    back: `empty_fails`), strip's returns `s` unchanged."""
    parts = s.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if not part and empty_fails:
            raise _Fallback
        if part[:1] == "{":
            out += part
            continue
        if len(part) < 2:
            return s
        a, b, rest = part[0], part[1], part[2:]
        out += "{" + a + "}" + ("{" + b + "}" if b != "{" else b) + rest
    return out


def _canonical_int(x: str) -> int | None:
    """int(x) when str(int(x)) == x (the originals accept "a/b" only in that form)."""
    try:
        v = int(x)
    except ValueError:
        return None
    return v if str(v) == x else None


def _math_fix_a_slash_b(s: str) -> str:
    parts = s.split("/")
    if len(parts) != 2:
        return s
    a, b = _canonical_int(parts[0]), _canonical_int(parts[1])
    if a is None or b is None:
        return s
    return "\\frac{" + str(a) + "}{" + str(b) + "}"


def _math_fix_sqrt(s: str) -> str:
    if "\\sqrt" not in s:
        return s
    parts = s.split("\\sqrt")
    out = parts[0]
    for part in parts[1:]:
        if not part:
            raise _Fallback
        out += "\\sqrt" + (part if part[0] == "{" else "{" + part[0] + "}" + part[1:])
    return out


def _math_strip(s: str) -> str:
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "")
    if "\\text{ " in s:  # units written as "\text{ cm}" are cut off
        parts = s.split("\\text{ ")
        if len(parts) != 2:
            raise _Fallback
        s = parts[0]
    s = s.replace("\\%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    halves = s.split("=")
    if len(halves) == 2 and len(halves[0]) <= 2:  # "k = 5"
        s = halves[1]
    s = _math_fix_sqrt(s)
    s = s.replace(" ", "")
    s = _fix_fracs(s, empty_fails=True)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _math_fix_a_slash_b(s)


_TEXT_WRAPPED = re.compile(r"^\\text\{(?P<text>.+?)\}$")


@functools.lru_cache(maxsize=65536)
def normalize_math(answer: str | None) -> str | None:
    """math_normalize.normalize_answer."""
    if answer is None:
        return None
    answer = answer.strip()
    m = _TEXT_WRAPPED.search(answer)
    if m is not None:
        answer = m.group("text").strip()
    try:
        return _math_strip(answer)
    except _Fallback:
        return answer


# --------------------------------------------------------------------------- PRM800K normaliser

_UNITS = ("degree", "cm", "centimeter", "meter", "mile", "second", "minute", "hour", "day",
          "week", "month", "year", "foot", "feet", "inch", "yard")
_UNIT_RES = [re.compile(unit + r"(es)?(s)? *(\^[0-9]+)?") for unit in _UNITS]
_PROPER_COMMA = re.compile(r"(\d)(,)(\d\d\d)($|\D)")
_FRAC_SHAPE = re.compile(r"^-?[0-9]+.?/0*[1-9][0-9]*.?$")


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _close_to_int(x: float) -> bool:
    try:
        return abs(x - int(round(x))) <= 1e-7
    except (OverflowError, ValueError):  # inf, nan
        return False


def _strip_proper_commas(s: str) -> str:
    while True:
        nxt = _PROPER_COMMA.sub("\\1\\3\\4", s)
        if nxt == s:
            return s
        s = nxt


def _str_is_int(s: str) -> bool:
    try:
        return _close_to_int(float(_strip_proper_commas(s)))
    except ValueError:
        return False


def _str_to_int(s: str) -> int:
    return int(float(s.replace(",", "")))  # truncates: "2.99999999" -> 2, as the original


@functools.lru_cache(maxsize=1)
def _latex_to_text():
    import logging

    from pylatexenc import latex2text  # only the compatible mode needs it

    # its warnings (e.g. a \frac without arguments) would flood the aggregate log
    logging.getLogger("pylatexenc").setLevel(logging.ERROR)
    return latex2text.LatexNodes2Text()


def _parse_latex(s: str) -> str:
    s = s.replace("\\tfrac", "\\frac").replace("\\dfrac", "\\frac").replace("\\frac", " \\frac")
    s = _latex_to_text().latex_to_text(s)
    for a, b in (("√", "sqrt"), ("π", "pi"), ("∞", "inf"), ("∪", "U"), ("·", "*"), ("×", "*")):
        s = s.replace(a, b)
    return s.strip()


@functools.lru_cache(maxsize=65536)
def normalize_prm800k(expr: str | None) -> str | None:
    """grader._normalize (the PRM800K normaliser)."""
    if expr is None:
        return None
    m = _TEXT_WRAPPED.search(expr)
    if m is not None:
        expr = m.group("text")
    expr = expr.replace("\\%", "%").replace("\\$", "$").replace("$", "").replace("%", "")
    expr = expr.replace(" or ", " , ").replace(" and ", " , ")
    expr = expr.replace("million", "*10^6").replace("billion", "*10^9").replace("trillion", "*10^12")
    for unit in _UNIT_RES:
        expr = unit.sub("", expr)
    expr = re.sub(r"\^ *\\circ", "", expr)
    if expr and expr[0] == "{" and expr[-1] == "}":
        expr = expr[1:-1]
    expr = re.sub(r",\\! *", "", expr)
    if _is_float(expr) and _close_to_int(float(expr)):
        expr = str(int(round(float(expr))))
    if "\\" in expr:
        try:
            expr = _parse_latex(expr)
        except Exception:  # the original keeps the string when pylatexenc fails
            pass
    expr = re.sub("- *", "-", expr)
    expr = re.sub("([0-9]) +([0-9])", "\\1+\\2", expr)  # "7 3/4" -> "7+3/4"
    expr = expr.replace(" ", "").replace("{", "").replace("}", "").lower()
    if _str_is_int(expr):
        expr = str(_str_to_int(expr))
    return expr


def _split_tuple(s: str) -> list[str]:
    s = _strip_proper_commas(s)
    if not s:
        return []
    brackets = "()[]"
    if len(s) > 2 and s[0] in brackets and s[-1] in brackets and not any(c in s[1:-1] for c in brackets):
        return [e.strip() for e in s[1:-1].split(",")]
    return [s]


@functools.lru_cache(maxsize=262144)
def grade_answer(given: str | None, truth: str | None) -> bool:
    """grader.grade_answer with its sympy branch off, as the paper's repository has it."""
    if given is None:
        return False
    if normalize_math(truth) == normalize_math(given):
        return True
    t, g = normalize_prm800k(truth), normalize_prm800k(given)
    if t is None:
        return False
    if t == g:
        return True
    if not g:
        return False
    t_elems, g_elems = _split_tuple(t), _split_tuple(g)
    if len(t_elems) > 1 and (t[0] != g[0] or t[-1] != g[-1]):
        return False
    if len(t_elems) != len(g_elems):
        return False
    # Element by element, the original accepts only two fractions written alike; every
    # other pair would go to sympy, which is switched off (so: not equal).
    return all(bool(_FRAC_SHAPE.search(a)) and bool(_FRAC_SHAPE.search(b)) and a == b
               for a, b in zip(t_elems, g_elems))


# --------------------------------------------------------------------------- ground truths
# (answer_extraction.py: the extraction hf_score.py applies to every ground truth)


def _boxed_contents(text: str) -> list[str]:
    out = []
    for piece in text.split("boxed{")[1:]:
        depth = 0
        for i, ch in enumerate(piece):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth < 0:
                    # a "%" right after the box is kept with the answer
                    out.append(piece[: i + 1] if piece[i + 1 : i + 2] == "%" else piece[:i])
                    break
    return out


def _program_output(text: str) -> str:
    if "```output" not in text:
        return ""
    text = text.split("```output")[-1]
    if "```" in text:
        text = text.split("```")[0]
    return text.strip()


def _strip_fix_a_slash_b(s: str) -> str:
    parts = s.split("/")
    if len(parts) != 2:
        return s
    a, b = parts
    if "sqrt" not in a:
        a = _canonical_int(a)
    if "sqrt" not in b:
        b = _canonical_int(b)
    if a is None or b is None:
        return s
    return "\\frac{" + str(a) + "}{" + str(b) + "}"


def strip_string(s: str) -> str:
    """answer_extraction.strip_string (DeepSeek-Math's answer clean-up)."""
    s = str(s).strip().replace("\n", "").rstrip(".").replace("\\!", "")
    if s.startswith("\\text{") and s.endswith("}"):
        s = s.split("{", 1)[1][:-1]
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("cfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    cut = re.sub(r"\\text\{.*?\}$", "", s).strip()  # a trailing unit
    if cut != "" and cut != s:
        s = cut
    s = s.replace("^{\\circ}", "").strip().replace("^\\circ", "").strip()
    s = re.sub(r"\{(c|m)?m\}(\^(2|3))?", "", s).strip()
    s = re.sub(r"p\.m\.$", "", s).strip()
    s = re.sub(r"(\d)\s*t$", r"\1", s).strip()
    s = s.replace("\\$", "").replace("$", "").replace("x\\in", "").replace("\\%", "%")
    s = s.replace(" .", " 0.").replace("{.", "{0.").replace("\\cdot", "")
    s = s.replace("infinity", "\\infty")
    if "\\infty" not in s:
        s = s.replace("inf", "\\infty")
    s = s.replace("+\\inity", "\\infty").replace("\\mathbf", "").replace("\\mathrm", "")
    s = re.sub(r"\\mbox\{.*?\}", "", s)
    if "j" in s and "i" not in s:
        s = s.replace("j", "i")
    s = re.sub(r"(\d+)\.0+([^\d])", r"\1\2", s)
    s = re.sub(r"(\d+)\.0+$", r"\1", s)
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    s = re.sub(r"\\sqrt(-?[0-9.a-zA-Z]+)", r"\\sqrt{\1}", s)
    s = re.sub(r"\\sqrt\s+(\w+)$", r"\\sqrt{\1}", s)
    s = re.sub(r"\\tan(-?[0-9.a-zA-Z]+)", r"\\tan{\1}", s)
    s = re.sub(r"\\tan\s+(\w+)$", r"\\tan{\1}", s)
    s = s.replace(" ", "")
    s = _strip_fix_a_slash_b(_fix_fracs(s, empty_fails=False))
    return re.sub(r"(\\|,|\.)+$", "", s)


_LAST_NUMBER = re.compile(r"-?\d*\.?\d+")


@functools.lru_cache(maxsize=65536)
def extract_final(text: str) -> str:
    """answer_extraction.extract_answer(text) (exhaust=False): "" when nothing is found."""
    found: list[str] = []
    if "final answer is $" in text and "$. I hope" in text:
        found = [text.split("final answer is $", 1)[1].split("$. I hope", 1)[0].strip()]
    elif "boxed" in text:
        found = _boxed_contents(text)
    elif "he answer is" in text:
        found = [text.split("he answer is")[-1].strip()]
    else:
        output = _program_output(text)
        if output:
            found = [output]
        else:
            numbers = _LAST_NUMBER.findall(text.replace(",", ""))
            if numbers and numbers[-1]:
                found = [numbers[-1]]
    if not found:
        return ""
    last = found[-1].strip().split("\n")[0].lstrip(":").rstrip(".").rstrip("/")
    return strip_string(last)
