"""The launchers, run for real on the CPU: `launch/local.sh` trains the tiny recipe against a Ray head
of its own and stops it; `launch/slurm/ray.sbatch` runs as SLURM would run it (`bash script`, SLURM_*
variables of a 2-node allocation) with stand-in `srun` and `scontrol` first on PATH. The stand-in
`srun` records its arguments and runs the command here, so the head's and the worker's
`ray start --block` are real raylets (1 CPU each: the generator lands on one "node", the learner on
the other), the wait-for-nodes loop polls a real GCS, and the driver trains through them.

Every process a test starts carries RLVR_TEST_TAG in its environment (Ray's processes inherit it):
none may be left once the launcher has exited.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest

from nemo_rlvr.config import REPO_ROOT

LOCAL = REPO_ROOT / "launch" / "local.sh"
SBATCH = REPO_ROOT / "launch" / "slurm" / "ray.sbatch"
JOB_ID = "4242"
TINY = ["train.prompts_per_step=4", "algorithm.group_size=4", "validation.every_steps=0",
        "validation.at_start=false", "checkpoint.export_hf=false", "data.val_size=8"]

FAKE_SRUN = """#!/usr/bin/env bash
# stand-in srun: record the arguments (tab-separated, one call a line: newlines in an argument
# become spaces), drop srun's own flags (the script passes them as single --flag=value words), run
# the command on this machine.
args=("${@//$'\\n'/ }"); (IFS=$'\\t'; echo "${args[*]}") >> "$FAKE_SLURM_LOG/srun.log"
while [[ $# -gt 0 && "$1" == -* ]]; do shift; done
exec "$@"
"""

FAKE_SCONTROL = f"""#!{sys.executable}
# stand-in scontrol: `show hostnames LIST` expands a SLURM node list; anything else is recorded.
import os, re, sys
args = sys.argv[1:]
with open(os.path.join(os.environ["FAKE_SLURM_LOG"], "scontrol.log"), "a") as f:
    f.write("\\t".join(args) + "\\n")
if args[:2] == ["show", "hostnames"]:
    for prefix, ranges, plain in re.findall(r"([^,\\[]+)\\[([^\\]]+)\\]|([^,\\[\\]]+)", args[2]):
        if plain:
            print(plain)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            for i in range(int(lo), int(hi or lo) + 1):
                print(f"{{prefix}}{{i:0{{len(lo)}}d}}")
"""

FAKE_DRIVER_75 = """#!/usr/bin/env bash
echo "fake driver: $*" >> "$FAKE_SLURM_LOG/driver.log"
exit 75
"""


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def tagged(tag: str) -> list[str]:
    """Processes whose environment carries RLVR_TEST_TAG=tag (what this test started, Ray's included)."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.environ().get("RLVR_TEST_TAG") == tag:
                found.append(f"{p.pid} {' '.join(p.info['cmdline'] or [])[:120]}")
        except (psutil.Error, OSError):
            continue
    return found


def assert_nothing_left(tag: str) -> None:
    left = tagged(tag)
    for _ in range(30):   # Ray's workers exit within a few seconds of their raylet
        if not left:
            return
        time.sleep(0.5)
        left = tagged(tag)
    for line in left:
        try:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        except ProcessLookupError:
            pass
    raise AssertionError("processes left behind:\n" + "\n".join(left))


def launch(args: list[str], env: dict[str, str], log: Path, *, term_after_step: Path | None = None,
           timeout: float = 240) -> subprocess.CompletedProcess:
    """Run a launcher as its scheduler would (its own session, output to `log`: a process left
    behind cannot hold a pipe open); with `term_after_step`, send its shell one SIGTERM once that
    metrics.jsonl has a step (a preemption's --signal=B:TERM)."""
    with open(log, "w") as f:
        proc = subprocess.Popen(args, env=env, cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        if term_after_step is not None:
            deadline = time.monotonic() + timeout
            while not (term_after_step.is_file() and term_after_step.read_text().strip()):
                assert proc.poll() is None and time.monotonic() < deadline, "the run ended before step 1"
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(args, proc.returncode, log.read_text(), None)


def base_env(tag: str) -> dict[str, str]:
    return {**os.environ, "RLVR_TEST_TAG": tag, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline",
            "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO_ROOT)}


def steps_logged(run_dir: Path) -> list[int]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["step"] for r in rows if "train/reward_mean" in r]


def test_local_sh_trains_the_tiny_recipe_and_stops_its_ray(tiny_model_dir, tmp_path):
    tag = uuid.uuid4().hex
    env = base_env(tag) | {"RAY_NUM_CPUS": "2", "RAY_OBJECT_STORE_MB": "128"}
    out = launch(["bash", str(LOCAL), "recipes/tiny_cpu.yaml", f"model.path={tiny_model_dir}",
                  "train.steps=2", *TINY, f"output_dir={tmp_path}"], env, tmp_path / "out.log")
    assert out.returncode == 0, out.stdout[-4000:]
    assert "starting a Ray head at 127.0.0.1:" in out.stdout
    assert steps_logged(tmp_path / "tiny_cpu") == [1, 2]
    assert_nothing_left(tag)


@pytest.fixture
def fake_slurm(tmp_path):
    """A bin/ of stand-ins first on PATH, a log folder, and SLURM_* of a 2-node allocation."""
    bin_dir, logs = tmp_path / "bin", tmp_path / "slurm_logs"
    bin_dir.mkdir()
    logs.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("fake-driver-75", FAKE_DRIVER_75)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    # Ray's socket paths must stay under 107 characters: temp dirs directly under /tmp
    ray_tmp = Path(tempfile.mkdtemp(prefix="rlvr-t-", dir="/tmp"))
    tag = uuid.uuid4().hex
    gcs, client, agent_head, agent_worker = free_ports(4)
    env = base_env(tag) | {
        "PATH": f"{bin_dir}:{REPO_ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
        "FAKE_SLURM_LOG": str(logs), "SLURM_JOB_ID": JOB_ID, "SLURM_JOB_NODELIST": "node[01-02]",
        "SLURM_JOB_NUM_NODES": "2", "SLURM_NNODES": "2", "SLURM_SUBMIT_DIR": str(REPO_ROOT),
        # both "nodes" are this machine: ports and temp dirs of their own, one CPU each
        "RAY_PORT": str(gcs), "RAY_CLIENT_PORT": str(client), "RAY_DASHBOARD_AGENT_PORT": str(agent_head),
        "RAY_TMPDIR": str(ray_tmp / "h"), "RAY_WORKER_TMPDIR": str(ray_tmp / "w"),
        "RAY_HEAD_ARGS": "--num-cpus=1 --object-store-memory=100000000",
        "RAY_WORKER_ARGS": f"--num-cpus=1 --object-store-memory=100000000 --dashboard-agent-listen-port={agent_worker}",
        "RAY_WAIT_TIMEOUT_S": "90", "RAY_STOP_TIMEOUT_S": "30",
    }
    yield env, logs, tag
    subprocess.run(["rm", "-rf", str(ray_tmp)], check=False)


def calls(logs: Path, name: str) -> list[list[str]]:
    path = logs / f"{name}.log"
    return [line.split("\t") for line in path.read_text().splitlines()] if path.is_file() else []


def test_sbatch_starts_head_then_worker_waits_for_both_trains_and_tears_down(fake_slurm, tiny_model_dir,
                                                                             tmp_path):
    env, logs, tag = fake_slurm
    out = launch(["bash", str(SBATCH), "recipes/tiny_cpu.yaml", f"model.path={tiny_model_dir}",
                  "train.steps=2", *TINY, f"output_dir={tmp_path / 'runs'}"], env, tmp_path / "out.log")
    assert out.returncode == 0, out.stdout[-4000:]
    srun = calls(logs, "srun")
    role = {}
    for i, call in enumerate(srun):   # the background head and worker sruns may log in either order
        cmd = call[next(j for j, a in enumerate(call) if not a.startswith("-")):]
        name = ("head" if "--head" in cmd else "worker") if cmd[:2] == ["ray", "start"] else cmd[0]
        role[name] = (i, call, cmd)
    assert sorted(role) == ["head", "hostname", "nemo-rlvr", "python", "worker"] and len(srun) == 5, srun
    head_ip = out.stdout.split("Ray head on node01 at ")[1].split(":")[0]
    address = f"{head_ip}:{env['RAY_PORT']}"
    (i_head, head, _), (i_worker, worker, worker_cmd) = role["head"], role["worker"]
    (i_wait, _, _), (i_driver, driver, driver_cmd) = role["python"], role["nemo-rlvr"]
    assert role["hostname"][0] < i_head < i_worker and i_head < i_wait < i_driver == 4
    assert "--nodelist=node01" in head and f"--port={env['RAY_PORT']}" in head
    assert "--exclude=node01" in worker and "--nodes=1" in worker and f"--address={address}" in worker_cmd
    assert "--nodelist=node01" in driver and driver_cmd[-1] == f"cluster.address={address}"
    assert ["show", "hostnames", "node[01-02]"] in calls(logs, "scontrol")
    assert "ray cluster: 2/2 nodes alive (2 CPUs, 0 GPUs)" in out.stdout
    assert steps_logged(tmp_path / "runs" / "tiny_cpu") == [1, 2]
    assert not [c for c in calls(logs, "scontrol") if c[0] == "requeue"]   # finished: no requeue
    assert_nothing_left(tag)


def test_sbatch_preempted_checkpoints_exits_75_and_requeues(fake_slurm, tiny_model_dir, tmp_path):
    env, logs, tag = fake_slurm
    run_dir = tmp_path / "runs" / "tiny_cpu"
    out = launch(["bash", str(SBATCH), "recipes/tiny_cpu.yaml", f"model.path={tiny_model_dir}",
                  "train.steps=200", *TINY, f"output_dir={tmp_path / 'runs'}"], env | {"RLVR_REQUEUE": "1"},
                 tmp_path / "out.log", term_after_step=run_dir / "metrics.jsonl")
    assert out.returncode == 75, out.stdout[-4000:]
    assert "SIGTERM: passed to the driver" in out.stdout
    step = steps_logged(run_dir)[-1]
    assert step < 200 and (run_dir / "checkpoints" / f"step_{step}").is_dir()
    assert ["requeue", JOB_ID] in calls(logs, "scontrol")
    assert_nothing_left(tag)


def test_sbatch_does_not_requeue_when_requeue_is_off(fake_slurm):
    env, logs, tag = fake_slurm
    out = launch(["bash", str(SBATCH), "recipes/tiny_cpu.yaml"],
                 env | {"RLVR_REQUEUE": "0", "NEMO_RLVR": "fake-driver-75"}, logs / "out.log")
    assert out.returncode == 75, out.stdout[-4000:]
    assert (logs / "driver.log").read_text().startswith("fake driver: train recipes/tiny_cpu.yaml cluster.address=")
    assert not [c for c in calls(logs, "scontrol") if c[0] == "requeue"]
    assert "RLVR_REQUEUE=0" in out.stdout
    assert_nothing_left(tag)
