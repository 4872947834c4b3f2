"""A second SIGTERM stops the run at once (status 130 in the CLI) even when the code it lands in
wraps the KeyboardInterrupt: DCP's checkpoint writer turns it into a CheckpointException, which
the checkpointer then reports as a write error. Found by tests/integration/test_resume.py when
a step got fast enough for the second signal to land inside the checkpoint write."""

from __future__ import annotations

import os
import signal
from types import SimpleNamespace

import pytest

from nemo_rlvr import controller
from nemo_rlvr.checkpoint import CheckpointWriteError


def fake_run():
    cfg = SimpleNamespace(validation=SimpleNamespace(at_start=False), train=SimpleNamespace(steps=5))
    return SimpleNamespace(cfg=cfg, state=SimpleNamespace(step=0))


def test_a_second_signal_wrapped_by_a_checkpoint_write_still_stops_at_once(monkeypatch):
    def loop(run, timer, stop):
        os.kill(os.getpid(), signal.SIGTERM)          # the first: finish the step, then stop
        assert stop == {"signal": "SIGTERM"}
        try:
            os.kill(os.getpid(), signal.SIGTERM)      # the second, inside "the checkpoint writer"
        except KeyboardInterrupt as e:
            raise CheckpointWriteError("writing checkpoint tmp_step_4 failed: CheckpointException") from e
        raise AssertionError("the second signal did not interrupt")

    monkeypatch.setattr(controller, "_loop", loop)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="second SIGTERM") as info:
        controller.train(fake_run())
    assert isinstance(info.value.__cause__, CheckpointWriteError)
    assert signal.getsignal(signal.SIGTERM) is before                       # the old handler is back


def test_a_write_error_without_a_second_signal_stays_a_write_error(monkeypatch):
    def loop(run, timer, stop):
        raise CheckpointWriteError("disk full")

    monkeypatch.setattr(controller, "_loop", loop)
    with pytest.raises(CheckpointWriteError, match="disk full"):
        controller.train(fake_run())
