"""Every algorithm preset on the same task, side by side: held-out accuracy and seconds per step.

    .venv/bin/python benchmarks/algorithms.py [--steps 60] [--seed 0] [--only grpo dapo ...] [key=value ...]

Each preset runs the tiny CPU recipe (recipes/tiny_cpu.yaml: the cached warm-started tiny model,
two-digit addition, exact-match reward) for the same number of steps with the same seed, through
Ray as `nemo-rlvr train` does, in a fresh process each; the recipe's own keys (lr, kl_coef, batch)
stay as they are for every preset. Printed per preset: greedy held-out accuracy before (step 0)
and after, the gain, the median s/step of the steps after the first, and the preset's extras
(dynamic sampling rounds for dapo, the final value loss for ppo). One run per preset on a noisy
2-core machine: differences of a few points are run-to-run spread (RESULTS.md has seed spreads).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nemo_rlvr.config import PRESETS  # noqa: E402


def run(name: str, steps: int, seed: int, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "nemo_rlvr.cli", "train", f"algorithm.name={name}", f"train.steps={steps}",
           f"seed={seed}", f"output_dir={out}", f"name={name}", "checkpoint.resume=never",
           "checkpoint.export_hf=false", "checkpoint.every_steps=0", f"validation.every_steps={steps}", *extra]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        return {"preset": name, "error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    rows = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val/accuracy" in r]
    steps_rows = [r for r in rows if "timing/step" in r]
    last = steps_rows[-1]
    out_row = {"preset": name, "val_before": val[0]["val/accuracy"], "val_after": val[-1]["val/accuracy"],
               "s_per_step": statistics.median(r["timing/step"] for r in steps_rows[1:]),
               "reward_last10": statistics.mean(r["train/reward_mean"] for r in steps_rows[-10:])}
    if name == "dapo":
        out_row["rounds_mean"] = statistics.mean(r["rollout/resample_rounds"] for r in steps_rows)
    if "loss/value" in last:
        out_row["value_loss_first_last"] = (steps_rows[0]["loss/value"], last["loss/value"])
    return out_row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", choices=sorted(PRESETS))
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("overrides", nargs="*", help="key=value for every preset's run")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="nemo-rlvr-algos-") as tmp:
        print(f"{'preset':<13} {'held-out before':>15} {'after':>6} {'gain':>6} {'s/step':>7}  extras", flush=True)
        for name in args.only or list(PRESETS):
            r = run(name, args.steps, args.seed, Path(tmp), args.overrides)
            rows.append(r)
            if "error" in r:
                print(f"{name:<13} FAILED: {r['error']}", flush=True)
                continue
            extras = []
            if "rounds_mean" in r:
                extras.append(f"{r['rounds_mean']:.2f} generation rounds/step")
            if "value_loss_first_last" in r:
                a, b = r["value_loss_first_last"]
                extras.append(f"value loss {a:.3f} -> {b:.3f}")
            print(f"{name:<13} {r['val_before']:>15.3f} {r['val_after']:>6.3f} "
                  f"{r['val_after'] - r['val_before']:>+6.3f} {r['s_per_step']:>7.3f}  {'; '.join(extras)}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"steps": args.steps, "seed": args.seed, "rows": rows}, indent=1))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
