"""The built-in arithmetic task: record shape, correct answers, disjoint splits, determinism."""

from __future__ import annotations

import re

import pytest

from nemo_rlvr.data.arithmetic import arithmetic_records, arithmetic_text, warm_start_records

_PROMPT = re.compile(r"(\d+)([+\-*])(\d+)=")


def _solve(prompt: str) -> int:
    a, op, b = _PROMPT.fullmatch(prompt).groups()
    return {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]


def test_record_shape_and_text():
    recs = arithmetic_records(3, num_digits=2, operations=["+"], seed=0, split="train")
    assert [r["id"] for r in recs] == ["arith-train-0", "arith-train-1", "arith-train-2"]
    for r in recs:
        assert set(r) == {"id", "prompt", "env", "answer"} and r["env"] == "arithmetic"
        assert isinstance(r["answer"], int)
        assert arithmetic_text(r) == r["prompt"] + str(r["answer"])
    assert arithmetic_text({"prompt": "12-34=", "answer": -22}) == "12-34=-22"


@pytest.mark.parametrize("op", ["+", "-", "*"])
def test_answers_are_correct(op):
    recs = arithmetic_records(300, num_digits=2, operations=[op], seed=3, split="train")
    for r in recs:
        a, got_op, b = _PROMPT.fullmatch(r["prompt"]).groups()
        assert got_op == op and len(a) == 2 and len(b) == 2  # exactly num_digits digits
        assert r["answer"] == _solve(r["prompt"])
    if op == "-":
        assert any(r["answer"] < 0 for r in recs)  # "-" may go negative


def test_train_and_val_are_disjoint():
    ops = ["+", "-", "*"]
    # 2-digit operands: 90 * 90 * 3 = 24300 problems; about a tenth are val.
    val = {r["prompt"] for r in arithmetic_records(2000, num_digits=2, operations=ops, seed=0, split="val")}
    for seed in (0, 1):
        train = {r["prompt"] for r in arithmetic_records(20000, num_digits=2, operations=ops, seed=seed,
                                                         split="train")}
        assert len(train) == 20000 and not train & val
    # The split of a problem does not depend on which other operations are drawn.
    val_plus = {r["prompt"] for r in arithmetic_records(500, num_digits=2, operations=["+"], seed=0, split="val")}
    train_plus = {r["prompt"] for r in arithmetic_records(5000, num_digits=2, operations=["+"], seed=0,
                                                          split="train")}
    assert not val_plus & train_plus and not train_plus & val


def test_deterministic_for_a_seed_and_prefix_stable():
    kw = dict(num_digits=2, operations=["+", "-"], split="train")
    a = arithmetic_records(50, seed=7, **kw)
    assert a == arithmetic_records(50, seed=7, **kw)
    assert a != arithmetic_records(50, seed=8, **kw)
    assert arithmetic_records(20, seed=7, **kw) == a[:20]  # the first k records do not depend on n


def test_val_too_large_raises_and_train_samples_with_replacement():
    # 1-digit "+": 100 problems, 9 of them in val with this hash.
    n_val = len(arithmetic_records(9, num_digits=1, operations=["+"], seed=0, split="val"))
    with pytest.raises(ValueError, match="val_size"):
        arithmetic_records(n_val + 1, num_digits=1, operations=["+"], seed=0, split="val")
    train = arithmetic_records(500, num_digits=1, operations=["+"], seed=0, split="train")
    assert len(train) == 500 and len({r["prompt"] for r in train}) == 100 - n_val
    # Sampled in whole passes: every problem appears 5 or 6 times in 500 draws of 91.
    counts = {p: sum(r["prompt"] == p for r in train) for p in {r["prompt"] for r in train}}
    assert set(counts.values()) <= {5, 6}


def test_large_digit_counts_are_sampled():
    recs = arithmetic_records(100, num_digits=6, operations=["+", "*"], seed=0, split="val")
    assert len({r["prompt"] for r in recs}) == 100
    assert all(r["answer"] == _solve(r["prompt"]) for r in recs)


def test_bad_arguments_say_what_to_do():
    with pytest.raises(ValueError, match="operations"):
        arithmetic_records(1, num_digits=2, operations=["/"], seed=0, split="train")
    with pytest.raises(ValueError, match="split"):
        arithmetic_records(1, num_digits=2, operations=["+"], seed=0, split="test")  # type: ignore[arg-type]


def test_warm_start_records_add_easier_problems_outside_val():
    recs = warm_start_records(300, num_digits=2, operations=["+"], seed=0)
    # 300 task problems + 300 * 0.25 / 0.75 = 100 one-digit problems
    assert len(recs) == 400 and len({r["id"] for r in recs}) == 400
    assert all(len(_PROMPT.fullmatch(r["prompt"]).group(1)) == 1 for r in recs[300:])
    val = {r["prompt"] for r in arithmetic_records(700, num_digits=2, operations=["+"], seed=0, split="val")}
    assert not val & {r["prompt"] for r in recs}
    assert len(warm_start_records(10, num_digits=1, operations=["+"], seed=0)) == 10
