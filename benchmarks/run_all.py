"""Run every benchmark in benchmarks/ at small sizes and write benchmarks/results.json.

    .venv/bin/python benchmarks/run_all.py                       # all of them (~15-25 min on 2 CPU cores)
    .venv/bin/python benchmarks/run_all.py --only vs_trl learner  # some
    .venv/bin/python benchmarks/run_all.py --dry-run              # print the commands, run nothing

Each benchmark runs as its own process (`python benchmarks/<name>.py <SMALL args>`), one after
the other, never with `--write-results`: RESULTS.md is hand-written prose with measured tables
and stays untouched. The output is benchmarks/results.json (generated, overwritten each run):
the machine, the git commit (and whether the tree was dirty), and per benchmark the command, exit
status, wall seconds and the tail of its output; those in WITH_JSON (vs_trl, algorithms) also
give their structured results (`--json`). A benchmark whose needs are missing (a GPU, vLLM) is listed as skipped with the
reason; one without an entry in SMALL runs with its own default arguments. Small sizes check
that every benchmark still runs and give rough numbers; RESULTS.md's numbers come from the
full sizes given in each benchmark's docstring.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SMALL: dict[str, tuple[list[str], str | None]] = {
    "algorithms": (["--steps", "5"], None),
    "step_breakdown": (["train.steps=5"], None),
    "learner": (["--model", "tiny", "--steps", "2", "--samples", "8", "--max-response", "64", "--reps", "1"], None),
    "verifiers": (["--math", "200", "--code", "20", "--trivial", "2000", "--reps", "2", "--code-reps", "1"], None),
    "weight_sync": (["--model", "tiny", "--reps", "2"], None),
    "generation": (["--model", "tiny", "--prompts", "8", "--n", "4", "--max-new-tokens", "16", "--reps", "2"],
                   "vllm"),
    "env_server": (["--clients", "1", "8", "--duration-s", "2"], None),
    "gpu_smoke": (["--steps", "2"], "cuda"),
    "vs_trl": (["--model", "tiny", "--steps", "6"], None),
}
"""benchmark -> (small arguments, what it needs: None, "vllm" or "cuda")."""
WITH_JSON = ("algorithms", "vs_trl")
"""Benchmarks that take `--json PATH`: their structured results go into results.json too."""


def missing(need: str | None) -> str | None:
    """Why a benchmark cannot run here, or None."""
    if need == "cuda":
        import torch

        return None if torch.cuda.is_available() else "no CUDA device"
    if need == "vllm":
        import importlib.util

        return None if importlib.util.find_spec("vllm") else "vLLM is not installed (pip install -e '.[vllm]')"
    return None


def git_state() -> dict[str, str | bool]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def run_one(name: str, args: list[str], timeout_s: float) -> dict:
    extra, result_path = [], None
    if name in WITH_JSON:  # structured results next to the printed report
        result_path = Path(tempfile.mkdtemp(prefix="run_all_")) / f"{name}.json"
        extra = ["--json", str(result_path)]
    cmd = [sys.executable, str(HERE / f"{name}.py"), *args, *extra]
    t0 = time.perf_counter()
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
                             check=False)
        rc, text = out.returncode, out.stdout + out.stderr[-3000:]
    except subprocess.TimeoutExpired as e:
        rc, text = 124, f"{(e.stdout or b'').decode(errors='replace')}\ntimed out after {timeout_s:.0f} s"
    row = {"name": name, "cmd": " ".join(["python", f"benchmarks/{name}.py", *args]), "rc": rc,
           "wall_s": round(time.perf_counter() - t0, 1), "output_tail": text[-6000:]}
    if result_path is not None and result_path.exists():
        row["result"] = json.loads(result_path.read_text())
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", help="run these benchmarks only (names without .py)")
    ap.add_argument("--out", default=str(HERE / "results.json"))
    ap.add_argument("--timeout-s", type=float, default=1800.0, help="per benchmark")
    ap.add_argument("--dry-run", action="store_true")
    a = ap.parse_args()
    names = sorted(p.stem for p in HERE.glob("*.py") if p.stem not in ("run_all", "__init__"))
    unknown = sorted(set(a.only or ()) - set(names))
    if unknown:
        sys.exit(f"--only {' '.join(unknown)}: no such benchmark; there are: {', '.join(names)}")
    rows = []
    for name in names:
        if a.only and name not in a.only:
            continue
        args, need = SMALL.get(name, ([], None))
        why = missing(need)
        print(f"[run_all] {name}: " + (f"skipped ({why})" if why else " ".join(args) or "(default arguments)"),
              flush=True)
        if why:
            rows.append({"name": name, "skipped": why})
            continue
        if a.dry_run:
            continue
        row = run_one(name, args, a.timeout_s)
        print(f"[run_all] {name}: exit {row['rc']} in {row['wall_s']:.0f} s", flush=True)
        rows.append(row | ({} if name in SMALL else {"note": "no small sizes known: default arguments"}))
    if a.dry_run:
        return
    load = os.getloadavg()
    Path(a.out).write_text(json.dumps({
        "generated_by": "benchmarks/run_all.py", "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "load_avg_end": load, "python": platform.python_version()},
        "git": git_state(), "benchmarks": rows}, indent=1) + "\n")
    failed = [r["name"] for r in rows if r.get("rc")]
    print(f"[run_all] wrote {a.out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
