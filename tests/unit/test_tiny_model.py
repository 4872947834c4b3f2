"""The tiny model the project builds: tokenizer, deterministic init, cache, batched generation."""

from __future__ import annotations

import logging

import pytest
import torch

from nemo_rlvr.config import DataConfig, ModelConfig, TinyModelConfig, WarmStartConfig
from nemo_rlvr.data.arithmetic import arithmetic_records
from nemo_rlvr.models.tiny import ALPHABET, SPECIAL_TOKENS, build_tiny_model, tiny_model_dir, train_tokenizer
from nemo_rlvr.models.warm_start import greedy_accuracy, warm_start


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def model(tok):
    return build_tiny_model(TinyModelConfig(), tok, seed=0)


def _left_pad(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    L = max(map(len, prompts))
    ids = torch.tensor([[pad] * (L - len(p)) + p for p in prompts])              # [N, L]
    attn = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])    # [N, L]
    return ids, attn


# ---------------------------------------------------------------- tokenizer


@pytest.mark.parametrize("text", ["12+34=46", "7*8=56", "12-34=-22", "Answer: 46",
                                  " the answer is  46.\nDone!", "Question: what is 12 plus 34?"])
def test_tokenizer_round_trips(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text


def test_digits_are_single_tokens_and_nothing_is_added(tok):
    assert len(tok.encode("123")) == 3
    assert tok.convert_ids_to_tokens(tok.encode("12+34=")) == ["1", "2", "+", "3", "4", "="]
    # No BOS/EOS from add_special_tokens (there is no post-processor).
    assert tok.encode("12+34=", add_special_tokens=True) == tok.encode("12+34=", add_special_tokens=False)
    assert tok.bos_token is None


def test_special_tokens_and_vocab(tok, tmp_path):
    assert tok.convert_ids_to_tokens(list(range(5))) == list(SPECIAL_TOKENS)
    assert (tok.pad_token, tok.eos_token) == ("<|pad|>", "<|endoftext|>")
    assert tok.pad_token_id != tok.eos_token_id
    # vocab_size 64 is below the 5 specials + 97-character alphabet, which are always kept.
    assert len(tok) == len(SPECIAL_TOKENS) + len(ALPHABET) == 102
    assert tok.convert_ids_to_tokens(tok.encode("é")) == ["<|unk|>"]
    assert len(train_tokenizer(tmp_path, vocab_size=128)) == 128  # room for merges: they are learned


def test_saved_folder_loads_with_auto_tokenizer(tok, tmp_path):
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.encode("Answer: 12+34=46") == tok.encode("Answer: 12+34=46")
    assert (loaded.pad_token_id, loaded.eos_token_id) == (tok.pad_token_id, tok.eos_token_id)


def test_chat_template(tok):
    msgs = [{"role": "user", "content": "12+34="}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\n12+34=<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") and tok.decode(ids) == text


# ---------------------------------------------------------------- model


def test_build_is_deterministic_and_leaves_global_rng_alone(tok, model):
    state = torch.random.get_rng_state()
    again = build_tiny_model(TinyModelConfig(), tok, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (n, p), (_, q) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(p, q), n
    other = build_tiny_model(TinyModelConfig(), tok, seed=1)
    assert not torch.equal(other.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_model_shape(tok, model):
    # 4 layers * (4*128*128 attn + 3*128 qkv bias + 3*128*256 mlp + 2*128 norms) = 657,920,
    # + 102*128 tied embeddings + 128 final norm = 671,104.
    assert sum(p.numel() for p in model.parameters()) == 671_104
    assert model.config.tie_word_embeddings and model.config.vocab_size == len(tok)
    assert (model.config.pad_token_id, model.config.eos_token_id) == (tok.pad_token_id, tok.eos_token_id)
    assert model.dtype == torch.float32


def test_batched_left_padded_greedy_matches_unbatched(tok, model):
    texts = ["1+2=", "12+34=", "Answer:", "99*99="]
    prompts = [tok.encode(t) for t in texts]
    ids, attn = _left_pad(prompts, tok.pad_token_id)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    batched = model.generate(input_ids=ids, attention_mask=attn, **kw)[:, ids.shape[1]:]
    for p, row in zip(prompts, batched):
        single = model.generate(input_ids=torch.tensor([p]), **kw)[0, len(p):]
        n = len(single)
        assert row[:n].tolist() == single.tolist()
        assert (row[n:] == tok.pad_token_id).all()  # finished early: padded after eos


def test_generate_logprobs_match_right_padded_forward(tok, model):
    """The numerics contract: sampling-time log-probs == learner forward log-probs (fp32)."""
    prompts = [tok.encode(t) for t in ["1+2=", "12+34=", "Answer: 7"]]
    ids, attn = _left_pad(prompts, tok.pad_token_id)
    torch.manual_seed(0)
    out = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=5, do_sample=True,
                         top_k=0, top_p=1.0, temperature=1.0, return_dict_in_generate=True,
                         output_logits=True, pad_token_id=tok.pad_token_id, eos_token_id=-1)
    resp = out.sequences[:, ids.shape[1]:]                                       # [N, T] no eos stop
    logp_gen = torch.log_softmax(torch.stack(out.logits, 1).float(), -1)         # [N, T, V]
    logp_gen = logp_gen.gather(-1, resp[..., None])[..., 0]                      # [N, T]
    seqs = [p + r.tolist() for p, r in zip(prompts, resp)]
    M = max(map(len, seqs))
    x = torch.tensor([s + [tok.pad_token_id] * (M - len(s)) for s in seqs])     # [N, M] right-padded
    a = torch.tensor([[1] * len(s) + [0] * (M - len(s)) for s in seqs])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=x, attention_mask=a).logits.float(), -1)  # [N, M, V]
    for i, p in enumerate(prompts):
        T = resp.shape[1]
        logp_fwd = logp[i, len(p) - 1 : len(p) - 1 + T].gather(-1, resp[i, :, None])[:, 0]  # [T]
        # eager attention measured ~1e-6 here (sdpa ~1e-5 on a warm-started model)
        torch.testing.assert_close(logp_fwd, logp_gen[i], atol=1e-5, rtol=0)


# ---------------------------------------------------------------- warm start and cache


def test_warm_start_lowers_loss_and_is_deterministic(tok):
    recs = arithmetic_records(64, num_digits=1, operations=["+"], seed=0, split="train")
    cfg = WarmStartConfig(steps=15, batch_size=16, lr=3e-3)
    m1, m2 = (build_tiny_model(TinyModelConfig(num_layers=1), tok, seed=0) for _ in range(2))
    first = warm_start(m1, tok, recs, cfg.model_copy(update={"steps": 1}), seed=0)["warm_start/loss"]
    last = warm_start(m2, tok, recs, cfg, seed=0)["warm_start/loss"]
    assert last < first - 0.5  # from ~ln(102)=4.6 to below 4
    m3 = build_tiny_model(TinyModelConfig(num_layers=1), tok, seed=0)
    warm_start(m3, tok, recs, cfg, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(m2.parameters(), m3.parameters()))


def test_greedy_accuracy_does_not_depend_on_batching(tok, model):
    recs = arithmetic_records(6, num_digits=1, operations=["+"], seed=0, split="train")
    recs[0] = recs[0] | {"answer": "never"}
    acc = greedy_accuracy(model, tok, recs, batch_size=4)
    assert acc == greedy_accuracy(model, tok, recs, batch_size=1)
    assert 0.0 <= acc <= 5 / 6


def test_tiny_model_dir_builds_once_then_reuses(tmp_path, caplog):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = ModelConfig(cache_dir=str(tmp_path), tiny=TinyModelConfig(num_layers=1),
                      warm_start=WarmStartConfig(steps=2, batch_size=8, num_examples=16))
    data = DataConfig(val_size=8)
    with caplog.at_level(logging.INFO, logger="nemo_rlvr.models.tiny"):
        path = tiny_model_dir(cfg, data, seed=0)
        mtime = (path / "model.safetensors").stat().st_mtime_ns
        again = tiny_model_dir(cfg, data, seed=0)
    assert again == path and path.parent == tmp_path and path.name.startswith("tiny-")
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime
    # the first call builds (after announcing the warm start), the second reuses the folder
    assert [r.message.split(" ")[2] for r in caplog.records] == ["warm", "built", "reused"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp folder left
    for name in ("config.json", "generation_config.json", "tokenizer.json", "nemo_rlvr_tiny.json"):
        assert (path / name).is_file(), name
    model = AutoModelForCausalLM.from_pretrained(path)
    assert AutoTokenizer.from_pretrained(path).eos_token_id == model.generation_config.eos_token_id
    # The key covers the seed, the warm start and the task.
    assert tiny_model_dir(cfg, data, seed=1) != path
    assert tiny_model_dir(cfg, data.model_copy(update={"operations": ("-",)}), seed=0) != path


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NEMO_RLVR_CACHE", str(tmp_path / "env-cache"))
    path = tiny_model_dir(ModelConfig(tiny=TinyModelConfig(num_layers=1)), DataConfig(), seed=0)
    assert path.parent == tmp_path / "env-cache"


def test_warm_start_stops_on_accuracy(tok, monkeypatch):
    import nemo_rlvr.models.warm_start as ws_mod

    recs = arithmetic_records(16, num_digits=1, operations=["+"], seed=0, split="train")
    model = build_tiny_model(TinyModelConfig(num_layers=1), tok, seed=0)
    cfg = WarmStartConfig(steps=50, batch_size=4)
    with pytest.raises(ValueError, match="stop_records"):
        warm_start(model, tok, recs, cfg, seed=0, stop_accuracy=0.5)
    monkeypatch.setattr(ws_mod, "greedy_accuracy", lambda *a, **k: 0.75)
    out = warm_start(model, tok, recs, cfg, seed=0, stop_records=recs[:2], stop_accuracy=0.5, eval_every=3)
    assert out["warm_start/steps"] == 3 and out["warm_start/stop_accuracy"] == 0.75


def test_tiny_model_dir_race_loser_uses_the_winners_folder(tmp_path, monkeypatch):
    import os
    import shutil

    def rename_after_another_process_won(src, dst):
        shutil.copytree(src, dst)  # the other process's finished folder
        raise OSError(39, "Directory not empty")

    monkeypatch.setattr(os, "rename", rename_after_another_process_won)
    cfg = ModelConfig(cache_dir=str(tmp_path), tiny=TinyModelConfig(num_layers=1))
    path = tiny_model_dir(cfg, DataConfig(), seed=0)
    assert (path / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # the loser's temp folder is gone


def test_tokenizer_with_merges_trains_the_same_in_separate_processes(tmp_path):
    """The tools recipe's vocab (256: merges) must give every machine the same tokenizer: a fresh
    process each (another hash seed, parallel BPE training), byte-identical tokenizer.json."""
    import os
    import subprocess
    import sys

    code = "import sys; from nemo_rlvr.models.tiny import train_tokenizer; train_tokenizer(sys.argv[1], vocab_size=256)"
    outs = []
    for i, seed in enumerate(("1", "2")):
        out = tmp_path / str(i)
        subprocess.run([sys.executable, "-c", code, str(out)], check=True, timeout=120,
                       env={**os.environ, "PYTHONHASHSEED": seed, "TOKENIZERS_PARALLELISM": "true"})
        outs.append((out / "tokenizer.json").read_bytes())
    assert outs[0] == outs[1] and b'"merges"' in outs[0]
