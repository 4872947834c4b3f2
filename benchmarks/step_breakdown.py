"""Where a step's time goes, and the peak memory of every process of a run.

    .venv/bin/python benchmarks/step_breakdown.py [RECIPE] [key=value ...]

Runs the recipe (default: the tiny CPU recipe, 20 steps) through Ray, then prints the
share of step time per phase (generate / score / logprobs / train / weight_sync /
overhead), averaged over the steps after the first (the first pays one-off costs),
and the peak memory of the driver plus all its descendants (Ray's processes and
workers), summed as PSS so that shared pages are counted once.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PHASES = ("generate", "score", "logprobs", "train", "weight_sync")


class MemorySampler(threading.Thread):
    """Samples PSS of this process and its descendants every `period` seconds."""

    def __init__(self, period: float = 0.25):
        super().__init__(daemon=True)
        self.period, self.peak, self.peak_split = period, 0, {}
        self._halt = threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self._halt.is_set():
            total, split = 0, {}
            for p in [me, *me.children(recursive=True)]:
                try:
                    info = p.memory_full_info()
                    mem = getattr(info, "pss", info.rss)
                    name = " ".join(p.cmdline()[:1] + [p.name()])[-40:]
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                total += mem
                split[f"{p.pid} {name}"] = mem
            if total > self.peak:
                self.peak, self.peak_split = total, split
            self._halt.wait(self.period)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def main(argv: list[str]) -> None:
    from nemo_rlvr.build import build_run
    from nemo_rlvr.config import load_config
    from nemo_rlvr.controller import train

    recipe = next((a for a in argv if "=" not in a), None)
    overrides = [a for a in argv if "=" in a]
    out = tempfile.mkdtemp(prefix="nemo_rlvr_bench_")   # a fresh run folder: nothing to resume
    cfg = load_config(recipe, ["train.steps=20", "name=bench_step_breakdown", "logging.console=false",
                               f"output_dir={out}",
                               "validation.every_steps=0", "checkpoint.export_hf=false", *overrides])
    sampler = MemorySampler()
    sampler.start()
    t0 = time.perf_counter()
    run = build_run(cfg)
    build_s = time.perf_counter() - t0
    path = cfg.run_dir / "metrics.jsonl"
    start_line = len(path.read_text().splitlines()) if path.exists() else 0
    t0 = time.perf_counter()
    try:
        train(run)
    finally:
        run.logger.close()
        run.scorer.close()
        sampler.stop()
        import ray

        ray.shutdown()
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in path.read_text().splitlines()[start_line:]]
    steps = [r for r in rows if r["step"] > 1 and "timing/step" in r]
    step_s = sum(r["timing/step"] for r in steps) / len(steps)
    print(f"recipe: {recipe or 'recipes/tiny_cpu.yaml'}  steps timed: {len(steps)} (step 1 excluded)  "
          f"build: {build_s:.1f}s  train wall (incl. validation): {wall:.1f}s")
    print(f"mean step time: {step_s:.3f}s")
    print("| phase | seconds/step | share |\n| --- | --- | --- |")
    accounted = 0.0
    for ph in PHASES:
        s = sum(r.get(f"timing/{ph}", 0.0) for r in steps) / len(steps)
        accounted += s
        print(f"| {ph} | {s:.3f} | {s / step_s:.1%} |")
    print(f"| overhead | {step_s - accounted:.3f} | {(step_s - accounted) / step_s:.1%} |")
    print(f"peak memory, all processes (PSS): {sampler.peak / 2**30:.2f} GiB")
    for name, mem in sorted(sampler.peak_split.items(), key=lambda kv: -kv[1])[:8]:
        print(f"    {mem / 2**20:8.0f} MiB  {name}")


if __name__ == "__main__":
    main(sys.argv[1:])
