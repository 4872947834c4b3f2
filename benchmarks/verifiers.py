"""Verifier pool throughput: 2 workers vs 1 worker vs in-process, and the pool's per-sample overhead.

    python benchmarks/verifiers.py [--math 2000] [--code 500] [--reps 3] [--write-results]

Samples are generated procedurally (about half correct). Each configuration is warmed up
first (worker start-up is reported apart), then timed `--reps` times, interleaved so that
load from other processes hits every configuration alike; the median is reported.
Overhead = (pool seconds - in-process seconds) / samples on the `arithmetic` env, whose
scoring costs microseconds, so what remains is dispatch, IPC and bookkeeping.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import random
import statistics
import sys
import time

import psutil

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nemo_rlvr.config import EnvConfig  # noqa: E402
from nemo_rlvr.envs import ENVIRONMENTS  # noqa: E402
from nemo_rlvr.envs.pool import InlineScorer, VerifierPool  # noqa: E402
from nemo_rlvr.rollout.base import Sample  # noqa: E402

HEADING = "## Verifier pool (CPU, 2 cores)"


def sample(text: str, env: str, **fields) -> Sample:
    return Sample([], [], [], text, "stop", 0, env, fields)


def math_samples(n: int, rng: random.Random) -> list[Sample]:
    """Fractions, integers and expressions in \\boxed{}, half of them wrong."""
    out = []
    for i in range(n):
        a, b = rng.randint(1, 99), rng.randint(2, 99)
        kind = i % 3
        if kind == 0:
            gold, right, wrong = f"{a}/{b}", f"\\frac{{{a}}}{{{b}}}", f"\\frac{{{a + 1}}}{{{b}}}"
        elif kind == 1:
            gold, right, wrong = str(a * b), f"{a * b:,}", str(a * b + 1)
        else:
            gold, right, wrong = f"{a}\\sqrt{{2}}", f"\\sqrt{{{2 * a * a}}}", f"{a}\\sqrt{{3}}"
        ans = right if rng.random() < 0.5 else wrong
        out.append(sample(f"Working it out step by step, we get {a} and {b}.\nSo the answer is \\boxed{{{ans}}}.",
                          "math", answer=gold))
    return out


_FUNCS = [
    ("add", "def add(a, b):\n    return a + b", "def add(a, b):\n    return a - b",
     ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(10, 5) == 15"]),
    ("rev", "def rev(s):\n    return s[::-1]", "def rev(s):\n    return s",
     ["assert rev('abc') == 'cba'", "assert rev('') == ''"]),
    ("fact", "def fact(n):\n    return 1 if n < 2 else n * fact(n - 1)", "def fact(n):\n    return n",
     ["assert fact(5) == 120"]),
]


def code_samples(n: int, rng: random.Random) -> list[Sample]:
    out = []
    for i in range(n):
        name, good, bad, tests = _FUNCS[i % len(_FUNCS)]
        body = good if rng.random() < 0.5 else bad
        out.append(sample(f"Here is my solution:\n```python\n{body}\n```\n", "code", tests=tests, entry_point=name))
    return out


def arithmetic_samples(n: int, rng: random.Random) -> list[Sample]:
    return [sample(str(rng.randint(0, 9)), "arithmetic", answer=rng.randint(0, 9)) for _ in range(n)]


def cpu_seconds(scorer) -> float:
    """CPU seconds used so far by this process (+ reaped children) and the scorer's workers."""
    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system
    for pid in scorer.worker_pids() if isinstance(scorer, VerifierPool) else []:
        try:
            c = psutil.Process(pid).cpu_times()
            total += c.user + c.system + c.children_user + c.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def bench(make, n: int, env: str, reps: int, timeout_s: float) -> dict[str, float]:
    """Median seconds (and CPU cores obtained) for inline, pool(1), pool(2).

    Every rep scores fresh samples (a new seed), the same for all three, so no process
    profits from caches (sympy's) filled by an earlier rep; each scorer is warmed up first
    on other samples (lazy imports, compiled regexes)."""
    scorers = {"inline": InlineScorer(EnvConfig(name=env))}
    startup = {}
    warm = make(min(n, 60), random.Random(1000))
    for w in (1, 2):
        t0 = time.perf_counter()
        scorers[f"pool{w}"] = VerifierPool(EnvConfig(name=env, num_workers=w, timeout_s=timeout_s))
        scorers[f"pool{w}"].score(warm[:2 * w])  # start the workers, build the env in each
        startup[f"pool{w}"] = time.perf_counter() - t0
    for s in scorers.values():
        s.score(warm)
    times: dict[str, list[float]] = {k: [] for k in scorers}
    cores: dict[str, list[float]] = {k: [] for k in scorers}
    for rep in range(reps):
        samples = make(n, random.Random(rep))
        for k, s in scorers.items():
            c0, t0 = cpu_seconds(s), time.perf_counter()
            out = s.score(samples)
            times[k].append(time.perf_counter() - t0)
            cores[k].append((cpu_seconds(s) - c0) / times[k][-1])
            errs = sum(o.error is not None for o in out)
            if errs:
                print(f"  warning: {k} had {errs} errors, e.g. {next(o.error for o in out if o.error)}")
    for s in scorers.values():
        s.close()
    res = {k: statistics.median(v) for k, v in times.items()}
    res |= {f"cores_{k}": statistics.median(v) for k, v in cores.items()}
    res["startup_pool2"] = startup["pool2"]
    return res


def small_batch_latency(reps: int = 200) -> dict[str, float]:
    """Seconds per score() call of 8 arithmetic samples (fixed per-call cost)."""
    rng = random.Random(1)
    batch = arithmetic_samples(8, rng)
    out = {}
    for n in (1, 2):
        with VerifierPool(EnvConfig(name="arithmetic", num_workers=n)) as p:
            p.score(batch)
            t0 = time.perf_counter()
            for _ in range(reps):
                p.score(batch)
            out[f"pool{n}"] = (time.perf_counter() - t0) / reps
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--math", type=int, default=2000, help="math samples (0 skips)")
    ap.add_argument("--code", type=int, default=500, help="code samples (0 skips)")
    ap.add_argument("--trivial", type=int, default=20000, help="arithmetic samples for the overhead")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--code-reps", type=int, default=1)
    ap.add_argument("--write-results", action="store_true", help=f"write the table under {HEADING!r} "
                                                                 f"in benchmarks/RESULTS.md")
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    rows = []
    t_all = time.perf_counter()

    res = bench(arithmetic_samples, args.trivial, "arithmetic", args.reps, 10.0)
    ovh = {n: (res[f"pool{n}"] - res["inline"]) / args.trivial * 1e3 for n in (1, 2)}
    rows.append(("arithmetic (trivial)", args.trivial, res))
    lat = small_batch_latency()
    print(f"arithmetic x{args.trivial}: inline {res['inline']:.3f}s pool1 {res['pool1']:.3f}s "
          f"pool2 {res['pool2']:.3f}s; overhead/sample pool1 {ovh[1]:.3f} ms, pool2 {ovh[2]:.3f} ms; "
          f"8-sample call pool1 {lat['pool1'] * 1e3:.2f} ms, pool2 {lat['pool2'] * 1e3:.2f} ms")
    for env, n, make, reps, tmo in (("math", args.math, math_samples, args.reps, 30.0),
                                    ("code", args.code, code_samples, args.code_reps, 60.0)):
        if not n:
            continue
        if env not in ENVIRONMENTS:
            print(f"{env}: not registered, skipped")
            continue
        res = bench(make, n, env, reps, tmo)
        rows.append((env, n, res))
        print(f"{env} x{n}: inline {n / res['inline']:.1f}/s pool1 {n / res['pool1']:.1f}/s "
              f"pool2 {n / res['pool2']:.1f}/s; pool2/pool1 {res['pool1'] / res['pool2']:.2f}x, "
              f"pool2/inline {res['inline'] / res['pool2']:.2f}x")
    load1 = os.getloadavg()[0]
    table = _table(rows, ovh, lat, load0, load1, time.perf_counter() - t_all, args)
    print(table)
    if args.write_results:
        _write_results(table)


def _table(rows, ovh, lat, load0, load1, seconds, args) -> str:
    lines = [
        HEADING, "",
        f"`python benchmarks/verifiers.py` ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, "
        f"load average {load0:.1f} at start / {load1:.1f} at end; median of {args.reps} interleaved runs, "
        f"code {args.code_reps}; {seconds:.0f} s in all). Samples/s, higher is better. \"CPU cores "
        f"obtained\" = CPU seconds of the benchmark process, its workers and their children / wall "
        f"seconds: on an idle 2-core machine 2 workers get ~2; when other jobs share the cores they get "
        f"less, and \"per core obtained\" divides that out (1.00x = the pool adds no serial work).", "",
        "| env | samples | in-process | pool, 1 worker | pool, 2 workers | 2 vs 1 worker | 2 workers vs "
        "in-process | CPU cores obtained (in-process / 1 / 2) | 2 vs 1, per core obtained |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for env, n, r in rows:
        speedup = r["pool1"] / r["pool2"]
        per_core = speedup / (r["cores_pool2"] / r["cores_pool1"])
        lines.append(f"| {env} | {n} | {n / r['inline']:.0f} | {n / r['pool1']:.0f} | {n / r['pool2']:.0f} | "
                     f"{speedup:.2f}x | {r['inline'] / r['pool2']:.2f}x | {r['cores_inline']:.2f} / "
                     f"{r['cores_pool1']:.2f} / {r['cores_pool2']:.2f} | {per_core:.2f}x |")
    lines += ["", f"Pool overhead per sample (arithmetic, vs in-process): {ovh[1]:.3f} ms with 1 worker, "
                  f"{ovh[2]:.3f} ms with 2. A score() call of 8 samples: {lat['pool1'] * 1e3:.2f} ms (1 worker), "
                  f"{lat['pool2'] * 1e3:.2f} ms (2). Worker start-up (2 workers, first call): "
                  f"{rows[0][2]['startup_pool2']:.2f} s.", ""]
    return "\n".join(lines)


def _write_results(table: str) -> None:
    """Replace our section of RESULTS.md (or append it); other sections stay as they are."""
    path = ROOT / "benchmarks" / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if HEADING in text:
        start = text.index(HEADING)
        nxt = text.find("\n## ", start + len(HEADING))
        text = text[:start] + table + ("\n" + text[nxt + 1:] if nxt != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + table
    path.write_text(text.rstrip("\n") + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
