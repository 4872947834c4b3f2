"""Built-in `arithmetic` environment: the answer is an integer, compared exactly.

Used by the tiny CPU recipe. The response must be the integer alone (surrounding
whitespace allowed): "46" scores 1 for answer 46; "46 or 47", "046x" or "" score 0.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from nemo_rlvr.envs.base import FieldSpec, Score, register_env

_INT = re.compile(r"-?\d+")


@register_env("arithmetic")
class ArithmeticEnv:
    name = "arithmetic"
    fields = {"answer": FieldSpec((int, str), "the integer answer, e.g. 46 or \"46\"")}

    @staticmethod
    def check_fields(fields: Mapping[str, Any]) -> str | None:
        answer = fields["answer"]
        if isinstance(answer, str) and not _INT.fullmatch(answer.strip()):
            return f"field 'answer'={answer!r:.40} is not an integer; expected the integer answer, e.g. 46"
        return None

    def score_record(self, response: str, fields: Mapping[str, Any]) -> Score:
        if "answer" not in fields:
            return Score(0.0, {"correct": 0.0}, "missing env field 'answer'")
        text = response.strip()
        ok = bool(_INT.fullmatch(text)) and int(text) == int(fields["answer"])
        return Score(float(ok), {"correct": float(ok)})

