"""Exact resume through the real CLI: SIGKILL mid-step, and a crash mid-checkpoint-write.

Each run is `python -m nemo_rlvr.cli train` in a subprocess: cluster.mode=local with one
torch thread (as a Ray actor has), and the checkpoint-crash case through Ray actors. A
reference run goes 6 steps uninterrupted; an interrupted run is resumed with
checkpoint.resume=auto. Every logged metric (wall-clock keys aside) and the
final weights must equal the reference's bit for bit. The data is an `instruction` task
(`all_uppercase`) that an untrained tiny model passes about a quarter of the time, so rewards
vary within groups and every step really updates the policy.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nemo_rlvr.config import REPO_ROOT
from nemo_rlvr.logging import is_wall_clock, read_metrics

STEPS = 6
CRASH_VAR = "NEMO_RLVR_TEST_CRASH_IN_CHECKPOINT"


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "upper.jsonl"
    rows = [{"prompt": f"{a}+{b}=", "env": "instruction", "instructions": [{"type": "all_uppercase"}]}
            for a in range(10, 99, 7) for b in range(11, 99, 13)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train_args(model_dir: str, data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "nemo_rlvr.cli", "train", f"model.path={model_dir}", f"output_dir={out}",
            f"train.steps={STEPS}", "checkpoint.every_steps=2", "train.prompts_per_step=4",
            "algorithm.group_size=4", "validation.every_steps=0", "cluster.mode=local",
            f"data.source={data}", f"data.val_source={data}", "data.val_size=8", "env.name=instruction",
            "learner.lr=1e-3", "algorithm.kl_coef=0.01", "checkpoint.resume=auto", *extra]


def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "PYTHONPATH": str(REPO_ROOT)}
    env.pop(CRASH_VAR, None)
    return {**env, **extra}


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the run's process group: the trainer and anything it started (Ray's agents
    outlive a driver that died without ray.shutdown)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_train(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(args, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=600)
    finally:
        kill_group(proc)
        proc.wait()
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def reference(tiny_model_dir, data_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    proc = run_train(train_args(tiny_model_dir, data_file, out), child_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "tiny_cpu"


def comparable(rows: list[dict], ignore: set[str] = frozenset()) -> dict[int, dict]:
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)), f"duplicate or unordered steps in metrics.jsonl: {steps}"
    return {r["step"]: {k: v for k, v in r.items() if not is_wall_clock(k) and k not in ignore} for r in rows}


def assert_same_run(run: Path, reference: Path, ignore: set[str] = frozenset()) -> None:
    got = comparable(read_metrics(run / "metrics.jsonl"), ignore)
    want = comparable(read_metrics(reference / "metrics.jsonl"), ignore)
    assert list(got) == list(range(STEPS + 1))
    for step in want:
        diff = {k: (got[step].get(k), v) for k, v in want[step].items() if got[step].get(k) != v}
        assert not diff, f"step {step}: resumed != uninterrupted: {diff}"
    assert want[STEPS]["train/grad_norm"] > 0, "the reference run did not train"
    from safetensors.torch import load_file

    a = load_file(run / "final_hf" / "model.safetensors")
    b = load_file(reference / "final_hf" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"final weights differ at {k}"


def test_sigkill_mid_step_then_resume_matches_uninterrupted(reference, tiny_model_dir, data_file, tmp_path):
    args = train_args(tiny_model_dir, data_file, tmp_path)
    run = tmp_path / "tiny_cpu"
    proc = subprocess.Popen(args, env=child_env(), cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not any(r["step"] == 5 for r in read_metrics(run / "metrics.jsonl")):
            assert proc.poll() is None, f"training exited early: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "step 5 never logged"
            time.sleep(0.02)
        kill_group(proc)                     # step 5 is logged, not checkpointed; step 6 is running
    finally:
        kill_group(proc)
        proc.wait()
        proc.stderr.close()
    assert not (run / "checkpoints" / "step_6").exists(), "killed too late: step 6 finished"
    assert (run / "checkpoints" / "step_4" / "manifest.json").is_file()
    assert 5 in [r["step"] for r in read_metrics(run / "metrics.jsonl")]

    resumed = run_train(args, child_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    line = [ln for ln in resumed.stdout.splitlines() if ln.startswith("resumed from")]
    want = f"{run / 'checkpoints' / 'step_4'}: step 4, 64 samples consumed"
    assert line and want in line[0], resumed.stdout
    assert "dropped 1 rows logged after step 4" in resumed.stderr
    assert_same_run(run, reference)


def wandb_history(run_file: Path) -> tuple[str, list[int]]:
    """Run id and logged steps of an offline wandb run file (LevelDB-log framed protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf, run_id, steps = run_file.read_bytes(), 7, b"", None, []  # 7: ":W&B" header
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:                      # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):                # FULL or LAST chunk: one record
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            if rec.WhichOneof("record_type") == "run":
                run_id = rec.run.run_id
            elif rec.WhichOneof("record_type") == "history":
                steps.append(rec.history.step.num)
    return run_id, steps


def test_crash_during_checkpoint_write_resumes_previous_and_wandb_continues(
        reference, tiny_model_dir, data_file, tmp_path):
    """Through Ray actors (one torch thread each): the same numbers as the local reference."""
    pytest.importorskip("ray")
    pytest.importorskip("wandb")
    args = train_args(tiny_model_dir, data_file, tmp_path, "logging.wandb=true", "logging.tensorboard=true",
                      "cluster.mode=ray", "cluster.num_cpus=2")
    run = tmp_path / "tiny_cpu"
    crashed = run_train(args, child_env(**{CRASH_VAR: "4"}))
    assert crashed.returncode == 70, crashed.stderr[-3000:]
    ck = run / "checkpoints"
    assert (ck / "tmp_step_4").is_dir() and not (ck / "step_4").exists() and (ck / "step_2").is_dir()

    resumed = run_train(args, child_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"checkpoint {ck / 'tmp_step_4'} is incomplete" in resumed.stderr
    assert f"resumed from {ck / 'step_2'}: step 2, 32 samples consumed" in resumed.stdout
    assert_same_run(run, reference)

    # One offline folder per attempt, one run id. wandb buffers the offline file, so a hard
    # crash (os._exit) may lose the first attempt's last records: only a prefix of 0..4 is certain.
    saved_id = json.loads((ck / "step_6" / "controller.json").read_text())["run"]["wandb_run_id"]
    files = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert [f.parent.name.rsplit("-", 1)[1] for f in files] == [saved_id, saved_id], files
    (_, steps1), (id2, steps2) = (wandb_history(f) for f in files)
    assert id2 == saved_id
    assert steps1 == list(range(len(steps1))) and len(steps1) <= 5
    assert steps2 == [3, 4, 5, 6]                 # the resumed attempt continues after step 2


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def wait_for_step(proc: subprocess.Popen, run: Path, step: int) -> None:
    deadline = time.monotonic() + 600
    while not any(r["step"] == step for r in read_metrics(run / "metrics.jsonl")):
        assert proc.poll() is None, f"training exited early: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, f"step {step} never logged"
        time.sleep(0.02)


def test_sigterm_checkpoints_the_step_exits_75_and_resumes_exactly(reference, tiny_model_dir, data_file,
                                                                    tmp_path):
    """The first SIGTERM (SLURM / Kubernetes preemption) lets the step in flight finish, writes a
    checkpoint of it (step 3 is not a checkpoint step here) and exits with status 75."""
    args = train_args(tiny_model_dir, data_file, tmp_path)
    run = tmp_path / "tiny_cpu"
    proc = start(args, child_env())
    try:
        wait_for_step(proc, run, 2)
        proc.send_signal(signal.SIGTERM)        # while step 3 runs (or step 2's checkpoint is written)
        out, err = proc.communicate(timeout=300)
    finally:
        kill_group(proc)
        proc.wait()
    assert proc.returncode == 75, err[-3000:]
    stopped = [r["step"] for r in read_metrics(run / "metrics.jsonl")][-1]
    assert stopped < STEPS and (run / "checkpoints" / f"step_{stopped}" / "manifest.json").is_file()
    assert f"SIGTERM: stopped after step {stopped} (checkpoint {run / 'checkpoints' / f'step_{stopped}'})" in err
    assert "resumes from it" in err

    resumed = run_train(args, child_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {run / 'checkpoints' / f'step_{stopped}'}" in resumed.stdout
    assert_same_run(run, reference)


def test_a_second_sigterm_stops_at_once_and_the_last_checkpoint_resumes(reference, tiny_model_dir, data_file,
                                                                         tmp_path):
    args = train_args(tiny_model_dir, data_file, tmp_path)
    run = tmp_path / "tiny_cpu"
    proc = start(args, child_env())
    try:
        wait_for_step(proc, run, 3)             # step_2 is the newest checkpoint
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        kill_group(proc)
        proc.wait()
    assert proc.returncode == 130, err[-3000:]
    assert "stopped at once (a second signal)" in err and "Traceback" not in err
    resumed = run_train(args, child_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(run, reference)


def kill_actor(driver: subprocess.Popen, cls: str) -> None:
    """SIGKILL the one Ray actor process of class `cls` (its process title is `ray::<cls>...`) of
    this driver's cluster (the local Ray's raylet, hence its workers, descend from the driver)."""
    import psutil

    found = [p for p in psutil.Process(driver.pid).children(recursive=True)
             if any(f"ray::{cls}" in part for part in (p.cmdline() or []))]
    assert len(found) == 1, found
    found[0].kill()


def test_a_dead_learner_stops_the_run_fast_and_it_resumes_exactly(reference, tiny_model_dir, data_file, tmp_path):
    """SIGKILL the learner actor's process (an OOM kill): the driver exits non-zero within 30 s,
    naming the newest checkpoint and the command; that command then finishes the run exactly."""
    pytest.importorskip("ray")
    args = train_args(tiny_model_dir, data_file, tmp_path, "cluster.mode=ray", "cluster.num_cpus=2")
    run = tmp_path / "tiny_cpu"
    proc = start(args, child_env())
    try:
        wait_for_step(proc, run, 3)
        kill_actor(proc, "LearnerWorker")
        t0 = time.monotonic()
        out, err = proc.communicate(timeout=120)
        took = time.monotonic() - t0
    finally:
        kill_group(proc)
        proc.wait()
    assert proc.returncode == 1 and took < 30, (proc.returncode, took, err[-3000:])
    assert "a worker died" in err and f"newest complete checkpoint is {run / 'checkpoints'}" in err
    assert "Traceback" not in err.split("a worker died")[-1]
    resumed = run_train(args, child_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(run, reference)


def test_a_sigkilled_driver_leaves_no_ray_process_and_the_next_run_starts(tiny_model_dir, data_file, tmp_path):
    """Without nemo_rlvr.watchdog, Ray's DashboardAgent and RuntimeEnvAgent outlive a SIGKILLed
    driver (re-parented to init, for ever)."""
    pytest.importorskip("ray")
    import psutil

    args = train_args(tiny_model_dir, data_file, tmp_path, "cluster.mode=ray", "cluster.num_cpus=2")
    run = tmp_path / "tiny_cpu"
    proc = start(args, child_env())
    try:
        wait_for_step(proc, run, 1)
        driver = psutil.Process(proc.pid)
        ray_procs = [p for p in driver.children(recursive=True) if "watchdog" not in " ".join(p.cmdline())]
        assert len(ray_procs) >= 4, ray_procs  # gcs, raylet, agents, the actors
        os.kill(proc.pid, signal.SIGKILL)      # the driver only: nothing else is signalled
        proc.wait()
        gone, alive = psutil.wait_procs(ray_procs, timeout=30)
        assert not alive, [(p.pid, p.name()) for p in alive]
    finally:
        kill_group(proc)
        proc.stdout.close()
        proc.stderr.close()
    again = run_train(args, child_env())       # resumes from step_? or starts over: it must just work
    assert again.returncode == 0, again.stderr[-3000:]


def test_a_dead_generator_is_restarted_and_the_run_is_unchanged(reference, tiny_model_dir, data_file, tmp_path):
    """SIGKILL the generator actor's process mid-run: the replica is restarted, takes the current
    weights, generates the step's prompts again, and the run ends with the reference's numbers."""
    pytest.importorskip("ray")
    args = train_args(tiny_model_dir, data_file, tmp_path, "cluster.mode=ray", "cluster.num_cpus=2")
    run = tmp_path / "tiny_cpu"
    proc = start(args, child_env())
    try:
        wait_for_step(proc, run, 3)
        kill_actor(proc, "GeneratorWorker")
        out, err = proc.communicate(timeout=600)
    finally:
        kill_group(proc)
        proc.wait()
    assert proc.returncode == 0, err[-3000:]
    rows = read_metrics(run / "metrics.jsonl")
    restarts = {r["step"]: r["faults/generator_restarts"] for r in rows if "faults/generator_restarts" in r}
    assert sum(restarts.values()) == 1 and restarts[3] == 0, restarts
    assert "generator replica(s) [0] died: restarted" in err
    assert_same_run(run, reference, ignore={"faults/generator_restarts"})


def _limit_file_size(limit: int):
    """preexec_fn: files may not grow past `limit` bytes; SIGXFSZ ignored, so a write past it
    fails with EFBIG (an OSError) as on a full disk, instead of killing the process."""
    import resource

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_checkpoint_that_cannot_be_written_stops_the_run_and_the_previous_one_resumes(
        reference, tiny_model_dir, data_file, tmp_path):
    args = train_args(tiny_model_dir, data_file, tmp_path)
    run = tmp_path / "tiny_cpu"
    first = run_train(args[:-1] + ["checkpoint.resume=auto", "train.steps=2"], child_env())
    assert first.returncode == 0, first.stderr[-3000:]          # step_2 is complete
    proc = subprocess.Popen(args, env=child_env(), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, preexec_fn=_limit_file_size(256 * 1024))
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err[-3000:]                    # the learner's shard is > 256 KiB: step 4 fails
    ck = run / "checkpoints"
    assert f"writing checkpoint {ck / 'tmp_step_4'} failed: " in err and "GiB free in" in err
    assert f"the newest complete checkpoint is {ck / 'step_2'}" in err and "Traceback" not in err
    assert not (ck / "tmp_step_4").exists() and not (ck / "step_4").exists()
    resumed = run_train(args, child_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {ck / 'step_2'}" in resumed.stdout
    assert_same_run(run, reference)
