"""Checkpointer: manifest + checksums, corrupt/incomplete folders skipped, keep-k/best-m pruning,
resume planning (auto, never, a path) and the config-change rules. The learner is a stand-in
that writes one file; the real learner's state round trip is
tests/integration/test_resume_state_and_export.py."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from nemo_rlvr.checkpoint import (
    Checkpointer,
    CheckpointError,
    check_config,
    find_latest,
    resume_point,
    set_aside_newer,
    verify,
)
from nemo_rlvr.config import dump_config, load_config
from nemo_rlvr.controller import RunState
from nemo_rlvr.data.dataset import PromptLoader
from nemo_rlvr.types import Prompt


class FakeLearner:
    """Learner stand-in: its whole state is one number, saved as learner/w.json."""

    def __init__(self, value: float = 0.0):
        self.value, self.workers = value, [self]

    def save(self, path: str) -> None:
        Path(path, "w.json").write_text(json.dumps(self.value))

    def load(self, path: str) -> None:
        self.value = json.loads(Path(path, "w.json").read_text())

    def push_weights(self, generators, bucket_bytes: int) -> dict:  # as LearnerGroup over the object store
        return generators.load_weights([("w", self.value)])


class FakeGenerators:
    def __init__(self):
        self.loaded: list = []

    def load_weights(self, buckets: list) -> dict:
        self.loaded.append(buckets)
        return {}


def config(tmp_path: Path, model_dir: str, *overrides: str):
    return load_config(None, [f"model.path={model_dir}", f"output_dir={tmp_path}", *overrides])


def checkpointer(cfg, model_dir: str, learner: FakeLearner | None = None) -> Checkpointer:
    loader = PromptLoader([Prompt(f"p{i}", [i], "arithmetic", uid=i) for i in range(10)], seed=0)
    return Checkpointer(cfg.checkpoint, run_dir=cfg.run_dir, learner=learner or FakeLearner(), loader=loader,
                        state=RunState(), config_text=dump_config(cfg), model_dir=model_dir)


def test_save_is_complete_and_verified(tmp_path, tiny_model_dir):
    cfg = config(tmp_path, tiny_model_dir)
    ck = checkpointer(cfg, tiny_model_dir)
    ck.loader.next_batch(3)
    ck.state.step, ck.state.consumed_samples = 2, 24
    path = ck.save(2, {"val/accuracy": 0.5})
    assert path.name == "step_2" and not (path.parent / "tmp_step_2").exists()
    assert verify(path) is None
    man = json.loads((path / "manifest.json").read_text())
    assert man["step"] == 2 and man["metric"] == {"name": "val/accuracy", "value": 0.5}
    assert {"learner/w.json", "controller.json", "rng.pt", "config.yaml", "hf/config.json",
            "hf/tokenizer.json"} <= set(man["files"])
    ctl = json.loads((path / "controller.json").read_text())
    assert ctl["data"] == {"epoch": 0, "index": 3, "seed": 0}
    assert ctl["run"]["step"] == 2 and ctl["run"]["consumed_samples"] == 24 and ctl["run"]["best_metric"] == 0.5


def test_flipped_bytes_fail_the_checksum_and_auto_takes_the_previous(tmp_path, tiny_model_dir, caplog):
    cfg = config(tmp_path, tiny_model_dir)
    ck = checkpointer(cfg, tiny_model_dir)
    for step in (2, 4):
        ck.learner.value = float(step)
        ck.save(step)
    target = ck.root / "step_4" / "learner" / "w.json"
    data = bytearray(target.read_bytes())
    data[0] ^= 0xFF                                     # same size, other bytes
    target.write_bytes(bytes(data))
    assert verify(ck.root / "step_4") == "learner/w.json fails its sha256 checksum (corrupt)"
    with caplog.at_level(logging.WARNING):
        assert find_latest(ck.root) == ck.root / "step_2"
    assert f"checkpoint {ck.root / 'step_4'} is skipped: learner/w.json fails its sha256" in caplog.text


def test_incomplete_write_is_named_and_ignored(tmp_path, tiny_model_dir, caplog):
    cfg = config(tmp_path, tiny_model_dir)
    ck = checkpointer(cfg, tiny_model_dir)
    ck.save(2)
    shutil.copytree(ck.root / "step_2", ck.root / "tmp_step_4")    # a write that never finished
    (ck.root / "tmp_step_4" / "manifest.json").unlink()
    shutil.copytree(ck.root / "tmp_step_4", ck.root / "step_6")    # renamed without a manifest
    with caplog.at_level(logging.WARNING):
        assert find_latest(ck.root) == ck.root / "step_2"
    assert f"checkpoint {ck.root / 'tmp_step_4'} is incomplete" in caplog.text
    assert f"checkpoint {ck.root / 'step_6'} is skipped: no manifest.json" in caplog.text


def test_keep_last_and_keep_best_prune_the_rest_but_never_the_resumed_one(tmp_path, tiny_model_dir):
    cfg = config(tmp_path, tiny_model_dir, "checkpoint.keep_last=2", "checkpoint.keep_best=1")
    ck = checkpointer(cfg, tiny_model_dir)
    ck.protected = ck.root / "step_1"
    # accuracy per step: 1: .3, 2: .9 (best), 3: .1, 4: none (did not validate), 5: .2, 6: .4
    for step, acc in [(1, 0.3), (2, 0.9), (3, 0.1), (4, None), (5, 0.2), (6, 0.4)]:
        ck.save(step, {} if acc is None else {"val/accuracy": acc})
    # last 2: 5, 6; best 1: 2; protected: 1; so 3 and 4 are gone
    assert sorted(p.name for p in ck.root.iterdir()) == ["step_1", "step_2", "step_5", "step_6"]
    assert ck.state.best_metric == 0.9


def test_keep_best_with_min_mode(tmp_path, tiny_model_dir):
    cfg = config(tmp_path, tiny_model_dir, "checkpoint.keep_last=1", "checkpoint.keep_best=2",
                 "checkpoint.best_metric=val/loss", "checkpoint.best_mode=min")
    ck = checkpointer(cfg, tiny_model_dir)
    for step, loss in [(1, 0.5), (2, 0.2), (3, 0.9), (4, 0.3)]:
        ck.save(step, {"val/loss": loss})
    # last 1: 4; best 2 (lowest): 2 (.2), 4 (.3)
    assert sorted(p.name for p in ck.root.iterdir()) == ["step_2", "step_4"]


def test_resume_auto_restores_everything_and_syncs_the_generators(tmp_path, tiny_model_dir, capsys):
    cfg = config(tmp_path, tiny_model_dir, "checkpoint.resume=auto")
    assert resume_point(cfg, model_dir=tiny_model_dir) is None     # nothing yet: fresh
    ck = checkpointer(cfg, tiny_model_dir, FakeLearner(7.0))
    ck.loader.next_batch(13)                                        # epoch 1, index 3
    ck.state.step, ck.state.consumed_samples, ck.state.wandb_run_id = 4, 52, "abc123"
    ck.save(4)
    point = resume_point(cfg, model_dir=tiny_model_dir)
    assert point.step == 4 and point.path == ck.root / "step_4"
    fresh, gens = checkpointer(cfg, tiny_model_dir), FakeGenerators()
    fresh.state.load_state_dict(point.run)
    line = fresh.restore(point, generators=gens, bucket_bytes=1)
    assert fresh.learner.value == 7.0 and gens.loaded == [[("w", 7.0)]]   # synced before any step
    assert (fresh.loader.epoch, fresh.loader.index) == (1, 3)
    assert fresh.state.wandb_run_id == "abc123" and fresh.protected == point.path
    assert line.startswith(f"resumed from {ck.root / 'step_4'}: step 4, 52 samples consumed, data epoch 1 "
                           f"index 3")


def test_resume_auto_refuses_to_restart_over_only_broken_checkpoints(tmp_path, tiny_model_dir):
    cfg = config(tmp_path, tiny_model_dir, "checkpoint.resume=auto")
    ck = checkpointer(cfg, tiny_model_dir)
    (ck.root / "tmp_step_2").mkdir(parents=True)     # a crash during the first write: nothing to lose
    assert resume_point(cfg, model_dir=tiny_model_dir) is None
    ck.save(2)
    (ck.root / "step_2" / "controller.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"none of the checkpoints in .* \(step_2\) is usable"):
        resume_point(cfg, model_dir=tiny_model_dir)


def test_resume_never_refuses_a_folder_with_checkpoints(tmp_path, tiny_model_dir):
    cfg = config(tmp_path, tiny_model_dir)
    checkpointer(cfg, tiny_model_dir).save(2)
    with pytest.raises(CheckpointError, match=r"checkpoint.resume=never, but .* holds step_2.*resume=auto"):
        resume_point(config(tmp_path, tiny_model_dir, "checkpoint.resume=never"), model_dir=tiny_model_dir)


def test_resume_from_a_path_checks_it(tmp_path, tiny_model_dir):
    cfg = config(tmp_path, tiny_model_dir)
    ck = checkpointer(cfg, tiny_model_dir)
    ck.save(2)
    point = resume_point(config(tmp_path, tiny_model_dir, f"checkpoint.resume={ck.root / 'step_2'}"),
                         model_dir=tiny_model_dir)
    assert point.step == 2 and not point.forked
    fork = resume_point(config(tmp_path, tiny_model_dir, "name=branch",
                               f"checkpoint.resume={ck.root / 'step_2'}"), model_dir=tiny_model_dir)
    assert fork.step == 2 and fork.forked                  # another run's checkpoint: a branch
    (ck.root / "step_2" / "rng.pt").unlink()
    with pytest.raises(CheckpointError, match="rng.pt is missing"):
        resume_point(config(tmp_path, tiny_model_dir, f"checkpoint.resume={ck.root / 'step_2'}"),
                     model_dir=tiny_model_dir)
    with pytest.raises(CheckpointError, match="is not a folder"):
        resume_point(config(tmp_path, tiny_model_dir, f"checkpoint.resume={tmp_path / 'nope'}"),
                     model_dir=tiny_model_dir)


def test_changed_config_refused_with_key_and_both_values(tmp_path, tiny_model_dir, caplog):
    cfg = config(tmp_path, tiny_model_dir)
    checkpointer(cfg, tiny_model_dir).save(2)
    changed = config(tmp_path, tiny_model_dir, "data.shuffle_seed=5", "data.chat_template=true",
                     "learner.lr=3e-4")
    with pytest.raises(CheckpointError) as e:
        resume_point(changed, model_dir=tiny_model_dir)
    msg = str(e.value)
    assert "data.shuffle_seed: 0 (checkpoint) -> 5 (now)" in msg and "prompt order" in msg
    assert "data.chat_template: False (checkpoint) -> True (now)" in msg and "tokenized" in msg
    assert "learner.lr" not in msg                                   # harmless: not refused
    harmless = config(tmp_path, tiny_model_dir, "learner.lr=3e-4", "train.steps=99",
                      "logging.tensorboard=true", "train.prompts_per_step=8", "learner.num_workers=2")
    with caplog.at_level(logging.WARNING):
        assert resume_point(harmless, model_dir=tiny_model_dir).step == 2
    assert "learner.lr: 0.0002 (checkpoint) -> 0.0003 (now)" in caplog.text
    assert f"train.steps: {cfg.train.steps} (checkpoint) -> 99 (now)" in caplog.text
    assert "learner.num_workers: 1 (checkpoint) -> 2 (now)" in caplog.text  # DCP reshards


def test_model_path_change_refused_unless_the_same_model_moved(tmp_path, tiny_model_dir):
    old = {"model": {"path": "/a"}, "learner": {"lr": 1.0}}
    with pytest.raises(CheckpointError, match=r"model.path: '/a' \(checkpoint\) -> '/b' \(now\)"):
        check_config(old, {"model": {"path": "/b"}, "learner": {"lr": 1.0}}, path=Path("x"), same_model=False)
    lines = check_config(old, {"model": {"path": "/b"}, "learner": {"lr": 2.0}}, path=Path("x"), same_model=True)
    assert lines == ["learner.lr: 1.0 (checkpoint) -> 2.0 (now)", "model.path: '/a' (checkpoint) -> '/b' (now)"]


def test_newer_checkpoints_are_set_aside_when_resuming_an_older_one(tmp_path, tiny_model_dir):
    cfg = config(tmp_path, tiny_model_dir, "checkpoint.keep_last=3")
    ck = checkpointer(cfg, tiny_model_dir)
    for step in (2, 4, 6):
        ck.save(step)
    (ck.root / "tmp_step_8").mkdir()
    set_aside_newer(ck.root, 2)
    names = sorted(p.name for p in ck.root.iterdir())
    assert names[0].startswith("stale_step_4-") and names[1].startswith("stale_step_6-")
    assert names[2:] == ["step_2"]
    assert find_latest(ck.root) == ck.root / "step_2"


def test_causes_behind_torch_dcp_failures_are_found():
    """DCP wraps a rank's failure in a CheckpointException (a BaseException) with `failures`:
    a disk error is reported as one, a Ctrl-C inside the writer stays a Ctrl-C."""
    from torch.distributed.checkpoint.api import CheckpointException

    from nemo_rlvr.checkpoint import _interrupted, _os_error

    disk = CheckpointException("ranks", {0: (OSError(28, "No space left on device"), None)})
    assert isinstance(_os_error(disk), OSError) and _os_error(disk).errno == 28 and not _interrupted(disk)
    ctrl_c = CheckpointException("ranks", {0: (KeyboardInterrupt(), None)})
    assert _interrupted(ctrl_c) and _os_error(ctrl_c) is None
    try:
        raise RuntimeError("ray task failed") from OSError(5, "I/O error")
    except RuntimeError as e:
        assert _os_error(e).errno == 5
