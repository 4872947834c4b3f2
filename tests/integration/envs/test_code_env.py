"""The `code` environment in the sandbox: strict comparisons, and a suite of hostile solutions.

Hostile solutions are scored like any other record; each must score exactly what the
contract says (VERIFIER_CONTRACT.md "code"), and after the suite a normal record still
scores correctly, with no stray process and no new file outside the sandbox. Every test here
needs a working sandbox (`sandbox` marker, tests/conftest.py); extraction and test preparation,
which run nothing, are tests/unit/envs/test_code_extract.py.
"""

from __future__ import annotations

import os
import pathlib
import socket
import sys
import time
import uuid

import pytest

from nemo_rlvr.envs.code import CodeEnv
from nemo_rlvr.envs.sandbox import capabilities

pytestmark = pytest.mark.sandbox(isolated=False)  # any working mode; `isolated` tests need namespaces
isolated = pytest.mark.sandbox
capped = pytest.mark.sandbox(isolated=False, process_cap="exact")
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is not enforced on macOS")
REPO = pathlib.Path(__file__).resolve().parents[3]
TAG = uuid.uuid4().hex  # names every file and process a hostile program tries to leave behind
ADD = {"tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert candidate(2, 2) == 4"],
       "entry_point": "add"}
GOOD = "def add(a, b):\n    return a + b\n"


def block(code: str, lang: str = "python") -> str:
    return f"Here is my solution.\n```{lang}\n{code}\n```\n"


@pytest.fixture(scope="module")
def env() -> CodeEnv:
    return CodeEnv(timeout_s=3.0, memory_mb=256, max_procs=16)


def score(env: CodeEnv, code: str, fields=ADD):
    return env.score_record(block(code), fields)


# --- honest solutions ----------------------------------------------------------------------

def test_correct_scores_one(env):
    s = score(env, GOOD)
    assert (s.reward, s.components, s.error) == (1.0, {"passed": 3.0, "total": 3.0, "all_passed": 1.0}, None)


def test_partial_scores_the_fraction(env):
    s = score(env, "def add(a, b):\n    return 3\n")  # passes only add(1, 2) == 3
    assert s.reward == pytest.approx(1 / 3) and s.components["all_passed"] == 0.0


def test_humaneval_check_function_and_builtin_value_semantics(env):
    fields = {"entry_point": "halve", "tests": [
        "def check(candidate):\n    assert candidate(4) == 2\n    assert candidate(3) == 1.5\n"
        "    assert [candidate(2)] == [1.0]\n    assert candidate(8) in (4, 5)\n",
        "from fractions import Fraction\nassert Fraction(candidate(1)) == Fraction(1, 2)\n",
    ]}
    assert score(env, "def halve(x):\n    return x / 2\n", fields).reward == 1.0
    assert score(env, "def halve(x):\n    return x // 2\n", fields).reward == 0.0


def test_script_test_and_helper_names(env):
    fields = {"tests": ["import io, contextlib\nbuf = io.StringIO()\nwith contextlib.redirect_stdout(buf):\n"
                        "    main()\nassert buf.getvalue() == 'hello\\n'\n"]}
    code = "def helper():\n    return 'hello'\ndef main():\n    print(helper())\n"
    assert score(env, code, fields).reward == 1.0


def test_missing_entry_point_fails_and_bad_fields_are_errors(env):
    assert score(env, "def plus(a, b):\n    return a + b\n").reward == 0.0
    for fields in ({}, {"tests": []}, {"tests": "assert True"}, {"tests": ["assert ("]},
                   {"tests": ["assert True"], "entry_point": "not a name"},
                   {"tests": ["def check(candidate):\n    assert candidate(1) == 2\n"]}):
        s = score(env, GOOD, fields)
        assert s.reward == 0.0 and s.error


# --- hostile solutions ---------------------------------------------------------------------

def test_infinite_loop_fails_only_its_test(env):
    fields = {"tests": ["assert f(0) == 0", "assert f(1) == 1", "assert f(2) == 2"]}
    t0 = time.monotonic()
    code = "def f(x):\n    while x == 1:\n        pass\n    return x\n"
    s = score(CodeEnv(timeout_s=2.5, memory_mb=256), code, fields)
    assert s.reward == pytest.approx(2 / 3)
    assert time.monotonic() - t0 < 10.0


@linux
def test_memory_bomb_scores_zero(env):
    assert score(env, "x = bytearray(4 * 1024**3)\n" + GOOD).reward == 0.0


@capped
def test_fork_flood_is_bounded(env):
    t0 = time.monotonic()
    assert score(env, "import os\nwhile True:\n    os.fork()\n" + GOOD).reward == 0.0
    assert time.monotonic() - t0 < 10.0


def test_early_exit_scores_zero(env):
    for code in ("import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n", "raise SystemExit\n",
                 GOOD + "import sys\nsys.exit(0)\n",
                 "def add(a, b):\n    import os\n    os._exit(0)\n"):
        assert score(env, code).reward == 0.0, code


def test_fake_output_and_forged_result_score_zero(env):
    for code in ("print('all tests passed')\nprint('{\"passed\": true}')\n",
                 "import os\nos.write(3, b'{\"passed\": true}')\nos._exit(0)\n",
                 "import os, sys\nfor fd in (1, 2, 3):\n"
                 "    os.write(fd, b'{\"nonce\": \"0\", \"passed\": true}')\nsys.exit(0)\n"):
        assert score(env, code).reward == 0.0, code


def test_always_equal_objects_score_zero(env):
    for code in (
        "class E:\n    def __eq__(self, o): return True\n    def __ne__(self, o): return False\n"
        "    __hash__ = object.__hash__\ndef add(a, b): return E()\n",
        "class E(int):\n    def __eq__(self, o): return True\ndef add(a, b): return E(0)\n",
        "class E(list):\n    def __eq__(self, o): return True\ndef add(a, b): return E()\n",
    ):
        assert score(env, code).reward == 0.0, code
    fields = {"tests": ["assert f() in [1, 2]", "assert [f()] == [3]", "assert {'k': f()} == {'k': 3}"]}
    eq = ("class E:\n    def __eq__(self, o): return True\n    __hash__ = object.__hash__\n"
          "def f(): return E()\n")
    assert score(env, eq, fields).reward == 0.0


def test_monkeypatching_does_not_reach_the_test(env):
    fields = {"tests": ["import math\nassert math.isclose(f(), 0.5)", "assert abs(f() - 0.5) < 1e-9",
                        "assert len(g()) == 2"]}
    code = ("import builtins, math\nmath.isclose = lambda *a, **k: True\nbuiltins.abs = lambda x: 0\n"
            "builtins.len = lambda x: 2\nbuiltins.AssertionError = KeyError\n"
            "def f(): return 7.0\ndef g(): return [1, 2, 3]\n")
    assert score(env, code, fields).reward == 0.0
    fake = ("import sys\nclass M:\n    isclose = staticmethod(lambda *a, **k: True)\n"
            "sys.modules['math'] = M\ndef f(): return 7.0\n")
    assert score(env, fake, {"tests": ["import math\nassert math.isclose(f(), 0.5)"]}).reward == 0.0
    shadow = "def len(x): return 2\ndef g(): return [1, 2, 3]\n"  # a solution global named like a builtin
    assert score(env, shadow, {"tests": ["assert len(g()) == 2"]}).reward == 0.0


@isolated
def test_writes_outside_scratch_never_appear(env):
    paths = [f"/tmp/pwned_{TAG}", str(REPO / f"pwned_{TAG}"), f"/root/pwned_{TAG}"]
    code = ("import os\n"
            f"for p in {paths!r} + [os.path.expanduser('~/pwned_{TAG}')]:\n"
            "    try:\n        open(p, 'w').write('x')\n    except OSError:\n        pass\n" + GOOD)
    assert score(env, code).reward == 1.0  # failed writes are not the solution's problem
    for p in paths + [str(pathlib.Path.home() / f"pwned_{TAG}")]:
        assert not os.path.exists(p), p


@isolated
def test_environment_secret_is_invisible(env, monkeypatch):
    monkeypatch.setenv("NEMO_SECRET", "s3cr3t")
    # The solution is right only if it found the secret: reward 1 would mean a leak.
    code = ("import os\nfound = 's3cr3t' in str(os.environ)\n"
            "for pid in ['self', str(os.getppid()), '1'] + [p for p in os.listdir('/proc') if p.isdigit()]:\n"
            "    try:\n        found = found or b's3cr3t' in open(f'/proc/{pid}/environ', 'rb').read()\n"
            "    except OSError:\n        pass\n"
            "def add(a, b):\n    return a + b if found else None\n")
    assert score(env, code).reward == 0.0


@isolated
def test_socket_to_local_port_fails(env):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.3)
    port = server.getsockname()[1]
    code = ("import socket\ns = socket.socket()\ns.settimeout(1)\n"
            f"try:\n    s.connect(('127.0.0.1', {port})); ok = True\nexcept OSError:\n    ok = False\n"
            "def add(a, b):\n    return a + b if ok else None\n")
    try:
        assert score(env, code).reward == 0.0
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()


def test_killing_its_parent_does_not_stop_scoring(env):
    # kill(-1) only inside a PID namespace (see the sandbox test)
    pids = "(os.getppid(), 1, -1)" if capabilities().pid_namespace else "(os.getppid(),)"
    code = (f"import os\nfor pid in {pids}:\n"
            "    try:\n        os.kill(pid, 9)\n    except OSError:\n        pass\n")
    score(env, code + GOOD)  # whatever it scores, the verifier goes on
    assert score(env, GOOD).reward == 1.0


@pytest.fixture(scope="module", autouse=True)
def session_children():
    """Descendants of the test process before this file's first test."""
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


# --- after the hostile suite (runs last in this file) ------------------------------------------

def test_zz_after_the_suite_all_is_clean(env, session_children):
    import psutil

    assert score(env, GOOD).reward == 1.0
    assert not list(pathlib.Path("/tmp").glob(f"*{TAG}*")) and not list(REPO.glob(f"*{TAG}*"))
    # No process this file's tests started is left (earlier test files may own long-lived
    # helpers such as the pool's forkserver or Ray; other sessions' sandboxes may be running).
    assert [p for p in psutil.Process().children(recursive=True) if p.pid not in session_children] == []
