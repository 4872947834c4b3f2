"""Env server under load: N concurrent clients against `nemo-rlvr serve-env`, requests/s, latency, 503 share.

    python benchmarks/env_server.py [--clients 1 8 64] [--duration-s 5] [--workers 2] [--max-queue 4096]
                                    [--records 1] [--env arithmetic]

Starts `serve-env` in a subprocess on a free localhost port (the real CLI, uvicorn, the
verifier pool), waits for /health, then for each N runs N asyncio clients (one httpx
AsyncClient, N connections) for `--duration-s` seconds. Each client POSTs `--records`
arithmetic records per request (one record: the NeMo Gym pattern of one /verify per rollout)
back to back; a 503 is counted and retried at once (no Retry-After sleep, so the queue stays
under pressure). Reported per N: answered requests/s (200s), samples/s, p50/p99 latency of
the 200s in ms, and the 503 share of all responses. Clients and server share the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import httpx

ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace) -> tuple[str, subprocess.Popen]:
    port = free_port()
    cmd = [sys.executable, "-m", "nemo_rlvr.scoring.cli", "serve-env", "--env", args.env, "--port", str(port),
           "--workers", str(args.workers), "--max-queue", str(args.max_queue)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            httpx.get(url + "/health", timeout=1).raise_for_status()
            return url, proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"serve-env did not start: {' '.join(cmd)}")


async def drive(url: str, clients: int, duration_s: float, records: int) -> dict[str, float]:
    """Run `clients` request loops for `duration_s`; latencies of 200s (s), status counts."""
    latencies: list[float] = []
    counts = {"ok": 0, "busy": 0, "other": 0}
    end = time.perf_counter() + duration_s

    async def loop(c: int) -> None:
        # One client (one connection) each: a shared httpx pool of N connections costs O(N) per
        # request on the client side, which at N=64 measured httpx, not the server.
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            i = 0
            while time.perf_counter() < end:
                a, b = (c * 7919 + i) % 97, i % 89
                recs = [{"id": f"{c}-{i}-{k}", "prompt": f"{a}+{b}", "response": str(a + b + k % 2),
                         "answer": a + b} for k in range(records)]
                body = recs[0] if records == 1 else {"records": recs}
                t0 = time.perf_counter()
                r = await client.post("/verify", json=body)
                dt = time.perf_counter() - t0
                if r.status_code == 200:
                    counts["ok"] += 1
                    latencies.append(dt)
                else:
                    counts["busy" if r.status_code == 503 else "other"] += 1
                i += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(loop(c) for c in range(clients)))
    wall = time.perf_counter() - t0
    latencies.sort()
    total = sum(counts.values())
    pct = (lambda q: 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))]) if latencies else (
        lambda q: float("nan"))
    return {"requests": total, "ok_per_s": counts["ok"] / wall,
            "samples_per_s": counts["ok"] * records / wall, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "busy_share": counts["busy"] / max(total, 1), "other": counts["other"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--duration-s", type=float, default=5.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-queue", type=int, default=4096)
    p.add_argument("--records", type=int, default=1, help="records per request")
    p.add_argument("--env", default="arithmetic")
    args = p.parse_args()
    url, proc = start_server(args)
    try:
        asyncio.run(drive(url, 4, 1.0, args.records))  # warm-up: workers, connections
        print(f"serve-env --env {args.env} --workers {args.workers} --max-queue {args.max_queue}; "
              f"{args.records} record(s)/request, {args.duration_s:g} s per row; load average "
              f"{os.getloadavg()[0]:.1f} at start")
        print(f"{'clients':>7} {'requests':>8} {'ok req/s':>9} {'samples/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'503 share':>9}")
        for n in args.clients:
            r = asyncio.run(drive(url, n, args.duration_s, args.records))
            print(f"{n:>7} {r['requests']:>8} {r['ok_per_s']:>9.1f} {r['samples_per_s']:>9.1f} "
                  f"{r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {100 * r['busy_share']:>8.1f}%"
                  + (f"  ({r['other']} other non-200)" if r["other"] else ""))
        print(f"load average {os.getloadavg()[0]:.1f} at end")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
