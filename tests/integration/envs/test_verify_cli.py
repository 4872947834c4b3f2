"""`nemo-rlvr verify` as a subprocess (`python -m nemo_rlvr.scoring.cli`): output lines match input,
errors exit 2. In-process runs of the CLI are tests/unit/envs/test_verify_cli_inline.py."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[3]
MODULE = "tests.helpers.verifier_envs"

GOOD_AND_BAD = [
    '{"id": "a", "prompt": "1+1", "response": "2", "answer": 2}',
    '{"id": "b", "prompt": "1+2", "response": "4", "answer": 3, "extra": [1, 2]}',
    "this is not json",
    "[1, 2]",
    "",  # blank: not a record, skipped
    '{"id": "e", "prompt": "no response"}',
    '{"id": "f", "env": "test_raise", "response": "x"}',
    '{"id": "g", "env": "no_such_env", "response": "x"}',
    '{"id": "h", "env": "test_sleep", "response": "x", "sleep_s": 30}',
    '{"id": "i", "response": "-5", "answer": -5}',
]


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "nemo_rlvr.scoring.cli", "verify", *args], input=stdin,
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False)


def test_subprocess_scores_good_and_malformed_lines_in_order(tmp_path):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("\n".join(GOOD_AND_BAD) + "\n")
    r = run_cli("--env", "arithmetic", "--env-module", MODULE, "--input", str(src), "--output", str(dst),
                "--workers", "2", "--timeout-s", "0.5")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert len(out) == 9  # one per non-blank input line
    assert [o.get("id") for o in out] == ["a", "b", None, None, "e", "f", "g", "h", "i"]
    assert [o["reward"] for o in out] == [1.0, 0, 0, 0, 0, 0, 0, 0, 1.0]
    assert out[0] == {"id": "a", "prompt": "1+1", "response": "2", "answer": 2, "reward": 1.0,
                      "reward_components": {"correct": 1.0}, "error": None}
    assert out[1]["extra"] == [1, 2] and out[1]["error"] is None  # extra fields kept
    assert out[2]["raw"] == "this is not json"
    assert out[2]["error"].startswith("line 3: the line is not valid JSON")
    assert out[3]["raw"] == "[1, 2]" and "JSON array, not an object" in out[3]["error"]
    assert out[4]["error"].startswith("line 6: the record has no 'response' field")
    assert out[5]["error"] == "ValueError: bad response 'x'"
    assert out[6]["error"].startswith("unknown environment 'no_such_env'")
    assert out[7]["error"] == "timeout after 0.5s"
    assert all(set(o) >= {"reward", "reward_components", "error"} for o in out)
    assert "9 records (6 with errors)" in r.stderr


def test_subprocess_missing_input_exits_2_naming_the_flag(tmp_path):
    r = run_cli("--env", "arithmetic", "--input", str(tmp_path / "nope.jsonl"),
                "--output", str(tmp_path / "o"))
    assert r.returncode == 2
    assert "--input" in r.stderr and "does not exist" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_subprocess_unknown_env_exits_2(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": 1, "response": "1"}\n')
    r = run_cli("--env", "no_such_env", "--input", str(src), "--output", str(tmp_path / "o"))
    assert r.returncode == 2
    assert "--env 'no_such_env' is not a registered environment; known: " in r.stderr
    assert "arithmetic" in r.stderr and "--env-module" in r.stderr and "Traceback" not in r.stderr
