"""Tiny Hugging Face folders of the causal-LM families users train: Qwen2, Qwen3, Llama (SmolLM2).

Each is built from its transformers config class with random (seeded) weights and saved with
`save_pretrained`, next to a copy of the project's tiny tokenizer, so it loads like a hub
download: `AutoModelForCausalLM.from_pretrained(folder)`, `AutoTokenizer.from_pretrained(folder)`
(under model_type qwen2 the latter is not the saved tokenizer: tests/integration/test_model_families.py).
Dims follow the real models' shape rules at toy size: grouped-query attention (4 heads, 2 KV
heads), Qwen2's q/k/v biases, Qwen3's q/k norms and a head_dim that is not hidden/heads (as in
Qwen3-0.6B: 16 x 128 != 1024), a vocabulary padded past the tokenizer (Qwen's 151936 > len(tok)).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from nemo_rlvr.models.tiny import EOS, PAD

FAMILIES = ("qwen2", "qwen3", "llama")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
VOCAB_MULTIPLE = 64
"""Embedding rows are the tokenizer's length rounded up to this (rows no token ever uses)."""


def build_family_model(family: str, *, tied: bool, tokenizer_dir: str | Path, out_dir: str | Path,
                       seed: int = 0) -> Path:
    """Write a tiny random `family` model (tied or untied embeddings) and the tokenizer to `out_dir`."""
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

    if family not in FAMILIES:
        raise ValueError(f"family={family!r}; known: {', '.join(FAMILIES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (Path(tokenizer_dir) / name).is_file():
            shutil.copy(Path(tokenizer_dir) / name, out / name)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    config_cls, extra = {"qwen2": (Qwen2Config, {}), "qwen3": (Qwen3Config, {"head_dim": 16}),
                         "llama": (LlamaConfig, {})}[family]
    config = config_cls(
        vocab_size=-(-tok.get_vocab_size() // VOCAB_MULTIPLE) * VOCAB_MULTIPLE, hidden_size=32,
        intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128, tie_word_embeddings=tied, pad_token_id=tok.token_to_id(PAD),
        eos_token_id=tok.token_to_id(EOS), bos_token_id=None, **extra)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(str(out))
    return out
