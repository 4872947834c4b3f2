"""`nemo-rlvr data prepare`: public dataset formats -> our records (one JSONL line each).

    prepare("gsm8k", Path("gsm8k_train.jsonl"), Path("out.jsonl"))  -> PrepareReport

    gsm8k      {"question", "answer": "... #### 72"}                  -> math  answer "72"
    math       {"problem", "solution" with \\boxed{..}} (MATH) or
               {"problem", "answer"} (DeepScaleR)                     -> math  answer
    humaneval  {"task_id", "prompt", "test", "entry_point"}           -> code  tests [test], entry_point
    mbpp       {"task_id", "text" | "prompt", "test_list",
                "test_setup_code"?, "test_imports"?}                  -> code  tests (setup + each assert)
    bfcl       BFCL_v4_*.json + possible_answer/ (data/bfcl.py)      -> tool_call, string_match normalized
    nemo_gym   NeMo Gym rows (data/nemo_gym.py)                       -> math / code / tool_call / instruction

Math and code prompts get an instruction on the answer format (MATH_INSTRUCTION,
CODE_INSTRUCTION) unless one is given. Every converted record is then checked against its
environment exactly as training loads it; a row that fails either step is reported with its
line and the reason, never written and never dropped silently.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nemo_rlvr.config import ConfigError, EnvConfig
from nemo_rlvr.data.bfcl import bfcl_record
from nemo_rlvr.data.checks import RecordChecker
from nemo_rlvr.data.nemo_gym import nemo_gym_record
from nemo_rlvr.data.readers import BadRow, RecordProblem, read_jsonl, read_rows
from nemo_rlvr.envs.math import find_boxes

FORMATS = ("gsm8k", "math", "humaneval", "mbpp", "bfcl", "nemo_gym")
MATH_INSTRUCTION = "\n\nPut your final answer within \\boxed{}."
CODE_INSTRUCTION = "\n\nWrite the complete function in one ```python code block."


def _text(row: Mapping[str, Any], *keys: str) -> str:
    for k in keys:
        if isinstance(row.get(k), str) and row[k].strip():
            return row[k]
    raise RecordProblem(f"field {keys[0]!r}{' (or ' + ', '.join(map(repr, keys[1:])) + ')' if keys[1:] else ''} "
                        f"is missing or empty; expected a non-empty string")


def gsm8k(row: Mapping[str, Any], instruction: str) -> dict[str, Any]:
    question, solution = _text(row, "question"), _text(row, "answer")
    if "####" not in solution:
        raise RecordProblem("field 'answer' has no '#### <number>' line; expected GSM8K's solution format")
    answer = solution.rsplit("####", 1)[1].strip().replace(",", "")
    if not answer:
        raise RecordProblem("field 'answer' is empty after '####'; expected the final number")
    return {"prompt": question + instruction, "env": "math", "answer": answer}


def math_row(row: Mapping[str, Any], instruction: str) -> dict[str, Any]:
    problem = _text(row, "problem", "question")
    answer = row.get("answer")
    if answer is None or answer == "":
        solution = _text(row, "solution", "answer")
        boxes, closed = find_boxes(solution)
        if not boxes or not closed:
            raise RecordProblem("no 'answer' field and no closed \\boxed{...} in 'solution'; expected one of them")
        answer = boxes[-1]
    return {"prompt": problem + instruction, "env": "math", "answer": answer}


def humaneval(row: Mapping[str, Any], instruction: str) -> dict[str, Any]:
    prompt, test, entry = _text(row, "prompt"), _text(row, "test"), _text(row, "entry_point")
    return {"id": row.get("task_id"), "prompt": f"Complete this Python function.\n\n```python\n{prompt}```"
            + instruction, "env": "code", "tests": [test], "entry_point": entry}


def mbpp(row: Mapping[str, Any], instruction: str) -> dict[str, Any]:
    text = _text(row, "text", "prompt")
    tests = row.get("test_list")
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
        raise RecordProblem("field 'test_list' is not a non-empty list of assert strings")
    setup = "\n".join([*(row.get("test_imports") or []), row.get("test_setup_code") or ""]).strip()
    shown = "\n".join(tests)
    return {"id": row.get("task_id"), "prompt": f"{text}\nYour code should pass these tests:\n\n{shown}"
            + instruction, "env": "code", "tests": [f"{setup}\n{t}" if setup else t for t in tests]}


CONVERTERS: dict[str, Callable[[Mapping[str, Any], str], dict[str, Any]]] = {
    "gsm8k": gsm8k, "math": math_row, "humaneval": humaneval, "mbpp": mbpp,
    "nemo_gym": lambda row, _: nemo_gym_record(row),
}
DEFAULT_INSTRUCTION = {"gsm8k": MATH_INSTRUCTION, "math": MATH_INSTRUCTION, "humaneval": CODE_INSTRUCTION,
                       "mbpp": CODE_INSTRUCTION}


@dataclass
class PrepareReport:
    rows: int = 0
    written: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)
    """(location, why) of every row that was not converted."""
    envs: dict[str, int] = field(default_factory=dict)

    @property
    def problems(self) -> list[str]:
        return [f"{where}: {why}" for where, why in self.bad]

    def summary(self, src: Path, out: Path) -> str:
        envs = ", ".join(f"{k} {v}" for k, v in sorted(self.envs.items())) or "none"
        return (f"{src}: {self.rows} rows, {self.written} records written to {out} ({envs}), "
                f"{len(self.problems)} bad")


def _bfcl_answers(src: Path, answers: Path | None) -> dict[str, Any] | None:
    path = answers or src.parent / "possible_answer" / src.name
    if not path.is_file():
        if answers is not None:
            raise ConfigError(f"--answers {answers} does not exist; give BFCL's possible_answer/{src.name}.")
        return None
    return {r["id"]: r for _, r in read_jsonl(path) if isinstance(r, Mapping) and "id" in r}


def convert_rows(fmt: str, src: Path, *, answers: Path | None = None, instruction: str | None = None
                 ) -> tuple[list[dict[str, Any]], PrepareReport]:
    """(records, report) of a file in format `fmt`: every row converted and checked."""
    if fmt not in FORMATS:
        raise ConfigError(f"--from {fmt!r} is not a known format; use one of {', '.join(FORMATS)}.")
    rows = read_rows(str(src), split_name="train", key="IN")
    report, records = PrepareReport(rows=len(rows)), []
    checker = RecordChecker(EnvConfig(name="math"), chat_template=True)
    if fmt == "bfcl":
        by_id = _bfcl_answers(src, answers)
        irrelevance = "irrelevance" in src.name
    text = DEFAULT_INSTRUCTION.get(fmt, "") if instruction is None else instruction
    for where, row in rows:
        try:
            if isinstance(row, BadRow):
                raise RecordProblem(row.why)
            if not isinstance(row, Mapping):
                raise RecordProblem("the row is not a JSON object")
            if fmt == "bfcl":
                rec = bfcl_record(row, None if by_id is None else by_id.get(row.get("id")),
                                  irrelevance=irrelevance)
            else:
                rec = CONVERTERS[fmt](row, text)
            why = checker.problem(rec)
            if why:
                raise RecordProblem(why)
        except RecordProblem as e:
            report.bad.append((where, str(e)))
            continue
        rec = {"id": rec.get("id") or f"{src.stem}-{len(records)}", **rec}
        records.append(rec)
        report.envs[rec["env"]] = report.envs.get(rec["env"], 0) + 1
    report.written = len(records)
    return records, report


def prepare(fmt: str, src: Path, out: Path, *, answers: Path | None = None,
            instruction: str | None = None) -> PrepareReport:
    """Convert `src` and write the good records to `out` (JSONL)."""
    records, report = convert_rows(fmt, src, answers=answers, instruction=instruction)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return report
