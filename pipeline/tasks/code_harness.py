"""The test harness that runs INSIDE the sandbox: one program against its unit tests.

This file is not imported by the workflow: `pipeline.tasks.code_grading` sends its
source to the sandbox's launcher (`pipeline.tasks.sandbox`), which executes it with
`payload` and `report` in its globals, after the limits are set; the last line of the
sent script calls `run(payload, report)`. It uses the standard library only (the
sandbox's interpreter has no site-packages). Unit tests import it directly.

payload: {"program": source defining the entry point (prompt + completion),
          "test": the problem's test code (HumanEval: defines `check(candidate)`;
                  or plain module-level asserts calling the entry point by name),
          "entry_point": the function's name}

It reports one {"event": "result", ...} with
    status     "pass" (every assertion held and the test ran to its end) | "fail"
    reason     why not (the first failed assertion's line, an exception, a syntax
               error, a missing entry point), "" for a pass
    calls      the number of calls the test made to the entry point
    behaviour  a SHA-256 over the outcome of each of those calls, in order: the repr
               of the value returned, or the exception type raised (the program's
               behaviour on the test's inputs; the grader's answer classes)
    failed     the number of failed assertions

Every assertion is checked, not only up to the first failure: each `assert` statement
of the test is rewritten to record its outcome (or the exception raised while
evaluating it) and go on, so the behaviour covers all the test's inputs whatever the
program gets wrong. Only calls made by the test are recorded, not a recursive
program's calls to itself. `random` is seeded with 0 before the program and the test
run (HumanEval/38 draws its inputs unseeded), and the sandbox sets PYTHONHASHSEED=0:
two runs of one program see the same inputs and iterate sets in the same order.
"""

import ast
import hashlib
import random
import sys
import traceback

MAX_REASON = 300


def _short(text, limit=MAX_REASON):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _exception(e, where):
    """'TypeError: ... (where)', the line in the program when the traceback has one."""
    line = ""
    for frame in reversed(traceback.extract_tb(e.__traceback__)):
        if frame.filename == "solution.py":
            line = f", solution line {frame.lineno}"
            break
    message = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return _short(f"{message} ({where}{line})")


def _safe_repr(value):
    try:
        return repr(value)
    except BaseException as e:  # a returned object whose __repr__ fails is still an outcome
        return f"<unrepresentable {type(value).__name__}: {type(e).__name__}>"


class _AssertRewriter(ast.NodeTransformer):
    """`assert X, msg` -> try: __sbx_check__(X, line) except BaseException as e: __sbx_error__(e, line)"""

    def visit_Assert(self, node):
        line = node.lineno
        check = ast.Expr(ast.Call(ast.Name("__sbx_check__", ast.Load()), [node.test, ast.Constant(line)], []))
        handler = ast.ExceptHandler(
            type=ast.Name("BaseException", ast.Load()), name="__sbx_e__",
            body=[ast.Expr(ast.Call(ast.Name("__sbx_error__", ast.Load()),
                                    [ast.Name("__sbx_e__", ast.Load()), ast.Constant(line)], []))])
        new = ast.Try(body=[check], handlers=[handler], orelse=[], finalbody=[])
        return ast.copy_location(new, node)


class _Recorder:
    def __init__(self, fn):
        self.fn = fn
        self.depth = 0
        self.calls = 0
        self.digest = hashlib.sha256()

    def _record(self, outcome):
        data = outcome.encode("utf-8", "replace")
        self.digest.update(len(data).to_bytes(8, "little") + data)
        self.calls += 1

    def __call__(self, *args, **kwargs):
        if self.depth:  # the program calling itself through the wrapper
            return self.fn(*args, **kwargs)
        self.depth += 1
        try:
            result = self.fn(*args, **kwargs)
        except BaseException as e:
            self._record("raise " + type(e).__name__)
            raise
        finally:
            self.depth -= 1
        self._record("return " + _safe_repr(result))
        return result


def run(payload, report):
    program, test, entry = payload["program"], payload["test"], payload["entry_point"]
    test_lines = test.splitlines()
    state = {"failed": 0, "reason": ""}
    recorder = None

    def finish(status, reason):
        report({"event": "result", "status": status, "reason": _short(reason),
                "calls": recorder.calls if recorder else 0,
                "behaviour": recorder.digest.hexdigest() if recorder else "",
                "failed": state["failed"]})

    def fail_once(reason):
        state["failed"] += 1
        if not state["reason"]:
            state["reason"] = reason

    def check(value, line):
        if not value:
            source = test_lines[line - 1].strip() if 0 < line <= len(test_lines) else ""
            fail_once(f"assertion failed (test line {line}: {source})")

    def error(e, line):
        fail_once(_exception(e, f"in the assertion at test line {line}"))

    random.seed(0)
    try:
        code = compile(program, "solution.py", "exec")
    except SyntaxError as e:  # ValueError (NUL bytes) too, below
        return finish("fail", f"SyntaxError: {e.msg} (solution line {e.lineno})")
    except (ValueError, OverflowError, MemoryError, RecursionError) as e:
        return finish("fail", f"the program does not compile: {type(e).__name__}: {e}")
    namespace = {"__name__": "__solution__", "__builtins__": __builtins__}
    try:
        exec(code, namespace)
    except BaseException as e:
        return finish("fail", _exception(e, "while defining the program"))
    fn = namespace.get(entry)
    if not callable(fn):
        return finish("fail", f"the program defines no function {entry!r}")

    tree = ast.parse(test, "test.py")
    has_check = any(isinstance(n, ast.FunctionDef) and n.name == "check" for n in tree.body)
    tree = ast.fix_missing_locations(_AssertRewriter().visit(tree))
    recorder = _Recorder(fn)
    namespace.update(__sbx_check__=check, __sbx_error__=error)
    if not has_check:  # module-level asserts call the entry point by its name
        namespace[entry] = recorder
    random.seed(0)
    try:
        exec(compile(tree, "test.py", "exec"), namespace)
        if has_check:
            namespace["check"](recorder)
    except BaseException as e:
        fail_once(_exception(e, "in the test, outside an assertion"))
    if state["failed"]:
        return finish("fail", state["reason"] + (f" and {state['failed'] - 1} more" if state["failed"] > 1 else ""))
    if recorder.calls == 0:
        return finish("fail", f"the test never called {entry!r}")
    return finish("pass", "")


def script():
    """The source the grader sends to the sandbox: this module plus the call."""
    with open(__file__, encoding="utf-8") as fh:
        source = fh.read()
    return source + "\nrun(payload, report)\n"


if __name__ == "__main__":  # pragma: no cover - not a command
    sys.exit("pipeline/tasks/code_harness.py runs inside the code-grading sandbox only")
