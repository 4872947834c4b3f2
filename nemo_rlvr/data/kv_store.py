"""Built-in multi-turn tool task for the tiny tools recipe: records of the `kv_store` environment.

A problem: the store holds `a` and `b` (0..9 each) among other keys; the model must read both with
the `get` tool, one call per turn, before it answers their sum:

    user       "sum:a,b"                                     tools: get(key)
    assistant  <tool_call>{"name":"get","arguments":{"key":"a"}}</tool_call>
    tool       4
    assistant  <tool_call>{"name":"get","arguments":{"key":"b"}}</tool_call>
    tool       7
    assistant  11

The values exist only in the environment, so the answer needs both calls (kv_store rewards a
correct sum only after every key was read). The key names are fixed on purpose: copying a key
named in the prompt into the call is an induction-style copy the 0.7M tiny model did not learn in
400 supervised steps with 26 possible keys, nor in 500 with 4 (still at chance, ln 4 nats per key,
while the sum was learned by step ~400), and with `b` in 0..99 the sum's ones digit was still at
chance after 500 steps: neither fits a 10-minute CPU recipe. The store also holds NUM_DISTRACTORS other keys
(a wrong `get` reads a wrong value).

Splits as in data/arithmetic.py: a problem (a, b) is in val iff a stable hash of it % VAL_MODULUS
== 0 (21 of the 100 problems), so train and val are disjoint for every seed and every val sum is
one the model never saw as a whole (it has seen each value, with other partners); within a split,
records come in a seeded order, prefix-stable in n (the first k records are the same for any
n >= k), and the distractors are drawn from (seed, split, index).
"""

from __future__ import annotations

import string
from typing import Any, Literal

import numpy as np

KEYS = ("a", "b")
"""The keys whose values the answer adds (one `get` each)."""
VALUES = (10, 10)
"""Value of KEYS[i] is in 0..VALUES[i]-1."""
NUM_DISTRACTORS = 2
"""Other keys in the store (values 0..9)."""
VAL_MODULUS = 5
"""A problem is in val iff its hash % VAL_MODULUS == 0."""
TOOLS = [{"type": "function", "function": {
    "name": "get", "description": "read a key",
    "parameters": {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]}}}]
"""The tool the records offer (OpenAI form, rendered by the chat template)."""
MAX_TURNS = len(KEYS) + 1
"""Turns a correct episode takes: one `get` per key, then the answer."""


def _problems() -> np.ndarray:
    """Every problem as a row of values (a, b). [100, 2]"""
    v1, v2 = np.meshgrid(np.arange(VALUES[0]), np.arange(VALUES[1]), indexing="ij")
    return np.stack([v1.ravel(), v2.ravel()], axis=1)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: a stable, well-mixed 64-bit hash of uint64 inputs."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _is_val(rows: np.ndarray) -> np.ndarray:
    """True where the problem row (a, b) belongs to the val split."""
    with np.errstate(over="ignore"):
        code = (rows[:, 0] * 1024 + rows[:, 1]).astype(np.uint64)
        return _mix64(_mix64(code + np.uint64(0x6B765F73)) ^ np.uint64(0x9E3779B97F4A7C15)) \
            % np.uint64(VAL_MODULUS) == 0


def kv_store_text(record: dict[str, Any]) -> str:
    """The user prompt of a problem: "sum:" and the keys, comma separated."""
    return "sum:" + ",".join(record["keys"])


def kv_store_records(n: int, *, seed: int, split: Literal["train", "val"]) -> list[dict[str, Any]]:
    """n records {"id", "prompt", "env": "kv_store", "store", "keys", "answer", "tools"} of one split.

    Train cycles through reshuffled passes when n exceeds the split; val raises instead (repeated
    validation prompts would bias the success rate)."""
    if split not in ("train", "val"):
        raise ValueError(f"split={split!r} is not allowed; use 'train' or 'val'.")
    if n < 0:
        raise ValueError(f"n={n} must be >= 0.")
    rows = _problems()
    rows = rows[_is_val(rows) == (split == "val")]
    if split == "val" and n > len(rows):
        raise ValueError(f"asked for {n} val records but the kv_store val split holds {len(rows)} problems; "
                         f"lower data.val_size to <= {len(rows)}.")
    rng = np.random.default_rng([seed, int(split == "val"), 0x6B76])  # "kv"
    passes = [rng.permutation(len(rows)) for _ in range(max(1, -(-n // len(rows))))]
    order = np.concatenate(passes)[:n]
    out = []
    for i, r in enumerate(rows[order].tolist()):
        keys = list(KEYS)
        other = np.random.default_rng([seed, int(split == "val"), i, 0x6B76])
        free = [k for k in string.ascii_lowercase if k not in keys]
        extra = other.choice(len(free), size=NUM_DISTRACTORS, replace=False).tolist()
        store = dict(zip(keys, r)) | {free[j]: int(other.integers(10)) for j in extra}
        store = dict(sorted(store.items()))
        out.append({"id": f"kv-{split}-{i}", "prompt": kv_store_text({"keys": keys}), "env": "kv_store",
                    "store": store, "keys": keys, "answer": sum(r), "tools": TOOLS})
    return out
