"""The `code` environment without the sandbox: extracting the solution, preparing tests, and
records that never reach the sandbox. Running code is tests/integration/envs/test_code_env.py."""

from __future__ import annotations

import pytest

from nemo_rlvr.envs.code import CodeEnv, extract_solution, prepare_test
from nemo_rlvr.envs.registry import get_env

ADD = {"tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert candidate(2, 2) == 4"],
       "entry_point": "add"}
GOOD = "def add(a, b):\n    return a + b\n"


def test_extract_last_python_block():
    text = "```python\nx = 1\n```\ntext\n```python\nx = 2\n```\n```\nbare\n```\n"
    assert extract_solution(text) == "x = 2\n"
    assert extract_solution("```Python title\ny = 1\n````\n") == "y = 1\n"  # longer closing fence ok


def test_extract_rejects_other_fences_and_unclosed_blocks():
    assert extract_solution("def f(): pass") is None
    assert extract_solution("```py\nx = 1\n```") is None
    assert extract_solution("```\nx = 1\n```") is None
    assert extract_solution("```python\nx = 1\n") is None
    assert extract_solution("```python\nx = 1\n```\n```python\nx = 2\n") == "x = 1\n"


def test_prepare_test_rewrites_comparisons_and_finds_check():
    src, call_check = prepare_test("def check(candidate):\n    assert candidate(1) == 2 and 3 in [3]\n")
    assert "__nemo_compare__(('Eq',), candidate(1), 2)" in src and "(('In',), 3, [3])" in src
    assert call_check
    assert prepare_test("def check(c):\n    assert c(1) < 2\ncheck(f)\n") == (
        "def check(c):\n    assert c(1) < 2\ncheck(f)", False)
    with pytest.raises(SyntaxError):
        prepare_test("assert (")


def test_registered():
    assert isinstance(get_env("code"), CodeEnv)


def test_no_python_block_scores_zero():
    for text in (GOOD, "```py\n" + GOOD + "```\n"):
        s = CodeEnv().score_record(text, ADD)
        assert (s.reward, s.components["all_passed"], s.error) == (0.0, 0.0, None)
