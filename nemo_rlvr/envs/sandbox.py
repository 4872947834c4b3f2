"""Isolated execution of model-written Python: one fresh, confined process per run.

Model-written code never runs in the trainer's process or with its environment, files
or network (DESIGN.md). `run_sandboxed(source, ...)` runs `source` as a program and says
what happened; guarantees per platform and the threat model: docs/sandbox.md. On Linux
as root (clusters, containers):

    verifier (pool worker)                  host PID namespace, own session
      └─ launcher  python -I -S -c _LAUNCHER  unshare(NEWPID|NEWNET|NEWNS|NEWIPC|NEWUTS)
           └─ init (pid 1, root)            / read-only, tmpfs /tmp (= scratch), own /proc,
                │                           dirs outside /usr /etc /var ... hidden
                └─ program (pid 2)          fresh random uid/gid, setsid, rlimits, no caps,
                                            no_new_privs, exec python -I -S -B main.py

At the time limit the launcher kills init; the kernel then kills every process in the
namespace, and the verifier returns only when all are gone. RLIMIT_NPROC on a uid no
other process has caps the process count (it never binds uid 0). Without root: a user
namespace; without namespaces (macOS): rlimits only, with a warning (`capabilities()`).
The program may write one JSON object to fd RESULT_FD (3): `SandboxResult.result`.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)

RESULT_FD = 3
"""The fd a sandboxed program writes its JSON result to."""
SandboxMode = Literal["namespaces", "userns", "rlimits"]
SandboxStatus = Literal["ok", "error", "timeout", "oom", "killed"]
_UID_BASE = 0x70000000  # per-run uids are drawn from [_UID_BASE, _UID_BASE + 2**24)
_RESULT_MAX = 1 << 20
_GRACE_S = 0.2  # after the program's exit is reported, how long its last output may take
_VISIBLE = frozenset("bin dev etc lib lib32 lib64 libx32 proc run sbin sys tmp usr var".split())

# The launcher runs in a fresh `python -I -S` (no site-packages, no environment), so it
# may import only the standard library; it avoids json/re to start fast. argv[1] is its
# config, a dict literal (see `_launch_config`).
_LAUNCHER = r'''
import _signal, os
CHILD = []  # SIGTERM from the verifier: kill the child (init: the whole namespace), reap it, exit
_signal.signal(15, lambda *_: [os.kill(pid, 9) for pid in CHILD])
import ctypes, sys
C = eval(sys.argv[1], {"__builtins__": {}})  # a dict literal written by the verifier
LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
if LIBC is not None:
    LIBC.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG = SIGKILL: die with the verifier thread
    if os.getppid() != C["parent"]:
        os._exit(1)  # the verifier is already gone
NS_FLAGS = 0x20000 | 0x4000000 | 0x8000000 | 0x20000000 | 0x40000000  # CLONE_NEW{NS,UTS,IPC,PID,NET}

def check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, what + ": " + os.strerror(err))

def mount(src, dst, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    check(LIBC.mount(enc(src), enc(dst), enc(fstype), ctypes.c_ulong(flags), enc(data)), "mount " + dst)

def make_readonly():
    class MountAttr(ctypes.Structure):
        _fields_ = [(n, ctypes.c_uint64) for n in ("attr_set", "attr_clr", "propagation", "userns_fd")]
    attr = MountAttr(1, 0, 0, 0)  # MOUNT_ATTR_RDONLY, recursively (mount_setattr, Linux >= 5.12)
    if LIBC.syscall(442, -100, b"/", 0x8000, ctypes.byref(attr), ctypes.sizeof(attr)) == 0:
        return
    for line in open("/proc/self/mountinfo").read().splitlines():  # older kernels: one by one
        point = line.split()[4].replace("\\040", " ")
        try:
            keep = os.statvfs(point).f_flag & (MS_NOSUID | MS_NODEV | MS_NOEXEC)
            mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | keep)
        except OSError:
            pass

def setup_fs(uid, gid):
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates to the host
    files = {}
    for name in os.listdir(C["scratch"]):  # taken off the host: nothing left if the verifier dies
        with open(os.path.join(C["scratch"], name), "rb") as f:
            files[name] = f.read()
        os.unlink(os.path.join(C["scratch"], name))
    keep = [(p, os.open(p, os.O_PATH)) for p in C["reexpose"]]
    make_readonly()
    tmp = "size=%dm,mode=700,uid=%d,gid=%d" % (C["tmp_mb"], uid, gid)
    for d in ["/tmp", "/var/tmp", "/dev/shm", "/run"] + C["hide"]:
        if os.path.isdir(d):
            mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, tmp if d == "/tmp" else "size=1m,mode=755")
    for path, fd in keep:  # the interpreter, when it lives under a hidden dir
        os.makedirs(path, exist_ok=True)
        mount("/proc/self/fd/%d" % fd, path, None, MS_BIND | MS_REC)
    for d in filter(os.path.isdir, C["hide"]):
        mount(None, d, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    try:
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:  # a user namespace may not mount proc: show none at all
        mount("tmpfs", "/proc", "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k")
    for name, data in files.items():
        with open("/tmp/" + name, "wb") as out:
            out.write(data)
        os.chown("/tmp/" + name, uid, gid)
        os.chmod("/tmp/" + name, 0o600)

def user_tasks(uid):  # threads count against RLIMIT_NPROC too
    def tasks(pid):
        try: return len(os.listdir("/proc/%s/task" % pid)) if os.stat("/proc/" + pid).st_uid == uid else 0
        except OSError: return 0
    return sum(tasks(p) for p in os.listdir("/proc") if p.isdigit())

def drop_capabilities():
    # Still uid 0 (user namespace): empty the bounding set so exec grants none (no remount rw).
    if os.getuid() != 0:
        return  # setresuid away from 0 already cleared every capability
    for cap in range(64):
        LIBC.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP (EINVAL past the last one)
    LIBC.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL
    header, data = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()
    check(LIBC.capset(header, data), "capset")

def exec_program(workdir, new_session):
    import resource
    if new_session:
        os.setsid()
    if C["uid"] is not None:
        os.setgroups([])
        os.setresgid(C["gid"], C["gid"], C["gid"])
        os.setresuid(C["uid"], C["uid"], C["uid"])
    nproc = C["nproc"]
    if C["mode"] == "rlimits" and C["uid"] is None and os.path.isdir("/proc"):
        nproc += user_tasks(os.getuid())  # shared with the user's other processes
    for name, soft, hard in C["rlimits"] + [["RLIMIT_NPROC", nproc, nproc]]:
        try:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        except (ValueError, OSError, AttributeError):
            pass  # macOS: no RLIMIT_AS
    if LIBC is not None:
        drop_capabilities()
        LIBC.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: setuid binaries gain nothing
        if C["mode"] == "rlimits":
            LIBC.prctl(1, 9, 0, 0, 0)  # no PID namespace: at least die with the launcher
    if C["res_fd"] != 3:
        os.dup2(C["res_fd"], 3)
    os.set_inheritable(3, True)
    os.closerange(4, 1 << 16)
    os.chdir(workdir)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}
    os.execve(C["exe"], [C["exe"], "-I", "-S", "-B", "main.py"], env)

def spawn_program(workdir, new_session):
    pid = os.fork()
    if pid == 0:
        try:
            exec_program(workdir, new_session)
        except BaseException as e:
            os.write(2, ("sandbox: cannot start program: %r\n" % (e,)).encode())
        os._exit(127)
    CHILD.append(pid)
    return pid

report = lambda msg: os.write(C["status_fd"], msg.encode())  # to the verifier: "exit <status>"

def init_main(uid, gid):
    try:
        setup_fs(uid, gid)
    except OSError as e:
        report("setup %s" % e)
        os._exit(1)
    pid = spawn_program("/tmp", True)
    os.close(C["res_fd"])
    while True:  # as pid 1, also reap orphans until the program itself exits
        got, status = os.waitpid(-1, 0)
        if got == pid:
            report("exit %d" % status)
            os._exit(0)

def run_namespaced():
    uid, gid, userns = os.getuid(), os.getgid(), C["mode"] == "userns"
    check(LIBC.unshare(NS_FLAGS | (0x10000000 if userns else 0)), "unshare")  # + CLONE_NEWUSER
    if userns:
        for name, text in (("setgroups", "deny"), ("uid_map", "0 %d 1" % uid), ("gid_map", "0 %d 1" % gid)):
            with open("/proc/self/" + name, "w") as f:
                f.write(text)
        uid = gid = 0
    if C["uid"] is not None:
        uid, gid = C["uid"], C["gid"]
    life_r, life_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(life_w)
        LIBC.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG = SIGKILL: dies with the launcher
        os.set_blocking(life_r, False)
        try:
            if os.read(life_r, 1) == b"":
                os._exit(1)  # the launcher died before prctl took effect
        except BlockingIOError:
            pass
        init_main(uid, gid)
    CHILD.append(pid)
    os.close(C["status_fd"])
    os.close(C["res_fd"])
    os.waitpid(pid, 0)

if C["mode"] == "rlimits":
    child = spawn_program(C["scratch"], False)
    os.close(C["res_fd"])
    report("exit %d" % os.waitpid(child, 0)[1])
else:
    run_namespaced()
'''


@dataclass(frozen=True)
class SandboxResult:
    """What happened to one sandboxed run."""

    status: SandboxStatus
    """ok: exit 0; error: other exit; timeout: wall or CPU limit; oom: MemoryError; killed: a signal."""
    exit_code: int | None
    """Exit code, or -signal when killed by a signal; None when the program never reported."""
    stdout: str
    stderr: str
    duration_s: float
    result: dict | None
    """The JSON object the program wrote to fd RESULT_FD, if it wrote exactly one."""
    truncated: bool = False
    """True when stdout or stderr went past max_output_bytes and was cut."""


@dataclass(frozen=True)
class SandboxCapabilities:
    """What the sandbox enforces on this machine (docs/sandbox.md has the full table)."""

    mode: SandboxMode
    pid_namespace: bool
    """Own PID namespace and /proc: no other process is visible or signalable."""
    network_namespace: bool
    """No network at all, loopback included."""
    readonly_filesystem: bool
    """All read-only but a private tmpfs /tmp; top-level dirs other than system ones look empty."""
    uid_drop: bool
    """Runs as a fresh unprivileged uid/gid, so RLIMIT_NPROC binds even when the verifier is root."""
    process_cap: Literal["exact", "shared", "none"]
    """exact: max_procs counts only this run; shared: with the user's other processes; none."""
    warning: str | None = None


class SandboxError(RuntimeError):
    """The sandbox itself could not run (not the program's fault)."""


_CAPS_LOCK = threading.Lock()
_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _caps_for(mode: SandboxMode, uid_drop: bool) -> SandboxCapabilities:
    ns, root, linux = mode != "rlimits", _ROOT, sys.platform.startswith("linux")
    # RLIMIT_NPROC never binds uid 0, nor the root of a user namespace mapped onto uid 0
    exact = uid_drop or (mode == "userns" and not root)
    cap = "exact" if exact else "shared" if linux and not root else "none"
    warning = None  # namespaces + uid drop: the full set
    if mode == "userns":
        warning = ("sandbox mode 'userns': programs run as the verifier's user (root without "
                   "capabilities inside a user namespace) and can read what that user can read")
    elif mode == "rlimits":
        warning = ("sandbox mode 'rlimits': NO network, PID or filesystem isolation; model-written code "
                   "can use the network, see other processes and write wherever "
                   + ("its fresh uid can (world-writable dirs)" if uid_drop else
                      "this user can, and signal this user's processes")
                   + ". Run as root on Linux, or enable user namespaces "
                   "(sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces).")
    return SandboxCapabilities(mode, ns, ns, ns, uid_drop, cap, warning)


_PROBE = """import json, os, socket
try:
    socket.create_connection(("127.0.0.1", 9), timeout=1.0); net = True
except OSError:
    net = False
os.write(3, json.dumps({"pid": os.getpid(), "uid": os.getuid(), "net": net}).encode())"""


def _probe(caps: SandboxCapabilities) -> str | None:
    """Run a tiny program under `caps`; None when it ran confined as promised, else why not."""
    try:
        out = _run(_PROBE, caps, timeout_s=20.0, memory_mb=256, max_procs=4, max_output_bytes=4096)
    except (OSError, SandboxError) as e:
        return str(e)
    r = out.result or {}
    confined = caps.mode == "rlimits" or (r.get("pid") == 2 and r.get("net") is False)
    if out.status != "ok" or not confined or (caps.uid_drop and r.get("uid") == 0):
        return f"status={out.status} result={out.result} stderr={out.stderr[-300:]!r}"
    return None


def _detect(mode: SandboxMode) -> tuple[SandboxCapabilities | None, str | None]:
    """The capabilities of `mode` here (uid drop when root and it works), or None and why not."""
    if mode != "rlimits" and not sys.platform.startswith("linux"):
        return None, "namespaces need Linux"
    if mode == "namespaces" and not _ROOT:
        return None, "needs root (CAP_SYS_ADMIN); use 'userns'"
    # Model code never runs as real root: as root, 'namespaces' and 'rlimits' drop to a fresh
    # uid; 'userns' runs as root only when forced (tests), and then has no process cap.
    caps = _caps_for(mode, _ROOT and mode != "userns")
    why = _probe(caps)
    return (caps, None) if why is None else (None, why)


_BY_MODE: dict[str, SandboxCapabilities | None] = {}
_WHY: dict[str, tuple[float, str | None]] = {}  # when a mode was probed, and why it failed


def capabilities(mode: SandboxMode | None = None) -> SandboxCapabilities:
    """The strongest sandbox mode that works here (probed once), or `mode`'s; else SandboxError."""
    with _CAPS_LOCK:
        tried: list[str] = []
        auto = ("namespaces", "rlimits") if _ROOT else ("userns", "rlimits")
        for m in ((mode,) if mode else auto):
            if m not in _BY_MODE or (_BY_MODE[m] is None and time.monotonic() - _WHY[m][0] > 60):
                _BY_MODE[m], why = _detect(m)  # a failed probe is retried after a minute
                _WHY[m] = (time.monotonic(), why)
                if _BY_MODE[m] is not None and _BY_MODE[m].warning and mode is None:
                    log.warning("%s%s", _BY_MODE[m].warning, f" (tried: {'; '.join(tried)})" if tried else "")
            if _BY_MODE[m] is not None:
                return _BY_MODE[m]
            tried.append(f"{m}: {_WHY[m][1]}")
        raise SandboxError(
            f"no sandbox mode works here ({'; '.join(tried) or mode}). Model-written code is never "
            "run as root without isolation: allow namespaces (unshare) for root, or make the Python "
            "interpreter readable by other users so the fallback can drop to a fresh uid.")


def run_sandboxed(source: str, *, timeout_s: float, memory_mb: int, max_procs: int, max_output_bytes: int,
                  files: dict[str, str | bytes] | None = None, mode: SandboxMode | None = None
                  ) -> SandboxResult:
    """Run `source` as a Python program in a fresh sandbox; never leaves files or processes.

    `files` are written next to the program (plain names); `mode` forces a mode (tests)."""
    for name in files or {}:
        if not name or "/" in name or name in (".", "..", "main.py"):
            raise ValueError(f"files: {name!r} is not a plain file name; use names like 'data.json'.")
    return _run(source, capabilities(mode), timeout_s=timeout_s, memory_mb=memory_mb,
                max_procs=max_procs, max_output_bytes=max_output_bytes, files=files)


def _launch_config(caps: SandboxCapabilities, scratch: str, memory_mb: int, max_procs: int,
                   timeout_s: float, res_fd: int, status_fd: int) -> dict:
    uid = _UID_BASE + secrets.randbelow(1 << 24) if caps.uid_drop else None
    exe = os.path.realpath(sys.executable)
    roots = {os.path.realpath(p) for p in (sys.base_prefix, os.path.dirname(exe))}  # not the venv
    hide = sorted("/" + d for d in os.listdir("/") if d not in _VISIBLE and os.path.isdir("/" + d)
                  and not os.path.islink("/" + d))  # repos, data, home dirs: empty, but the interpreter
    cpu_s = int(timeout_s) + 1
    return {
        "mode": caps.mode, "exe": exe, "parent": os.getpid(), "scratch": scratch, "uid": uid, "gid": uid,
        "res_fd": res_fd, "status_fd": status_fd, "tmp_mb": max(16, memory_mb // 4),
        "hide": hide, "reexpose": sorted(p for p in roots if any(p.startswith(d + "/") for d in hide)),
        "nproc": max_procs + (2 if caps.mode == "userns" else 0),  # userns: launcher and init count too
        "rlimits": [
            ["RLIMIT_AS", memory_mb << 20, memory_mb << 20], ["RLIMIT_CPU", cpu_s, cpu_s + 1],
            ["RLIMIT_FSIZE", 64 << 20, 64 << 20], ["RLIMIT_CORE", 0, 0], ["RLIMIT_NOFILE", 256, 256],
        ],
    }


def _prepare_scratch(source: str, files: dict[str, str | bytes] | None, uid: int | None, mode: str) -> str:
    scratch = tempfile.mkdtemp(prefix="nemo_rlvr_sbx_")
    for name, text in {"main.py": source, **(files or {})}.items():
        path = os.path.join(scratch, name)
        with open(path, "wb") as f:
            f.write(text.encode("utf-8") if isinstance(text, str) else text)
        if mode == "rlimits" and uid is not None:
            os.chown(path, uid, uid)
    if mode == "rlimits" and uid is not None:
        os.chown(scratch, uid, uid)
    return scratch


def _run(source: str, caps: SandboxCapabilities, *, timeout_s: float, memory_mb: int, max_procs: int,
         max_output_bytes: int, files: dict[str, str | bytes] | None = None) -> SandboxResult:
    t0 = time.monotonic()
    (res_r, res_w), (st_r, st_w) = os.pipe(), os.pipe()
    cfg = _launch_config(caps, "", memory_mb, max_procs, timeout_s, res_w, st_w)
    proc = scratch = None
    timed_out = True  # until the program's end is seen
    try:
        scratch = cfg["scratch"] = _prepare_scratch(source, files, cfg["uid"], caps.mode)
        proc = subprocess.Popen(
            [cfg["exe"], "-I", "-S", "-B", "-c", _LAUNCHER, repr(cfg)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(res_w, st_w), env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            cwd=scratch, start_new_session=True,
        )
        os.close(res_w)
        os.close(st_w)
        res_w = st_w = -1
        out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
        limits = {out_fd: max_output_bytes, err_fd: max_output_bytes, res_r: _RESULT_MAX, st_r: 4096}
        bufs, cut, timed_out = _collect(limits, st_r, deadline=t0 + timeout_s)
    finally:
        for fd in (res_w, st_w, res_r, st_r):
            if fd >= 0:
                os.close(fd)
        if proc is not None:
            _finish(proc, timed_out)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    out, err = (bufs[fd].decode("utf-8", "replace") for fd in (out_fd, err_fd))
    return _result(bufs[st_r].decode("ascii", "replace"), bufs[res_r], out, err,
                   time.monotonic() - t0, timed_out, cut)


def _collect(limits: dict[int, int], done_fd: int, deadline: float
             ) -> tuple[dict[int, bytes], bool, bool]:
    """Read the pipes until they close or the deadline; keep at most limits[fd] bytes of each.

    `done_fd` closes once the program's exit is reported; output still in flight then gets
    a short grace (leftover children holding a pipe open are killed with the group after).
    """
    bufs = {fd: bytearray() for fd in limits}
    cut = timed_out = done = False
    sel = selectors.DefaultSelector()
    for fd in limits:
        sel.register(fd, selectors.EVENT_READ)
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(timeout=min(left, 0.5)):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fd)
                    if key.fd == done_fd:
                        done = True
                        deadline = min(deadline, time.monotonic() + _GRACE_S)
                    continue
                room = limits[key.fd] - len(bufs[key.fd])
                cut |= len(chunk) > room  # keep draining, so a chatty program is not blocked
                bufs[key.fd] += chunk[: max(room, 0)]
    finally:
        sel.close()
    return {k: bytes(v) for k, v in bufs.items()}, cut, timed_out and not done


def _finish(proc: subprocess.Popen, timed_out: bool) -> None:
    """Return once all the program started is gone: the launcher reaps init only after the kernel
    emptied its PID namespace; SIGTERM makes it kill init; SIGKILL to the group is the last resort."""
    stages = ((None, 0.5),) * (not timed_out) + ((signal.SIGTERM, 2.0), (signal.SIGKILL, None))
    for sig, wait_s in stages:
        if sig is not None:
            try:  # the launcher is unreaped (WNOWAIT), so its pid and group id are not reused
                os.killpg(proc.pid, sig) if sig == signal.SIGKILL else os.kill(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        end = time.monotonic() + (wait_s or 0)
        while wait_s and time.monotonic() < end:
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
                break
            time.sleep(0.002)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()


def _result(status_msg: str, raw_result: bytes, out: str, err: str, duration: float,
            timed_out: bool, cut: bool) -> SandboxResult:
    if status_msg.startswith("setup "):
        raise SandboxError(f"sandbox setup failed: {status_msg[6:]}")
    try:
        result = json.loads(raw_result.decode("utf-8")) if raw_result.strip() else None
    except ValueError:
        result = None
    ws = int(status_msg.split()[1]) if status_msg.startswith("exit ") else None
    code = None if ws is None else os.WEXITSTATUS(ws) if os.WIFEXITED(ws) else -os.WTERMSIG(ws)
    if timed_out or code == -signal.SIGXCPU:
        status: SandboxStatus = "timeout"
    elif code is None or code < 0:
        status = "killed"
    elif err.rstrip().rsplit("\n", 1)[-1].startswith("MemoryError"):
        status = "oom"
    else:
        status = "ok" if code == 0 else "error"
    return SandboxResult(status, code, out, err, duration, result if isinstance(result, dict) else None, cut)
