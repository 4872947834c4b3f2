"""Built-in arithmetic task: records like {"prompt": "12+34=", "answer": 46} for the tiny demo.

A problem is a triple (a, op, b) whose operands have exactly num_digits digits
(10 <= a, b <= 99 for num_digits=2; 0..9 for num_digits=1), so every prompt of a task
has the same length and digit positions line up. Each triple belongs to exactly one split, fixed by a stable
hash of the triple alone: val iff hash(a, op, b) % 10 == 0 (about 10 % of problems).
So train and val are disjoint by construction, for every seed, and the split of a
triple does not change with the operation list.

Within a split, records are the split's problems in a seeded random order, so the
first k records are the same for any n >= k. Train asks for more records than there
are problems: whole reshuffled passes are appended (sampling with replacement, evenly);
val raises instead, since repeated validation prompts would bias the accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

OPERATIONS = ("+", "-", "*")
VAL_MODULUS = 10
"""A triple is in val iff its hash % VAL_MODULUS == 0."""
_ENUMERATE_MAX = 4_000_000
"""Spaces up to this many triples are enumerated (exact split counts); larger ones sampled."""
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: a stable, well-mixed 64-bit hash of uint64 inputs."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (x ^ (x >> np.uint64(31))) & _MASK64


def _is_val(a: np.ndarray, op_code: np.ndarray, b: np.ndarray) -> np.ndarray:
    """True where the triple (a, op, b) belongs to the val split; op_code = ord(op)."""
    with np.errstate(over="ignore"):
        key = _mix64(a.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + op_code.astype(np.uint64))
        key = _mix64(key ^ (b.astype(np.uint64) + np.uint64(0x632BE59BD9B4E019)))
    return key % np.uint64(VAL_MODULUS) == 0


def _operand_range(num_digits: int) -> tuple[int, int]:
    """(lowest operand, count of operands) with exactly num_digits digits."""
    lo = 10 ** (num_digits - 1) if num_digits > 1 else 0
    return lo, 10**num_digits - lo


def _decode(idx: np.ndarray, num_digits: int, ops: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index in [0, len(ops) * width**2) -> (a, op_code, b)."""
    lo, width = _operand_range(num_digits)
    op_i, rest = np.divmod(idx, width * width)
    a, b = np.divmod(rest, width)
    codes = np.array([ord(o) for o in ops], dtype=np.int64)
    return a + lo, codes[op_i], b + lo


def _answer(a: int, op: str, b: int) -> int:
    match op:
        case "+":
            return a + b
        case "-":
            return a - b
        case "*":
            return a * b
    raise ValueError(f"unknown operation {op!r}; valid: {', '.join(OPERATIONS)}")


def _check_args(n: int, num_digits: int, operations: Sequence[str], split: str) -> tuple[str, ...]:
    if split not in ("train", "val"):
        raise ValueError(f"split={split!r} is not allowed; use 'train' or 'val'.")
    if n < 0:
        raise ValueError(f"n={n} must be >= 0.")
    if not 1 <= num_digits <= 9:
        raise ValueError(f"data.num_digits={num_digits} must be in 1..9.")
    ops = tuple(dict.fromkeys(operations))  # dedupe, keep order
    bad = [o for o in ops if o not in OPERATIONS]
    if not ops or bad:
        raise ValueError(f"data.operations={tuple(operations)!r} must be a non-empty subset of "
                         f"{OPERATIONS!r}; e.g. data.operations=['+'].")
    return ops


def _split_indices(n: int, num_digits: int, ops: tuple[str, ...], seed: int, split: str) -> np.ndarray:
    """Indices of n problems of the split, in seeded order (see the module docstring)."""
    want_val = split == "val"
    rng = np.random.default_rng([seed, int(want_val), 0x61726974])  # "arit"
    total = len(ops) * _operand_range(num_digits)[1] ** 2
    if total <= _ENUMERATE_MAX:
        idx = np.arange(total, dtype=np.int64)
        idx = idx[_is_val(*_decode(idx, num_digits, ops)) == want_val]
        if n > len(idx) and want_val:
            raise ValueError(
                f"asked for {n} val records but the val split of num_digits={num_digits} "
                f"with operations {ops} holds only {len(idx)} distinct problems. Lower "
                f"data.val_size to <= {len(idx)}, or raise data.num_digits.")
        passes = [rng.permutation(idx) for _ in range(max(1, -(-n // max(len(idx), 1))))]
        return np.concatenate(passes)[:n]
    # Huge space (>= 4 digits): rejection-sample distinct triples; n is tiny next to it.
    if n > total // (10 * VAL_MODULUS):
        raise ValueError(f"asked for {n} {split} records from a space of {total} problems; "
                         f"use at most {total // (10 * VAL_MODULUS)}.")
    out: dict[int, None] = {}
    while len(out) < n:
        draw = rng.integers(0, total, size=2 * (n - len(out)) * VAL_MODULUS, dtype=np.int64)
        draw = draw[_is_val(*_decode(draw, num_digits, ops)) == want_val]
        for i in draw.tolist():
            out.setdefault(i)
            if len(out) == n:
                break
    return np.fromiter(out, dtype=np.int64, count=n)


def arithmetic_records(
    n: int,
    *,
    num_digits: int,
    operations: Sequence[str],
    seed: int,
    split: Literal["train", "val"],
) -> list[dict[str, Any]]:
    """n records {"id", "prompt", "env", "answer"} of one split; deterministic for a seed.

    >>> arithmetic_records(1, num_digits=2, operations=["+"], seed=0, split="train")[0]
    {'id': 'arith-train-0', 'prompt': '98+16=', 'env': 'arithmetic', 'answer': 114}
    """
    ops = _check_args(n, num_digits, operations, split)
    a, codes, b = _decode(_split_indices(n, num_digits, ops, seed, split), num_digits, ops)
    out = []
    for i, (x, c, y) in enumerate(zip(a.tolist(), codes.tolist(), b.tolist())):
        op = chr(c)
        out.append({"id": f"arith-{split}-{i}", "prompt": f"{x}{op}{y}=", "env": "arithmetic",
                    "answer": _answer(x, op, y)})
    return out


def arithmetic_text(record: Mapping[str, Any]) -> str:
    """The supervised target of a record: prompt followed by the answer, "12+34=46"."""
    return f"{record['prompt']}{record['answer']}"


def warm_start_records(n: int, *, num_digits: int, operations: Sequence[str], seed: int,
                       easy_fraction: float = 0.25) -> list[dict[str, Any]]:
    """Supervised warm-start data: n train records of the task plus easier ones (a curriculum).

    Next to the n num_digits-digit train problems come problems with 1..num_digits-1 digit
    operands, an `easy_fraction` share of the total (none when num_digits == 1). They teach
    the digit tables (e.g. the 100 one-digit sums) that the last answer digit needs: on
    2-digit addition they cut the supervised steps to a given accuracy several-fold (numbers
    in models/warm_start.py). Easier problems have other operand ranges, so none of them is
    a val problem of the task.
    """
    if not 0 <= easy_fraction < 1:
        raise ValueError(f"easy_fraction={easy_fraction} must be in [0, 1).")
    out = arithmetic_records(n, num_digits=num_digits, operations=operations, seed=seed, split="train")
    easier = range(1, num_digits)
    n_easy = round(n * easy_fraction / (1 - easy_fraction)) if easier else 0
    for k in easier:
        recs = arithmetic_records(n_easy // len(easier), num_digits=k, operations=operations,
                                  seed=seed, split="train")
        out += [r | {"id": f"arith-train{k}d-{i}"} for i, r in enumerate(recs)]
    return out

