"""`nemo-rlvr verify` in-process (`main`, --workers 0): usage errors exit 2, order across batches,
stdin to stdout. As a subprocess, with a worker pool: tests/integration/envs/test_verify_cli.py."""

from __future__ import annotations

import io
import json
import sys

import pytest

from nemo_rlvr.scoring.cli import main


@pytest.mark.parametrize("args, needle", [
    (["--env-module", "no_such_pkg.envs"], "--env-module 'no_such_pkg.envs' could not be imported"),
    (["--output", "/no/such/dir/out.jsonl"],
     "--output '/no/such/dir/out.jsonl': folder '/no/such/dir' does not exist"),
])
def test_usage_errors_exit_2(tmp_path, capsys, args, needle):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": 1, "response": "1"}\n')
    base = {"--env": "arithmetic", "--input": str(src), "--output": str(tmp_path / "o.jsonl")}
    base.update(dict(zip(args[::2], args[1::2])))
    argv = ["verify", *[x for kv in base.items() for x in kv]]
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_streams_many_batches_in_order_inline(tmp_path, capsys):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [json.dumps({"id": i, "response": str(i % 7), "answer": 3}) for i in range(700)]  # > 2 batches
    src.write_text("\n".join(lines) + "\n")
    argv = ["verify", "--env", "arithmetic", "--input", str(src), "--output", str(dst), "--workers", "0"]
    assert main(argv) == 0
    out = [json.loads(x) for x in dst.read_text().splitlines()]
    assert [o["id"] for o in out] == list(range(700))
    assert [o["reward"] for o in out] == [float(i % 7 == 3) for i in range(700)]


def test_stdin_to_stdout(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"id": 1, "response": "4", "answer": 4}\nnope\n'))
    assert main(["verify", "--env", "arithmetic", "--input", "-", "--output", "-", "--workers", "0"]) == 0
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(o.get("id"), o["reward"]) for o in out] == [(1, 1.0), (None, 0.0)]
