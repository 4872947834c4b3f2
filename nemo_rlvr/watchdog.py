"""Take a local Ray cluster down with the driver that started it, even when the driver is SIGKILLed.

    python -m nemo_rlvr.watchdog DRIVER_PID SESSION_DIR PID:CREATE_TIME ...

`cluster.start_ray` starts this in a session of its own right after `ray.init` started a local
cluster, with the Ray processes the driver had then (GCS, raylet, dashboard, its agents, idle
workers). It polls the driver once a second; when the driver is gone it SIGTERMs, then after 5 s
SIGKILLs, those processes (a pid counts only with its recorded start time, so a reused pid is
never hit) and every process that still has a file open in the session's folder (workers started
later). Measured without it: after a SIGKILLed driver, the raylet and GCS exit but Ray's
DashboardAgent and RuntimeEnvAgent live on, re-parented to init. A driver that ends normally has
called `ray.shutdown()`: nothing is left and the watchdog exits. Attached clusters
(`cluster.address`) get no watchdog: we never take them down.
"""

from __future__ import annotations

import sys
import time

import psutil


def _alive(pid: int) -> bool:
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def leftovers(session_dir: str, recorded: dict[int, float]) -> list[psutil.Process]:
    """Processes of the session: the recorded ones still alive (same start time) and any process
    with a file open under `session_dir`."""
    found: dict[int, psutil.Process] = {}
    for pid, created in recorded.items():
        try:
            p = psutil.Process(pid)
            if abs(p.create_time() - created) < 1e-3:
                found[pid] = p
        except psutil.NoSuchProcess:
            pass
    for p in psutil.process_iter():
        if p.pid in found:
            continue
        try:
            if any(f.path.startswith(session_dir) for f in p.open_files()):
                found[p.pid] = p
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return list(found.values())


def take_down(session_dir: str, recorded: dict[int, float], grace_s: float = 5.0) -> int:
    procs = leftovers(session_dir, recorded)
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return len(procs)


def main(argv: list[str]) -> int:
    driver, session_dir = int(argv[0]), argv[1]
    recorded = {int(pid): float(created) for pid, created in (x.split(":") for x in argv[2:])}
    while _alive(driver):
        time.sleep(1.0)
    take_down(session_dir, recorded)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
