"""`nemo-rlvr verify` and `nemo-rlvr serve-env`: score JSONL records offline, or serve an env over HTTP.

    nemo-rlvr verify --env math --input in.jsonl --output out.jsonl [--workers N] [--timeout-s S]
    nemo-rlvr serve-env --env math --port 8000 [--host 127.0.0.1] [--workers N] [--max-body-mb 8]
                        [--max-queue 4096]

The main CLI (nemo_rlvr/cli.py) mounts these with `add_verify_args(sub)` / `verify_main(args)`
and `add_serve_args(sub)` / `serve_main(args)`; `python -m nemo_rlvr.scoring.cli verify ...`
runs them on their own. User mistakes (missing input, unknown env, bad module) print one
paragraph naming the flag and the fix, and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

EXIT_USAGE = 2
BATCH_LINES = 256
"""Lines read, scored and written per step: memory stays bounded on large files."""


class UsageError(Exception):
    """A mistake in the command line; the message names the flag and the fix."""


def _positive_float(text: str) -> float:
    v = float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return v


def _non_negative_int(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def _env_option(text: str) -> tuple[str, Any]:
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. timeout_s=5)")
    try:
        return key.strip(), yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        return key.strip(), raw


def _add_env_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", required=True, help="environment for records without an 'env' field "
                                                "(math, code, tool_call, instruction, arithmetic, ...)")
    p.add_argument("--env-module", default=None, metavar="MODULE",
                   help="module to import first; it registers your own envs with @register_env")
    p.add_argument("--workers", type=_non_negative_int, default=os.cpu_count() or 1, metavar="N",
                   help="verifier worker processes (default: CPU count); 0 scores in this process")
    p.add_argument("--timeout-s", type=_positive_float, default=10.0, metavar="S",
                   help="per-record time limit in seconds; a record past it scores 0 with error 'timeout'")
    p.add_argument("--max-retries", type=_non_negative_int, default=1, metavar="K",
                   help="retries of a record whose worker crashed")
    p.add_argument("--env-option", action="append", default=[], type=_env_option, metavar="KEY=VALUE",
                   help="constructor argument of the --env environment (repeatable; VALUE is YAML), e.g. "
                        "--env-option timeout_s=5 --env-option max_parallel=1 for code")


def add_verify_args(p: argparse.ArgumentParser) -> None:
    p.description = ('Score a JSONL file of records {"id", "env", "prompt", "response", ...env fields}; '
                     "each output line is the input plus reward, reward_components and error, "
                     "same order.")
    p.add_argument("--input", required=True, metavar="IN.jsonl", help="records to score ('-' for stdin)")
    p.add_argument("--output", required=True, metavar="OUT.jsonl",
                   help="where to write them ('-' for stdout)")
    _add_env_args(p)


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.description = ("Serve an environment over HTTP: POST /verify takes one record, {\"records\": [...]}, "
                     "or a NeMo Gym verify request; GET /health.")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--max-body-mb", type=_positive_float, default=8.0, metavar="MB",
                   help="largest request body in MiB (default 8); a larger one gets HTTP 413")
    p.add_argument("--max-queue", type=_positive_int, default=4096, metavar="N",
                   help="most samples queued or being scored (default 4096); past it a request gets "
                        "HTTP 503 with Retry-After, and a batch of more than N records gets 413")
    _add_env_args(p)


def _env_config(args: argparse.Namespace) -> Any:
    from nemo_rlvr.config import EnvConfig

    return EnvConfig(name=args.env, module=args.env_module, num_workers=args.workers,
                     timeout_s=args.timeout_s, max_retries=args.max_retries, options=dict(args.env_option))


def check_env(name: str, module: str | None, options: dict[str, Any] | None = None) -> None:
    """Raise UsageError unless `module` imports, `name` is a registered environment, and its
    constructor takes `options` (--env-option). The same check as training's (envs.base), in
    terms of this command's flags."""
    from nemo_rlvr.envs.registry import EnvOptionError, UnknownEnvError, check_env_options, env_class

    try:
        env_class(name, module, name_key="--env", module_key="--env-module")
        if options:
            check_env_options(name, module, options)
    except EnvOptionError as e:
        raise UsageError(f"--env-option: {e}") from None
    except UnknownEnvError as e:
        raise UsageError(str(e)) from None


# ------------------------------------------------------------------ verify


def verify_main(args: argparse.Namespace) -> int:
    """Score --input into --output; 0 when every line was written (malformed ones included)."""
    try:
        return _verify(args)
    except UsageError as e:
        print(f"nemo-rlvr verify: {e}", file=sys.stderr)
        return EXIT_USAGE


def _verify(args: argparse.Namespace) -> int:
    from nemo_rlvr.scoring.make import make_scorer, score_records
    from nemo_rlvr.scoring.records import RecordError, failed_record, parse_line

    if args.input != "-" and not os.path.isfile(args.input):
        raise UsageError(f"--input {args.input!r} does not exist or is not a file. Pass a JSONL file with "
                         f'one record {{"id", "env", "prompt", "response", ...env fields}} per line.')
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if args.output != "-" and not os.path.isdir(out_dir):
        raise UsageError(f"--output {args.output!r}: folder {out_dir!r} does not exist. Create it first, "
                         f"or write somewhere else.")
    check_env(args.env, args.env_module, dict(args.env_option))
    t0 = time.perf_counter()
    scorer = make_scorer(_env_config(args))
    n = errors = 0
    try:
        with _open_in(args.input) as fin, _open_out(args.output) as fout:
            for batch in _batches(fin, BATCH_LINES):
                outputs: list[dict[str, Any] | None] = [None] * len(batch)
                good: list[tuple[int, dict[str, Any]]] = []
                for k, (lineno, line) in enumerate(batch):
                    try:
                        good.append((k, parse_line(line)))
                    except RecordError as e:
                        outputs[k] = failed_record(line, f"line {lineno}: {e}")
                scored = score_records([r for _, r in good], args.env, scorer)
                for (k, _), rec in zip(good, scored):
                    outputs[k] = rec
                for rec in outputs:
                    fout.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    errors += rec["error"] is not None
                n += len(batch)
    finally:
        scorer.close()
    dest = "stdout" if args.output == "-" else args.output
    print(f"nemo-rlvr verify: {n} records ({errors} with errors) scored with env {args.env!r} "
          f"in {time.perf_counter() - t0:.1f}s -> {dest}", file=sys.stderr)
    return 0


def _batches(fin: IO[str], size: int) -> Iterator[list[tuple[int, str]]]:
    """(line number, line) batches; blank lines are not records and are skipped."""
    batch: list[tuple[int, str]] = []
    for lineno, line in enumerate(fin, 1):
        line = line.rstrip("\n")
        if not line.strip():
            continue
        batch.append((lineno, line))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@contextlib.contextmanager
def _open_in(path: str) -> Iterator[IO[str]]:
    if path == "-":
        yield sys.stdin
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        yield f


@contextlib.contextmanager
def _open_out(path: str) -> Iterator[IO[str]]:
    """stdout, or a temporary file renamed over `path` at the end: no half-written output."""
    if path == "-":
        yield sys.stdout
        return
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ------------------------------------------------------------------ serve-env


def serve_main(args: argparse.Namespace) -> int:
    """Run the env server until interrupted."""
    try:
        check_env(args.env, args.env_module, dict(args.env_option))
    except UsageError as e:
        print(f"nemo-rlvr serve-env: {e}", file=sys.stderr)
        return EXIT_USAGE
    import uvicorn

    from nemo_rlvr.scoring.server import create_app

    app = create_app(args.env, _env_config(args), max_body_mb=args.max_body_mb, max_queue=args.max_queue)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nemo_rlvr.scoring.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    add_verify_args(sub.add_parser("verify", help="score a JSONL file of records"))
    add_serve_args(sub.add_parser("serve-env", help="serve an environment over HTTP"))
    args = parser.parse_args(argv)
    return verify_main(args) if args.command == "verify" else serve_main(args)


if __name__ == "__main__":
    sys.exit(main())
