"""Metric sinks on resume (no duplicate or missing steps), console output, plots."""

from __future__ import annotations

import json
import sys
import types

import pytest

from nemo_rlvr.config import LoggingConfig
from nemo_rlvr.logging import (ConsoleSink, JsonlSink, MetricLogger, is_wall_clock, read_metrics,
                               truncate_metrics)


def write_rows(path, steps):
    path.write_text("".join(json.dumps({"step": s, "train/reward_mean": s / 10}) + "\n" for s in steps))


def test_truncate_drops_rows_past_the_resumed_step_and_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_rows(path, [0, 1, 2, 3, 4, 5])
    with path.open("a") as f:
        f.write('{"step": 6, "train/rew')               # SIGKILL mid-write
    assert truncate_metrics(path, keep_through=4) == 2   # step 5 and the torn line
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 2, 3, 4]
    assert not (tmp_path / "metrics.jsonl.tmp").exists()
    assert truncate_metrics(path, keep_through=4) == 0   # nothing to do: the file is left alone


def test_jsonl_sink_resumed_continues_and_fresh_starts_over(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    write_rows(path, [0, 1, 2, 3])
    sink = JsonlSink(path, resume_step=2)                 # checkpoint at 2; 3 was logged, then a crash
    sink.write(3, {"train/reward_mean": 0.3})
    sink.close()
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 2, 3]
    assert "dropped 1 rows logged after step 2" in caplog.text
    JsonlSink(path, resume_step=None).close()            # a fresh run in the same folder
    assert read_metrics(path) == []


def test_wall_clock_keys():
    assert is_wall_clock("timing/generate") and is_wall_clock("throughput/gen_tokens_per_s")
    assert is_wall_clock("verifier/seconds") and is_wall_clock("weight_sync/apply_s")
    assert not is_wall_clock("train/reward_mean") and not is_wall_clock("weight_sync/bytes")


def test_console_lines_with_eta(capsys, monkeypatch):
    clock = iter([100.0, 104.0, 106.0])
    monkeypatch.setattr("nemo_rlvr.logging.time.perf_counter", lambda: next(clock))
    sink = ConsoleSink(10, start_step=4)                 # resumed at step 4 (t=100)
    sink.write(5, {"train/reward_mean": 0.25, "train/accuracy": 0.5, "timing/step": 4.0})
    sink.write(6, {"val/accuracy": 0.75})
    lines = capsys.readouterr().out.splitlines()
    # step 5 at t=104: 4 s/step * 5 left = 20 s; step 6 at t=106: 3 s/step * 4 left = 12 s
    assert lines[0] == "step    5/10 | reward 0.250 | acc 0.500 | step_s 4.00 | eta   20s"
    assert lines[1] == "step    6/10 | val/accuracy 0.750 | eta   12s"


def test_console_style_auto_prints_lines_when_not_a_tty(tmp_path, capsys):
    logger = MetricLogger(LoggingConfig(jsonl=False), run_dir=tmp_path, run_name="x", total_steps=3)
    assert type(logger.sinks[0]).__name__ == "ConsoleSink"          # pytest's stdout is not a TTY
    bar = MetricLogger(LoggingConfig(jsonl=False, console_style="bar"), run_dir=tmp_path, run_name="x",
                       total_steps=3)
    bar.write(1, {"train/reward_mean": 0.5})
    bar.write(2, {"val/accuracy": 0.5})
    bar.close()
    assert type(bar.sinks[0]).__name__ == "ProgressSink" and "step 2: val/accuracy 0.500" in capsys.readouterr().out


def test_tensorboard_resume_purges_steps_past_the_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = LoggingConfig(console=False, jsonl=False, tensorboard=True)
    first = MetricLogger(cfg, run_dir=tmp_path, run_name="x", total_steps=6)
    for s in range(1, 6):
        first.write(s, {"train/reward_mean": float(s)})
    first.close()
    resumed = MetricLogger(cfg, run_dir=tmp_path, run_name="x", total_steps=6, resume_step=3)
    for s in range(4, 7):
        resumed.write(s, {"train/reward_mean": 10.0 + s})
    resumed.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    pts = [(e.step, e.value) for e in acc.Scalars("train/reward_mean")]
    assert pts == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 14.0), (5, 15.0), (6, 16.0)]


def test_wandb_resume_same_id_and_skips_steps_the_server_holds(tmp_path, monkeypatch):
    """Online, a resumed run may already hold steps past the checkpoint (logged before a crash):
    wandb drops non-monotonic steps, so the sink skips them itself and says so."""
    calls: dict = {}

    class Run:
        id, step = "run42", 8                              # the server holds steps 0..7

        def log(self, data, step):
            calls.setdefault("steps", []).append(step)

        def finish(self):
            calls["finished"] = True

    def init(**kw):
        calls["init"] = kw
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    cfg = LoggingConfig(console=False, jsonl=False, wandb=True, wandb_project="p", wandb_entity="e",
                        wandb_group="g", wandb_tags=("a", "b"))
    logger = MetricLogger(cfg, run_dir=tmp_path, run_name="n", total_steps=10, wandb_run_id="run42",
                          resume_step=5)
    for s in range(6, 10):
        logger.write(s, {"train/reward_mean": 1.0})
    logger.close()
    assert calls["init"]["id"] == "run42" and calls["init"]["resume"] == "allow"
    assert (calls["init"]["project"], calls["init"]["entity"], calls["init"]["group"], calls["init"]["tags"],
            calls["init"]["name"]) == ("p", "e", "g", ["a", "b"], "n")
    assert calls["steps"] == [8, 9] and calls["finished"]


def test_plot_writes_pngs(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from nemo_rlvr.cli import main

    rows = [{"step": 0, "val/accuracy": 0.1}] + [
        {"step": s, "train/reward_mean": s / 10, "train/reward_std": 0.1, "train/accuracy": s / 12,
         "loss/kl": s / 100, "train/response_len_mean": 4.0, "train/response_len_max": 5,
         "timing/step": 1.0 + s / 10, "timing/generate": 0.5} for s in range(1, 11)]
    rows[-1]["val/accuracy"] = 0.6
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["plot", str(tmp_path)]) == 0
    names = {"reward", "accuracy", "kl", "response_length", "step_time", "overview"}
    assert {p.stem for p in (tmp_path / "plots").glob("*.png")} == names
    for name in names:
        png = (tmp_path / "plots" / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert str(tmp_path / "plots" / "overview.png") in capsys.readouterr().out
