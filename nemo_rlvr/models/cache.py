"""The cached tiny model folder: tokenizer + Qwen2 built from config, warm-started once.

`tiny_model_dir(model_cfg, data_cfg, seed)` returns `<cache>/tiny-<hash>/`, a Hugging
Face folder (safetensors, tokenizer, generation config). The hash covers everything
that shapes the weights, so a second run with the same config skips the warm start.
The folder is built in a temporary sibling and renamed into place: two processes
racing never see a half-written model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from nemo_rlvr.config import DataConfig, ModelConfig

log = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Bump when the tokenizer corpus, model builder or warm start change what they produce."""


def cache_root(model_cfg: ModelConfig) -> Path:
    root = model_cfg.cache_dir or os.environ.get("NEMO_RLVR_CACHE") or "~/.cache/nemo_rlvr"
    return Path(root).expanduser()


def tiny_model_key(model_cfg: ModelConfig, data_cfg: DataConfig, seed: int) -> str:
    spec = {"v": CACHE_VERSION, "tiny": model_cfg.tiny.model_dump(), "warm": model_cfg.warm_start.model_dump(),
            "task": {"source": data_cfg.source, "digits": data_cfg.num_digits, "ops": list(data_cfg.operations)},
            "seed": seed}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def tiny_model_dir(model_cfg: ModelConfig, data_cfg: DataConfig, seed: int) -> Path:
    """Build (once) and return the tiny model folder for this config."""
    out = cache_root(model_cfg) / f"tiny-{tiny_model_key(model_cfg, data_cfg, seed)}"
    if (out / "config.json").is_file():
        log.info("tiny model: reusing cached %s (warm start skipped)", out)
        return out
    import torch

    from nemo_rlvr.data.arithmetic import arithmetic_records
    from nemo_rlvr.models.tiny import build_tiny_model, train_tokenizer
    from nemo_rlvr.models.warm_start import greedy_accuracy, warm_start

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    t0 = time.perf_counter()
    try:
        tok = train_tokenizer(tmp)
        model = build_tiny_model(model_cfg.tiny, tok, seed)
        info: dict[str, float] = {}
        ws = model_cfg.warm_start
        if ws.steps > 0:
            log.info("tiny model: warm start, %d supervised steps (cached for later runs) ...", ws.steps)
            if data_cfg.source != "arithmetic":
                raise ValueError("model.warm_start needs data.source=arithmetic (the built-in task); "
                                 "set model.warm_start.steps=0 for other data.")
            records = arithmetic_records(ws.num_examples, num_digits=data_cfg.num_digits,
                                         operations=data_cfg.operations, seed=seed, split="train")
            threads = torch.get_num_threads()
            torch.set_num_threads(max(1, os.cpu_count() or 1))
            stop = arithmetic_records(200, num_digits=data_cfg.num_digits, operations=data_cfg.operations,
                                      seed=seed + 1, split="train")
            info = warm_start(model, tok, records, ws, seed, stop_records=stop, stop_accuracy=ws.stop_accuracy)
            torch.set_num_threads(threads)
            val = arithmetic_records(200, num_digits=data_cfg.num_digits, operations=data_cfg.operations,
                                     seed=seed, split="val")
            info["warm_start/val_accuracy"] = greedy_accuracy(model, tok, val)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "nemo_rlvr_tiny.json").write_text(json.dumps(info, indent=1))
        try:
            os.replace(tmp, out)
        except OSError:  # another process won the race: use its folder
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("tiny model: built %s in %.1fs %s", out, time.perf_counter() - t0,
             " ".join(f"{k}={v:.3f}" for k, v in info.items()))
    return out
