"""Built-in `code` environment: the last ```python block must pass the record's tests.

Fields: `tests` (list of str: assert statements or small scripts) and optional
`entry_point` (the function under test; tests may call it as `candidate`).
Reward = passed / total; components `passed`, `total`, `all_passed` (VERIFIER_CONTRACT.md).

Each test runs on its own in a fresh sandbox (envs/sandbox.py): the harness below
executes the solution, then the test, and only when the test's code runs to its end
without an exception does it write a pass record carrying a per-run nonce that the
verifier generated and that exists only in a file the harness deletes before any
model code runs. Exit codes and printed output are never evidence of a pass.
Between the two steps the harness restores the builtins and the already-imported
modules, so monkeypatching from the solution does not reach the test. In test code,
`==`, `!=`, `in` and `not in` are rewritten to strict comparisons: an object whose
`__eq__` always returns True does not equal a builtin value (docs/sandbox.md, "code").
"""

from __future__ import annotations

import ast
import marshal
import re
import secrets
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

import pydantic
from annotated_types import Ge, Gt

from nemo_rlvr.envs.base import FieldSpec, Score, cores_per_sample, register_env
from nemo_rlvr.envs.sandbox import SandboxError, SandboxMode, run_sandboxed

# A fence line: up to 3 spaces, 3+ backticks, then the info string (CommonMark).
_FENCE = re.compile(r"^ {0,3}(`{3,})[ \t]*([^`\n]*)$")
_STRICT_OPS = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)

# Runs inside the sandbox as main.py (standard library only: python -I -S).
_HARNESS = r'''
import builtins, marshal, operator, os, sys
import collections, functools, itertools, math  # so their patched names are restored too

def _make_compare(type=type, len=len, zip=zip, all=all, any=any, iter=iter, ops=operator):
    scalars = frozenset({type(None), bool, int, float, complex, str, bytes})
    seqs, sets = frozenset({list, tuple}), frozenset({set, frozenset})
    plain_types = scalars | seqs | sets | {dict}

    def plain(x):  # x and everything inside it have exact builtin types
        t = type(x)
        if t in scalars:
            return True
        if t in seqs or t in sets:
            return all(plain(v) for v in x)
        return t is dict and all(plain(k) and plain(v) for k, v in x.items())

    def eq(a, b):
        ta, tb = type(a), type(b)
        if ta in plain_types or tb in plain_types:
            if plain(a) and plain(b):
                return a == b  # only builtin __eq__ runs
            if ta in seqs and ta is tb:
                return len(a) == len(b) and all(eq(x, y) for x, y in zip(a, b))
            if ta is dict and tb is dict:
                return (len(a) == len(b) and all(plain(k) for k in a) and all(plain(k) for k in b)
                        and all(k in b and eq(a[k], b[k]) for k in a))
            return False
        return ta is tb and (a == b) is True and (b == a) is True

    def contains(a, b):
        tb = type(b)
        if tb is str or tb is bytes:
            return type(a) is tb and a in b
        if tb is range:
            return type(a) in (int, bool) and a in b
        if (tb in sets or tb is dict) and plain(a) and all(plain(k) for k in b):
            return a in b
        return any(eq(a, x) for x in iter(b))

    table = {"Eq": eq, "NotEq": lambda a, b: not eq(a, b), "In": contains,
             "NotIn": lambda a, b: not contains(a, b), "Lt": ops.lt, "LtE": ops.le, "Gt": ops.gt,
             "GtE": ops.ge, "Is": ops.is_, "IsNot": ops.is_not}

    def compare(names, *values):  # a chain a < b == c: every link must hold
        for i, name in enumerate(names):
            if not table[name](values[i], values[i + 1]):
                return False
        return True
    return compare

def _snapshot():
    return {name: (m, dict(m.__dict__)) for name, m in list(sys.modules.items())
            if m is not None and name != "sys"}

def _restore(snap):
    for name, (module, saved) in snap.items():
        sys.modules[name] = module
        module.__dict__.update(saved)  # added names stay: they shadow nothing

def _main(write=os.write, exit_=os._exit, exec_=exec, compile_=compile):
    with open("job.bin", "rb") as f:
        job = marshal.loads(f.read())
    os.unlink("job.bin")  # the nonce now exists only in this frame
    passed_line = ('{"nonce": "%s", "passed": true}' % job.pop("nonce")).encode()

    def fail(stage, e):
        try:
            msg = "%s: %s" % (type(e).__name__, str(e)[:200])
            msg = "".join(c if c.isalnum() or c in " _:.,()<>=+-" else "?" for c in msg)
        except BaseException:
            msg = "unprintable exception"
        write(3, ('{"passed": false, "stage": "%s", "error": "%s"}' % (stage, msg)).encode())
        exit_(1)

    test_code = compile_(job["test"], "test.py", "exec")
    compare = _make_compare()
    snap = _snapshot()
    pristine = dict(builtins.__dict__)
    sol = {"__name__": "solution", "__builtins__": builtins}
    try:
        exec_(compile_(job["solution"], "solution.py", "exec"), sol)
    except BaseException as e:  # SystemExit included: exiting early is a failure
        fail("solution", e)
    sys.settrace(None)
    sys.setprofile(None)
    _restore(snap)
    entry = job["entry_point"]
    if entry and entry not in sol:
        fail("entry_point", NameError("the solution does not define %r" % entry))
    ns = {k: v for k, v in sol.items() if k == entry or k not in pristine}
    ns.update({"__name__": "__main__", "__builtins__": dict(pristine), "__nemo_compare__": compare})
    if entry:
        ns["candidate"] = sol[entry]
    try:
        exec_(test_code, ns)
        if job["call_check"]:
            ns["check"](sol[entry])
    except BaseException as e:
        fail("test", e)
    write(3, passed_line)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    exit_(0)

_main()
'''


def extract_solution(response: str) -> str | None:
    """The content of the last closed ```python fenced block, or None.

    The info string's first word must be `python` (any case); ```py, ```python3 and bare
    ``` blocks do not count, and an unclosed block is not a block (VERIFIER_CONTRACT.md).
    """
    found: str | None = None
    lines = response.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, words = m.group(1), m.group(2).split()
        close = next((j for j in range(i + 1, len(lines))
                      if re.fullmatch(r" {0,3}" + fence + r"`*[ \t]*", lines[j])), None)
        if close is None:
            break  # unclosed: the rest of the response is inside it
        if words and words[0].lower() == "python":
            found = "\n".join(lines[i + 1 : close]) + "\n"
        i = close + 1
    return found


class _StrictCompare(ast.NodeTransformer):
    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        if not any(isinstance(op, _STRICT_OPS) for op in node.ops):
            return node
        names = ast.Tuple([ast.Constant(type(op).__name__) for op in node.ops], ast.Load())
        call = ast.Call(ast.Name("__nemo_compare__", ast.Load()), [names, node.left, *node.comparators], [])
        return ast.copy_location(call, node)


def prepare_test(test: str) -> tuple[str, bool]:
    """Rewrite a test's comparisons to strict ones; also whether the harness must call `check`.

    Raises SyntaxError for a test that is not valid Python.
    """
    tree = ast.parse(test)
    defines_check = any(isinstance(n, ast.FunctionDef) and n.name == "check" for n in tree.body)
    calls_check = any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "check"
        for stmt in tree.body if not isinstance(stmt, (ast.FunctionDef, ast.ClassDef))
        for n in ast.walk(stmt)
    )
    tree = ast.fix_missing_locations(_StrictCompare().visit(tree))
    return ast.unparse(tree), defines_check and not calls_check


@register_env("code")
class CodeEnv:
    name = "code"
    fields = {"tests": FieldSpec((list,), "a non-empty list of Python source strings (assert statements "
                                 "or small scripts)"),
              "entry_point": FieldSpec((str,), "the name of the function the tests call", required=False)}

    @staticmethod
    def check_fields(fields: Mapping[str, Any]) -> str | None:
        bad = _read_fields(fields)[2]
        if bad is None:
            try:
                for t in fields["tests"]:
                    prepare_test(t)
            except SyntaxError as e:
                return f"a test in field 'tests' is not valid Python ({e.msg}, line {e.lineno})"
        return bad

    @pydantic.validate_call
    def __init__(self, timeout_s: Annotated[float, Gt(0)] = 5.0, memory_mb: Annotated[int, Ge(16)] = 1024,
                 max_procs: Annotated[int, Ge(1)] = 32, max_output_bytes: Annotated[int, Ge(0)] = 64 << 10,
                 max_parallel: Annotated[int, Ge(1)] | None = None, sandbox_mode: SandboxMode | None = None):
        """Limits are per test; `max_parallel` tests of one record run at once (None: up to 4 on
        the cores this process may use, i.e. 1 in a pool with a worker per core). The bounds
        are checked here and, for env.options, before any worker starts (check_env_options)."""
        self.limits = {"timeout_s": timeout_s, "memory_mb": memory_mb, "max_procs": max_procs,
                       "max_output_bytes": max_output_bytes, "mode": sandbox_mode}
        self.max_parallel = max_parallel or min(4, cores_per_sample())

    def score_record(self, response: str, fields: Mapping[str, Any]) -> Score:
        tests, entry, bad = _read_fields(fields)
        zero = {"passed": 0.0, "total": float(len(tests)), "all_passed": 0.0}
        if bad:
            return Score(0.0, zero, bad)
        try:
            prepared = [prepare_test(t) for t in tests]
        except SyntaxError as e:
            return Score(0.0, zero, f"a test in field 'tests' is not valid Python ({e.msg}, line "
                                    f"{e.lineno}); fix the dataset")
        if entry is None and any(call_check for _, call_check in prepared):
            return Score(0.0, zero, "a test defines check(candidate) but never calls it and field "
                                    "'entry_point' is missing: give the function name in 'entry_point'")
        solution = extract_solution(response)
        if solution is None:
            return Score(0.0, zero)
        calls = [(solution, src, entry, call_check) for src, call_check in prepared]
        try:
            if self.max_parallel == 1 or len(calls) == 1:
                results = [self.run_test(*c) for c in calls]
            else:
                with ThreadPoolExecutor(min(self.max_parallel, len(calls))) as pool:
                    results = list(pool.map(lambda c: self.run_test(*c), calls))
        except SandboxError as e:
            return Score(0.0, zero, str(e))
        passed = sum(results)
        return Score(passed / len(tests), {"passed": float(passed), "total": float(len(tests)),
                                           "all_passed": float(passed == len(tests))})

    def run_test(self, solution: str, test: str, entry: str | None, call_check: bool) -> bool:
        """Run one (already prepared) test against the solution; True iff it passed."""
        nonce = secrets.token_hex(16)
        job = {"nonce": nonce, "solution": solution, "test": test, "entry_point": entry,
               "call_check": call_check and entry is not None}
        out = run_sandboxed(_HARNESS, files={"job.bin": marshal.dumps(job)}, **self.limits)
        r = out.result
        return bool(r) and r.get("nonce") == nonce and r.get("passed") is True



def _read_fields(fields: Mapping[str, Any]) -> tuple[list[str], str | None, str | None]:
    """(tests, entry_point, error): error says which field is bad and what it should be."""
    tests = fields.get("tests")
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) and t.strip() for t in tests):
        return [], None, ("field 'tests' must be a non-empty list of Python source strings "
                          "(assert statements or small scripts)")
    entry = fields.get("entry_point")
    if entry is not None and (not isinstance(entry, str) or not entry.isidentifier()):
        return tests, None, f"field 'entry_point' must be a function name, got {entry!r}"
    return tests, entry or None, None
