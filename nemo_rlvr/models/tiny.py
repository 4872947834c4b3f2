"""The tiny model the project builds itself: a local BPE tokenizer, a small Qwen2, and its cache.

Nothing here touches the Hugging Face hub. The tokenizer is trained in a fraction of a second
on a procedural corpus; the model is a randomly initialised Qwen2 (seeded), optionally
warm-started on the built-in task (arithmetic: models/warm_start.py; kv_store, the multi-turn
tool task: models/tool_warm_start.py) so RL starts from a policy that is right part of the
time. `tiny_model_dir` builds it once and caches a plain HF folder that every backend (HF,
vLLM, the learner) loads with `from_pretrained`:

    ModelConfig + DataConfig + seed --hash--> <cache>/tiny-<hash>/
        tokenizer  (train_tokenizer)         tokenizer.json, tokenizer_config.json, chat_template.jinja
        model      (build_tiny_model)        config.json, model.safetensors, generation_config.json
        warm start (warm_start, if steps>0)  same files, trained weights; nemo_rlvr_tiny.json: metrics

Tokenizer: digits are always single tokens (so arithmetic is character level, the model
never has to learn what "46" as one token means), the alphabet is printable ASCII plus
newline (anything else is <|unk|>), spaces become "▁" (Metaspace, never prepended) so
decode(encode(s)) == s for ASCII text. No BOS and no post-processor: encode() adds nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import string
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from nemo_rlvr.config import WARM_START_SOURCES, DataConfig, ModelConfig, TinyModelConfig, WarmStartConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM

log = logging.getLogger(__name__)

CACHE_VERSION = 2
"""Bump when the tokenizer, model or warm-start recipe changes: old caches are not reused."""
PAD, EOS, IM_START, IM_END, UNK = "<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|unk|>"
SPECIAL_TOKENS = (PAD, EOS, IM_START, IM_END, UNK)
"""Ids 0..4 in this order."""
ALPHABET = tuple(c for c in string.printable if c not in " \t\r\x0b\x0c") + ("\t", "▁")
"""Base characters (space is "▁"): 94 printable ASCII, newline, tab, "▁". 97 in all."""
MAX_POSITIONS = 512
CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{ '<|im_start|>system\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\n' }}{% endif %}"
    "{{ '<tools>' }}"
    "{%- for tool in tools %}{% set f = tool['function'] if tool['function'] is defined else tool %}"
    "{{ '\n' + f['name'] + '(' + ((f['parameters'] or {})['properties'] or {}) | join(',') + ')' }}"
    "{%- if f['description'] %}{{ ': ' + f['description'] }}{% endif %}"
    "{%- endfor %}"
    "{{ '\n</tools><|im_end|>\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (tools and loop.first and message['role'] == 'system') %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') }}"
    "{%- for call in message['tool_calls'] or [] %}"
    "{% set c = call['function'] if call['function'] is defined else call %}"
    "{{ '<tool_call>' + {'name': c['name'], 'arguments': c['arguments']} | tojson(separators=(',', ':'))"
    " + '</tool_call>' }}"
    "{%- endfor %}"
    "{{ '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""ChatML: <|im_start|>user\n...<|im_end|>\n<|im_start|>assistant\n. With `tools`, a system turn
lists them first, one `name(arg,...): description` line each inside <tools>...</tools> (short: the
tiny model reads every prompt token each turn); an assistant message's `tool_calls` render as
Hermes/Qwen `<tool_call>{"name":...,"arguments":{...}}</tool_call>` blocks (compact JSON) after its
content, and `tool` messages as turns of role "tool". Without tools and tool calls the text is
the plain ChatML above."""
WARM_START_EASY_FRACTION = 0.25
"""Share of easier (fewer-digit) problems in the warm-start data (data/arithmetic.py)."""
TOOL_MAX_NEW_TOKENS = 24
"""Tool warm start: tokens per turn of the greedy episodes the stop accuracy runs (a `get` call is
15 tokens at vocab_size 256, 62 at 64: data/kv_store.py)."""
ATTN_IMPLEMENTATION = "eager"
"""Eager attention: see `build_tiny_model` for why (logprob agreement under padding)."""

_WORDS = ("the answer is what of and a to in it you we this that for on with as be are "
          "question solve compute sum add plus minus times number result step think final "
          "user assistant system hello world yes no true false first then so").split()
_TOOL_TEXT = ("<|im_start|>system\n<tools>\nget(key): read a key\n</tools><|im_end|>\n"
              "<|im_start|>user\nsum:{k},{j}<|im_end|>\n<|im_start|>assistant\n"
              '<tool_call>{{"name":"get","arguments":{{"key":"{k}"}}}}</tool_call><|endoftext|><|im_end|>\n'
              "<|im_start|>tool\n{a}<|im_end|>\n<|im_start|>assistant\n"
              '<tool_call>{{"name":"get","arguments":{{"key":"{j}"}}}}</tool_call><|endoftext|><|im_end|>\n'
              "<|im_start|>tool\n{b}<|im_end|>\n<|im_start|>assistant\n{c}<|endoftext|>")
"""A kv_store episode (data/kv_store.py) as the tiny model sees it, for the corpus."""


def _corpus(n: int = 2000) -> list[str]:
    """A procedural training corpus: arithmetic, short English, chat markup, tool-use episodes
    (deterministic). Merges come from it only when vocab_size > 102 (the default 64 keeps every
    character its own token)."""
    import random

    rng = random.Random(1234)
    lines = []
    for i in range(n):
        a, b = rng.randrange(1000), rng.randrange(1000)
        op = "+-*"[i % 3]
        lines.append(f"{a}{op}{b}=")
        words = rng.sample(_WORDS, 6)
        lines.append(" ".join(words).capitalize() + rng.choice(".?!"))
        lines.append(f"Question: what is {a} {('plus', 'minus', 'times')[i % 3]} {b}? Answer: {a + b}")
        lines.append(f"{IM_START}user\n{a}{op}{b}={IM_END}\n{IM_START}assistant\n{a + b}{IM_END}\n")
        k, j = rng.sample(string.ascii_lowercase, 2)
        lines.append(_TOOL_TEXT.format(k=k, j=j, a=a % 10, b=b % 100, c=a % 10 + b % 100))
    return lines


def train_tokenizer(out_dir: str | os.PathLike[str], *, vocab_size: int = TinyModelConfig().vocab_size,
                    ) -> PreTrainedTokenizerFast:
    """Train the local BPE tokenizer, save it to `out_dir` (HF layout) and return it.

    `vocab_size` is a target: the 5 special tokens and the 97-character alphabet are always
    kept, merges fill the rest: len(tokenizer) == max(vocab_size, 102).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True),
        pre_tokenizers.Digits(individual_digits=True),
        # runs of punctuation are words of their own (merges may join them: '":"', '"}}</'),
        # never glued to letters, so a key "a" inside a call is the same token as in the prompt
        pre_tokenizers.Split(Regex(r"[^A-Za-z0-9_\s▁]+"), behavior="isolated"),
    ])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=list(ALPHABET), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK,
        extra_special_tokens=[IM_START, IM_END], model_max_length=MAX_POSITIONS,
        padding_side="right", clean_up_tokenization_spaces=False)
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(str(out_dir))
    return hf


def build_tiny_model(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast, seed: int) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 in fp32; the same (cfg, tokenizer, seed) gives the same weights.

    Attention is "eager": the log-probs of a batched left-padded `generate` and of a
    right-padded full forward over the same tokens then agree to fp32 rounding. Measured
    on a warm-started model, 68 prompts of mixed lengths, max |diff| greedy / sampled:
    eager 1.3e-6 / 1.9e-6, sdpa 4.0e-6 / 9.3e-6 (tests/unit/test_tiny_model.py checks
    1e-5). The global torch RNG is left untouched.
    """
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    if cfg.hidden_size % cfg.num_heads:
        raise ValueError(f"model.tiny.hidden_size={cfg.hidden_size} must be a multiple of "
                         f"model.tiny.num_heads={cfg.num_heads}.")
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads, max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None, use_cache=True)
    config._attn_implementation = ATTN_IMPLEMENTATION
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config).float()
    model.generation_config = GenerationConfig(
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        do_sample=False)
    return model.eval()


def cache_root(cache_dir: str | os.PathLike[str] | None) -> Path:
    """Where built models are cached: `cache_dir` (model.cache_dir), else $NEMO_RLVR_CACHE, else
    ~/.cache/nemo_rlvr (the tiny models here, packaged models in models/packaged.py)."""
    root = cache_dir or os.environ.get("NEMO_RLVR_CACHE") or Path.home() / ".cache" / "nemo_rlvr"
    return Path(root).expanduser()


def _cache_key(model_cfg: ModelConfig, data_cfg: DataConfig, seed: int) -> dict[str, object]:
    """What the cached weights depend on (the task and warm start only when it runs)."""
    key: dict[str, object] = {"version": CACHE_VERSION, "tiny": model_cfg.tiny.model_dump(mode="json"),
                              "seed": seed}
    if model_cfg.warm_start.steps > 0:
        key["warm_start"] = model_cfg.warm_start.model_dump(mode="json")
        if data_cfg.source == "kv_store":
            key["task"] = {"source": data_cfg.source, "system_prompt": data_cfg.system_prompt,
                           "max_new_tokens": TOOL_MAX_NEW_TOKENS}
        else:
            key["warm_start"]["easy_fraction"] = WARM_START_EASY_FRACTION
            key["task"] = {"source": data_cfg.source, "num_digits": data_cfg.num_digits,
                           "operations": list(data_cfg.operations)}
    return key


def tiny_model_dir(model_cfg: ModelConfig, data_cfg: DataConfig, seed: int) -> Path:
    """The cached HF folder of the tiny model for these configs; built (once) if missing.

    <cache>/tiny-<hash>, cache = model.cache_dir, $NEMO_RLVR_CACHE or ~/.cache/nemo_rlvr.
    With model.warm_start.steps > 0 the folder holds the warm-started weights. The folder
    is written under a temporary name and renamed into place, so a reader never sees a
    half-written one; two processes racing both build, and the loser discards its copy.
    """
    t0 = time.perf_counter()
    key = _cache_key(model_cfg, data_cfg, seed)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    root = cache_root(model_cfg.cache_dir)
    final = root / f"tiny-{digest}"
    if (final / "config.json").is_file():
        log.info("tiny model: reused cache %s (%.2f s)", final, time.perf_counter() - t0)
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tiny-{digest}-", dir=root))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the cache may be shared
    try:
        metrics = _build_into(tmp, model_cfg, data_cfg, seed)
        (tmp / "nemo_rlvr_tiny.json").write_text(json.dumps({"key": key, "metrics": metrics}, indent=2))
        try:
            os.rename(tmp, final)  # atomic; fails if another process got there first
        except OSError:
            if not (final / "config.json").is_file():
                raise
            log.info("tiny model: another process built %s first; using it", final)
            return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("tiny model: built %s in %.1f s (warm start: %d steps, %s)", final, time.perf_counter() - t0,
             model_cfg.warm_start.steps, ", ".join(f"{k}={v:.3g}" for k, v in metrics.items()) or "none")
    return final


def _build_into(out: Path, model_cfg: ModelConfig, data_cfg: DataConfig, seed: int) -> dict[str, float]:
    tokenizer = train_tokenizer(out, vocab_size=model_cfg.tiny.vocab_size)
    model = build_tiny_model(model_cfg.tiny, tokenizer, seed)
    metrics: dict[str, float] = {}
    ws = model_cfg.warm_start
    if ws.steps > 0:
        if data_cfg.source not in WARM_START_SOURCES:
            raise ValueError(f"model.warm_start.steps={ws.steps} needs a built-in task (data.source="
                             f"{' or '.join(WARM_START_SOURCES)}), got data.source={data_cfg.source!r}; "
                             f"set model.warm_start.steps=0.")
        log.info("tiny model: warm start, up to %d supervised steps (cached for later runs) ...", ws.steps)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # 2 threads on 2 shared cores ran 10-30x slower whenever anything else ran
        try:
            if data_cfg.source == "kv_store":
                metrics = _warm_start_tools(model, out, ws, data_cfg, seed)
            else:
                metrics = _warm_start_arithmetic(model, tokenizer, ws, data_cfg, seed)
        finally:
            torch.set_num_threads(threads)
    model.save_pretrained(out)
    return metrics


def _warm_start_arithmetic(model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerFast, ws: WarmStartConfig,
                           data_cfg: DataConfig, seed: int) -> dict[str, float]:
    from nemo_rlvr.data.arithmetic import arithmetic_records, warm_start_records
    from nemo_rlvr.models.warm_start import greedy_accuracy, warm_start

    records = warm_start_records(ws.num_examples, num_digits=data_cfg.num_digits,
                                 operations=data_cfg.operations, seed=seed,
                                 easy_fraction=WARM_START_EASY_FRACTION)
    # Held-out train problems to stop on: records are prefix-stable, so the ones after
    # the first num_examples were not trained on (unless the train split is that small).
    stop_records = arithmetic_records(ws.num_examples + ws.stop_eval_size, num_digits=data_cfg.num_digits,
                                      operations=data_cfg.operations, seed=seed,
                                      split="train")[ws.num_examples:]
    metrics = warm_start(model, tokenizer, records, ws, seed, stop_records=stop_records,
                         stop_accuracy=ws.stop_accuracy, eval_every=ws.stop_eval_every)
    try:
        val = arithmetic_records(data_cfg.val_size, num_digits=data_cfg.num_digits,
                                 operations=data_cfg.operations, seed=data_cfg.shuffle_seed, split="val")
    except ValueError:  # a task too small for val_size: the run itself will say so
        val = []
    if val:
        metrics["warm_start/val_accuracy"] = greedy_accuracy(model, tokenizer, val)
    return metrics


def _warm_start_tools(model: Qwen2ForCausalLM, out: Path, ws: WarmStartConfig, data_cfg: DataConfig,
                      seed: int) -> dict[str, float]:
    """Scripted kv_store episodes (models/tool_warm_start.py); the stop accuracy is greedy episode
    success on held-out training prompts, the same records' later part (prefix-stable).

    The episodes are tokenized by the tokenizer as every backend loads it from the finished folder
    (AutoTokenizer next to the model's config.json: transformers then picks Qwen2's tokenizer class,
    which drops newlines when it encodes, tests/integration/test_model_families.py), not by the
    object train_tokenizer returned: trained on other ids, the warm start measured 31 % in memory
    and 2 % once the run loaded it."""
    from transformers import AutoTokenizer

    from nemo_rlvr.data.dataset import to_prompts
    from nemo_rlvr.data.kv_store import MAX_TURNS, kv_store_records
    from nemo_rlvr.envs.registry import get_env
    from nemo_rlvr.models.tool_warm_start import tool_warm_start

    model.config.save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    records = kv_store_records(ws.num_examples + ws.stop_eval_size, seed=seed, split="train")
    prompts = to_prompts(records, tokenizer, default_env="kv_store", chat_template=True,
                         system_prompt=data_cfg.system_prompt)
    env = get_env("kv_store")
    return tool_warm_start(model, tokenizer, prompts[: ws.num_examples], lambda name: env, ws, seed,
                           stop_prompts=prompts[ws.num_examples :], max_turns=MAX_TURNS,
                           max_new_tokens=TOOL_MAX_NEW_TOKENS, max_episode_tokens=MAX_POSITIONS)
