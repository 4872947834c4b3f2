"""`nemo-rlvr` command line: train | eval | export | plot | verify | serve-env | data.

    nemo-rlvr train                                   # the tiny CPU recipe (resumes when it can)
    nemo-rlvr train recipes/tiny_cpu.yaml learner.lr=1e-4 train.steps=10
    nemo-rlvr train --print-config algorithm.kl_coef=0.01
    nemo-rlvr train --dry-run recipes/tiny_cpu_vllm.yaml     # config, data, envs, placement; starts nothing
    nemo-rlvr eval runs/tiny_cpu/checkpoints/step_60 --pass-k 1 4
    nemo-rlvr export runs/tiny_cpu/checkpoints/step_60 --to exported/
    nemo-rlvr plot runs/tiny_cpu
    nemo-rlvr verify --env math --input in.jsonl --output out.jsonl
    nemo-rlvr serve-env --env math --port 8000
    nemo-rlvr data prepare --from gsm8k gsm8k_train.jsonl --out data/gsm8k.jsonl

User mistakes (config, files, env names) exit with status 2 and one paragraph on
stderr naming the key and the fix; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from nemo_rlvr.config import ConfigError, dump_config, load_config
from nemo_rlvr.envs.registry import UnknownEnvError

USER_ERRORS = (ConfigError, UnknownEnvError)
# transformers' per-load progress bars clutter the step lines (Ray workers inherit this)
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _split_train_args(items: list[str]) -> tuple[str | None, list[str]]:
    recipe, overrides = None, []
    for item in items:
        if "=" in item:
            overrides.append(item)
        elif recipe is None:
            recipe = item
        else:
            raise ConfigError(f"unexpected argument {item!r}: give at most one recipe file, then "
                              f"key=value overrides (e.g. learner.lr=1e-5).")
    return recipe, overrides


def cmd_train(args: argparse.Namespace) -> int:
    recipe, overrides = _split_train_args(args.items)
    cfg = load_config(recipe, overrides)
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    if args.dry_run:
        from nemo_rlvr.build import dry_run

        for line in dry_run(cfg):
            print(line)
        print("dry run: config, model, data, environments and placement check out; nothing was started")
        return 0
    from nemo_rlvr.build import build_run
    from nemo_rlvr.checkpoint import CheckpointWriteError
    from nemo_rlvr.controller import PREEMPTED_EXIT_CODE, RunStopped, StopRequested, train

    run = build_run(cfg)
    try:
        train(run)
    except StopRequested as e:
        where = f"checkpoint {e.path}" if e.path else "nothing new to checkpoint"
        print(f"nemo-rlvr: {e.signame}: stopped after step {e.step} ({where}). {_resume_hint(cfg)}",
              file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    except KeyboardInterrupt:
        print(f"nemo-rlvr: stopped at once (a second signal). {_resume_hint(cfg)}", file=sys.stderr)
        return 130
    except (RunStopped, CheckpointWriteError) as e:
        print(f"nemo-rlvr: the run stopped: {e}. {_resume_hint(cfg)}", file=sys.stderr)
        return 1
    except Exception as e:
        from nemo_rlvr.dispatch import is_actor_death

        if not is_actor_death(e):
            raise
        print(f"nemo-rlvr: a worker died: {type(e).__name__}: {str(e).strip().splitlines()[0]}. "
              f"{_resume_hint(cfg)}", file=sys.stderr)
        return 1
    finally:
        run.logger.close()
        run.scorer.close()
        if cfg.cluster.mode == "ray":
            import ray

            ray.shutdown()
    _print_summary(cfg.run_dir)
    return 0


def _resume_hint(cfg) -> str:
    """Where the run can continue from, and the command that does it."""
    from nemo_rlvr.checkpoint import find_latest

    latest = find_latest(cfg.run_dir / "checkpoints")
    # a launcher names its own command (its cluster.address is one-off): launch/local.sh, ray.sbatch
    command = os.environ.get("NEMO_RLVR_RESUME_COMMAND") or (
        " ".join(["nemo-rlvr", *sys.argv[1:]]) if sys.argv[1:2] == ["train"] else "the same command")
    if latest is None:
        return f"No complete checkpoint yet: `{command}` starts the run again."
    return f"The newest complete checkpoint is {latest}; `{command}` resumes from it (checkpoint.resume=auto)."


def _print_summary(run_dir: Path) -> None:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    val = [(r["step"], r["val/accuracy"]) for r in rows if "val/accuracy" in r]
    if len(val) >= 2:
        (s0, a0), (s1, a1) = val[0], val[-1]
        print(f"validation accuracy (greedy, held-out): step {s0} {a0:.1%} -> step {s1} {a1:.1%} "
              f"({(a1 - a0) * 100:+.1f} points)")
    hf = run_dir / "final_hf"
    if hf.is_dir():
        print(f"trained model (Hugging Face folder): {hf}")
    print(f"metrics: {path}")


def cmd_eval(args: argparse.Namespace) -> int:
    from nemo_rlvr.build import run_eval

    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.val_source={args.data}")
    if args.env:
        overrides.append(f"env.name={args.env}")
    if args.limit:
        overrides.append(f"data.val_size={args.limit}")
    if args.pass_k:
        overrides.append(f"validation.pass_k=[{', '.join(map(str, args.pass_k))}]")
    metrics = run_eval(Path(args.model), overrides, output=args.output)
    print(format_table(metrics, f"evaluation of {args.model}"))
    if args.output:
        print(f"responses: {args.output}")
    return 0


def format_table(metrics: dict[str, float], title: str) -> str:
    width = max(len(k) for k in metrics)
    lines = [title, f"{'metric':<{width}}  value", f"{'-' * width}  -----"]
    lines += [f"{k:<{width}}  {v:.4f}" if k != "val/prompts" else f"{k:<{width}}  {int(v)}"
              for k, v in metrics.items()]
    return "\n".join(lines)


def cmd_export(args: argparse.Namespace) -> int:
    from nemo_rlvr.checkpoint import export_checkpoint

    out = export_checkpoint(Path(args.checkpoint), Path(args.to))
    print(f"exported {args.checkpoint} -> {out} (a Hugging Face folder: transformers, vLLM)")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from nemo_rlvr.plot import plot_run

    for path in plot_run(Path(args.run_dir), Path(args.out) if args.out else None):
        print(path)
    return 0


def _add_tool_commands(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint or HF folder on held-out prompts (no Ray)")
    p.add_argument("model", help="a checkpoint folder (runs/<name>/checkpoints/step_N) or a HF model folder")
    p.add_argument("overrides", nargs="*", help="key.path=value config overrides (base: the checkpoint's "
                   "config, else the tiny recipe), e.g. generation.max_new_tokens=16")
    p.add_argument("--data", help="held-out prompts: a JSONL/parquet file or 'arithmetic' (data.val_source)")
    p.add_argument("--env", help="default environment for records without 'env' (env.name)")
    p.add_argument("--limit", type=int, help="evaluate the first N prompts (data.val_size)")
    p.add_argument("--pass-k", type=int, nargs="+", help="also sample max(k) per prompt: pass@k for each k")
    p.add_argument("--output", type=Path, help="write one JSON line per greedy response")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("export", help="write a checkpoint as a Hugging Face folder")
    p.add_argument("checkpoint", help="runs/<name>/checkpoints/step_N")
    p.add_argument("--to", required=True, help="new output folder")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("plot", help="PNG plots of reward, accuracy, KL, length, step time from metrics.jsonl")
    p.add_argument("run_dir", help="runs/<name>")
    p.add_argument("--out", help="output folder (default RUN_DIR/plots)")
    p.set_defaults(func=cmd_plot)


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from nemo_rlvr.data.convert import prepare

    src, out = Path(args.input), Path(args.out)
    report = prepare(args.format, src, out, answers=Path(args.answers) if args.answers else None,
                     instruction=args.instruction)
    for line in report.problems:
        print(f"bad row: {line}", file=sys.stderr)
    print(report.summary(src, out))
    return 1 if report.problems else 0


def _add_data_commands(sub) -> None:
    from nemo_rlvr.data.convert import FORMATS

    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser("prepare", help="convert a public dataset file into our records (JSONL)")
    p.add_argument("--from", dest="format", required=True, choices=FORMATS, help="the input's format")
    p.add_argument("input", help="input file: JSONL (.gz ok), a JSON array, parquet, or a save_to_disk folder")
    p.add_argument("--out", required=True, help="output JSONL of records {id, prompt, env, <env fields>}")
    p.add_argument("--answers", help="bfcl: the possible_answer file (default: possible_answer/<same name> "
                   "next to the input)")
    p.add_argument("--instruction", help="text appended to math and code prompts (default: a line on the "
                   "answer format; '' for none)")
    p.set_defaults(func=cmd_data_prepare)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nemo-rlvr", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train with GRPO (default: the tiny CPU recipe)")
    p.add_argument("items", nargs="*", help="[RECIPE.yaml] [key.path=value ...]")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--dry-run", action="store_true", help="check config, model, data, environments and "
                   "the placement plan on the recipe's cluster (cluster.nodes, cluster.gpus_per_node), "
                   "start nothing")
    p.set_defaults(func=cmd_train)
    _add_tool_commands(sub)

    from nemo_rlvr.scoring import cli as env_cli

    p = sub.add_parser("verify", help="score a JSONL file of responses with an environment")
    env_cli.add_verify_args(p)
    p.set_defaults(func=env_cli.verify_main)
    p = sub.add_parser("serve-env", help="serve an environment over HTTP (POST /verify)")
    env_cli.add_serve_args(p)
    p.set_defaults(func=env_cli.serve_main)

    _add_data_commands(sub)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as e:
        print(f"nemo-rlvr: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
