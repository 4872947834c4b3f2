"""Verifier pool throughput: 2 workers vs 1 worker vs in-process, and the pool's per-sample overhead.

    python benchmarks/verifiers.py [--math 2000] [--code 500] [--reps 7] [--code-reps 3] [--write-results]

Samples are generated procedurally (about half correct). Each configuration is warmed up
first (worker start-up is reported apart), then timed `--reps` times; within a rep the
configurations take turns on quarters of the samples, in alternating order, so that drift
in the machine's speed hits every configuration alike;
speedups are ratios within a rep, reported as the median and range over reps. Code is
measured with max_parallel=1 (a worker scores one test at a time: the pool's own scaling)
and with the default (cores / workers, at most 4: 2 for one worker on 2 cores, 1 for two).
Overhead = (pool seconds - in-process seconds) / samples on the `arithmetic` env, whose
scoring costs microseconds, so what remains is dispatch, IPC and bookkeeping.
"""

from __future__ import annotations

import argparse
import math
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
from nemo_rlvr.envs.registry import ENVIRONMENTS  # noqa: E402
from nemo_rlvr.scoring.base import InlineScorer
from nemo_rlvr.scoring.pool import VerifierPool  # noqa: E402
from nemo_rlvr.types import Sample  # noqa: E402

HEADING = "## Verifier pool (CPU, 2 cores)"


def sample(text: str, env: str | None, **fields) -> Sample:
    return Sample([], [], [], text, "stop", 0, env, fields)


def math_samples(n: int, rng: random.Random, env: str | None = "math") -> list[Sample]:
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
                          env, answer=gold))
    return out


def math_group_samples(n: int, rng: random.Random, env: str | None = "math", group: int = 8) -> list[Sample]:
    """A GRPO step's batch: n / group prompts, each answered `group` times in a row (the order
    the controller scores them), right (in one of two spellings) or wrong about half the time."""
    out = []
    for i in range(n // group):
        a, b = rng.randint(100, 9999), rng.randint(101, 9999)
        kind = i % 3
        if kind == 0:
            gold, rights, wrongs = f"{a}/{b}", [f"\\frac{{{a}}}{{{b}}}", f"{a}/{b}"], [f"\\frac{{{a + 1}}}{{{b}}}"]
        elif kind == 1:
            gold, rights, wrongs = str(a * b), [f"{a * b:,}", str(a * b)], [str(a * b + 1), str(a * b - 10)]
        else:
            gold, rights, wrongs = f"{a}\\sqrt{{2}}", [f"\\sqrt{{{2 * a * a}}}", f"{a}\\sqrt{{2}}"], [f"{a}\\sqrt{{3}}"]
        fields = {"answer": gold}
        for _ in range(group):
            ans = rng.choice(rights if rng.random() < 0.5 else wrongs)
            out.append(sample(f"Working it out step by step, we get {a} and {b}.\nSo the answer is "
                              f"\\boxed{{{ans}}}.", env, **fields))
    return out


_FUNCS = [
    ("add", "def add(a, b):\n    return a + b", "def add(a, b):\n    return a - b",
     ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(10, 5) == 15"]),
    ("rev", "def rev(s):\n    return s[::-1]", "def rev(s):\n    return s",
     ["assert rev('abc') == 'cba'", "assert rev('') == ''"]),
    ("fact", "def fact(n):\n    return 1 if n < 2 else n * fact(n - 1)", "def fact(n):\n    return n",
     ["assert fact(5) == 120"]),
]


def code_samples(n: int, rng: random.Random, env: str | None = "code") -> list[Sample]:
    out = []
    for i in range(n):
        name, good, bad, tests = _FUNCS[i % len(_FUNCS)]
        body = good if rng.random() < 0.5 else bad
        out.append(sample(f"Here is my solution:\n```python\n{body}\n```\n", env, tests=tests, entry_point=name))
    return out


def arithmetic_samples(n: int, rng: random.Random, env: str | None = "arithmetic") -> list[Sample]:
    return [sample(str(rng.randint(0, 9)), env, answer=rng.randint(0, 9)) for _ in range(n)]


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


def bench(make, n: int, env: str, reps: int, timeout_s: float, options: dict | None = None,
          warm_n: int = 240, slices: int = 4) -> dict[str, float]:
    """Median seconds, CPU cores obtained, and paired speedups for inline, pool(1), pool(2).

    Every rep scores fresh samples (a new seed), the same for all three, so no process
    profits from caches (sympy's) filled by an earlier rep; each scorer is warmed up first
    on other samples (lazy imports, compiled regexes). A rep scores its n samples in `slices`
    score() calls per scorer, the scorers taking turns in alternating order (ABC, CBA, ...),
    and speedups are ratios within a rep: this VM's speed drifts by up to 1.5x over tens of
    seconds (neighbours on the host), and timings a second or two apart see the same speed.
    Reported: the median ratio and its range."""
    options = options or {}
    scorers = {"inline": InlineScorer(EnvConfig(name=env, options=options))}
    startup = {}
    warm = make(min(n, warm_n), random.Random(1000), env=None)  # lazy imports, first-use paths
    for w in (1, 2):
        t0 = time.perf_counter()
        scorers[f"pool{w}"] = VerifierPool(EnvConfig(name=env, num_workers=w, timeout_s=timeout_s, options=options))
        scorers[f"pool{w}"].score(warm[:2 * w])  # start the workers, build the env in each
        startup[f"pool{w}"] = time.perf_counter() - t0
    for s in scorers.values():
        s.score(warm)
    times: dict[str, list[float]] = {k: [] for k in scorers}
    cores: dict[str, list[float]] = {k: [] for k in scorers}
    for rep in range(reps):
        samples = make(n, random.Random(rep), env=None)  # env None: the scorer's env.name, with its options
        wall = dict.fromkeys(scorers, 0.0)
        cpu = dict.fromkeys(scorers, 0.0)
        step = math.ceil(n / slices)
        for j, lo in enumerate(range(0, n, step)):  # slices alternate ABC, CBA, ...: drift cancels
            for k in list(scorers)[::1 if (rep + j) % 2 == 0 else -1]:
                s = scorers[k]
                c0, t0 = cpu_seconds(s), time.perf_counter()
                out = s.score(samples[lo:lo + step])
                wall[k] += time.perf_counter() - t0
                cpu[k] += cpu_seconds(s) - c0
                errs = sum(o.error is not None for o in out)
                if errs:
                    print(f"  warning: {k} had {errs} errors, e.g. {next(o.error for o in out if o.error)}")
        for k in scorers:
            times[k].append(wall[k])
            cores[k].append(cpu[k] / wall[k])
        print(f"  {env} rep {rep}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items())
              + f"; 2 vs 1 worker {times['pool1'][-1] / times['pool2'][-1]:.2f}x", flush=True)
    for s in scorers.values():
        s.close()
    res = {k: statistics.median(v) for k, v in times.items()}
    res |= {f"cores_{k}": statistics.median(v) for k, v in cores.items()}
    speedups = [a / b for a, b in zip(times["pool1"], times["pool2"])]
    res |= {"speedup": statistics.median(speedups), "speedup_min": min(speedups), "speedup_max": max(speedups),
            "vs_inline": statistics.median(a / b for a, b in zip(times["inline"], times["pool2"])),
            "per_core": statistics.median(sp / (c2 / c1) if c1 and c2 else math.nan for sp, c1, c2 in
                                          zip(speedups, cores["pool1"], cores["pool2"]))}
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
    ap.add_argument("--reps", type=int, default=7, help="reps for arithmetic and math")
    ap.add_argument("--code-reps", type=int, default=3)
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
    # code twice: max_parallel=1 measures the pool (each worker one sandbox at a time, so one
    # worker is a serial scorer); by default a lone worker runs a record's tests side by side
    # on both cores (max_parallel=2 here), so a second worker has less idle CPU left to use.
    for label, env, n, make, reps, tmo, opts in (
            (f"math, {args.math} problems", "math", args.math, math_samples, args.reps, 30.0, {}),
            (f"math, {args.math // 8} prompts x 8 (a GRPO step)", "math", args.math, math_group_samples, args.reps,
             30.0, {}),
            ("code, max_parallel=1", "code", args.code, code_samples, args.code_reps, 60.0, {"max_parallel": 1}),
            ("code, default max_parallel (cores / workers: 2, 2, 1)", "code", args.code, code_samples,
             args.code_reps, 60.0, {})):
        if not n:
            continue
        if env not in ENVIRONMENTS:
            print(f"{env}: not registered, skipped")
            continue
        res = bench(make, n, env, reps, tmo, opts, warm_n=24 if env == "code" else 240)
        rows.append((label, n, res))
        print(f"{label} x{n}: inline {n / res['inline']:.1f}/s pool1 {n / res['pool1']:.1f}/s "
              f"pool2 {n / res['pool2']:.1f}/s; 2 vs 1 worker {res['speedup']:.2f}x "
              f"({res['speedup_min']:.2f}-{res['speedup_max']:.2f}), vs inline {res['vs_inline']:.2f}x", flush=True)
    load1 = os.getloadavg()[0]
    table = _table(rows, ovh, lat, load0, load1, time.perf_counter() - t_all, args)
    print(table)
    if args.write_results:
        _write_results(table)


def _table(rows, ovh, lat, load0, load1, seconds, args) -> str:
    lines = [
        HEADING, "",
        f"`python benchmarks/verifiers.py` ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, "
        f"load average {load0:.1f} at start / {load1:.1f} at end; {args.reps} reps (code "
        f"{args.code_reps}), fresh samples each rep, scored in 4 slices with the scorers taking turns "
        f"in alternating order; {seconds:.0f} s in all). "
        f"Samples/s (median over reps), higher is better. Speedups are ratios of the two timings "
        f"within one rep, median and [range] over reps. \"CPU cores obtained\" = CPU seconds of the "
        f"benchmark process, its workers and their children / wall seconds; \"per core obtained\" "
        f"divides the speedup by the ratio of cores obtained (1.00x = each worker does as much per "
        f"CPU second as a lone one).", "",
        "| env | samples | in-process | pool, 1 worker | pool, 2 workers | 2 vs 1 worker [range] | 2 workers vs "
        "in-process | CPU cores obtained (in-process / 1 / 2) | 2 vs 1, per core obtained |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for env, n, r in rows:
        lines.append(f"| {env} | {n} | {n / r['inline']:.0f} | {n / r['pool1']:.0f} | {n / r['pool2']:.0f} | "
                     f"{r['speedup']:.2f}x [{r['speedup_min']:.2f}-{r['speedup_max']:.2f}] | "
                     f"{r['vs_inline']:.2f}x | {r['cores_inline']:.2f} / {r['cores_pool1']:.2f} / "
                     f"{r['cores_pool2']:.2f} | {r['per_core']:.2f}x |")
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
