"""Any HF causal-LM folder of the families users train loads, scores, trains, exports and syncs.

Qwen2, Qwen3 and Llama (SmolLM2 is a Llama), each with tied and untied embeddings, built tiny
from their config classes (tests/helpers/model_families.py). Per case, on plain objects (no Ray):
learner log-probs (packed and padded) == a plain transformers forward; one train step changes
every weight; save_hf round-trips (tied stays tied); an HFGenerator of the original folder,
synced with the learner's weight buckets, scores like the learner. All fp32 CPU, atol 1e-5.
Texts are encoded with the folder's tokenizer.json itself (`tokenizers`), not AutoTokenizer:
see test_tokenizer_survives_auto_tokenizer_and_save_hf for why.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from nemo_rlvr.config import AlgorithmConfig, LearnerConfig
from nemo_rlvr.learner.packing import TrainBatch, collate
from nemo_rlvr.learner.policy import PolicyWorker
from nemo_rlvr.models.tiny import EOS, PAD
from nemo_rlvr.rollout.hf import HFGenerator
from nemo_rlvr.types import Prompt, Sample, SamplingParams
from tests.helpers.model_families import FAMILIES, build_family_model

CASES = [(family, tied) for family in FAMILIES for tied in (True, False)]
ATOL = 1e-5
TEXTS = (("12+34=", "46"), ("7+8=", "15 is the answer"), ("99+1=", "100"), ("3*4=", "12."))
ADV = (1.0, -1.0, 0.5, -0.5)  # nonzero, both signs: the step must move every sequence


@pytest.fixture(scope="module", params=CASES, ids=[f"{f}-{'tied' if t else 'untied'}" for f, t in CASES])
def case(request, tiny_model_dir, tmp_path_factory):
    from tokenizers import Tokenizer

    family, tied = request.param
    path = build_family_model(family, tied=tied, tokenizer_dir=tiny_model_dir,
                              out_dir=tmp_path_factory.mktemp(f"{family}-{tied}"))
    raw = Tokenizer.from_file(str(path / "tokenizer.json"))
    return SimpleNamespace(family=family, tied=tied, path=str(path), raw=raw,
                           encode=lambda text: raw.encode(text, add_special_tokens=False).ids,
                           pad_id=raw.token_to_id(PAD), eos_id=raw.token_to_id(EOS))


def _batch(case) -> TrainBatch:
    """Hand-made samples of different lengths (right padding in the batch), EOS-terminated."""
    samples = []
    for i, (prompt, response) in enumerate(TEXTS):
        p, r = case.encode(prompt), case.encode(response) + [case.eos_id]
        samples.append(Sample(prompt_ids=p, response_ids=r, logprobs=[-1.0] * len(r), text=response,
                              finish_reason="stop", group_id=i, env="arithmetic"))
    return collate(samples, torch.tensor(ADV), pad_id=case.pad_id)


@torch.no_grad()
def _forward_logp(model, batch: TrainBatch) -> torch.Tensor:
    """The plain definition: log_softmax of a full forward's logits at each target, [N, L-1]."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long()).logits
    logp = logits[:, :-1].float().log_softmax(-1)                                       # [N, L-1, V]
    return logp.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)                     # [N, L-1]


def _objective(logp: torch.Tensor, batch: TrainBatch) -> float:
    """sum_i adv_i * mean log-prob of sequence i's response: what a policy-gradient step raises."""
    mask = batch.loss_mask.float()
    return float((batch.adv * (logp * mask).sum(1) / mask.sum(1)).sum())


def _tied(model) -> bool:
    return model.get_output_embeddings().weight is model.get_input_embeddings().weight


@pytest.fixture(scope="module")
def trained(case):
    """A PolicyWorker on the case's folder, its pre-step log-probs, and one train step."""
    worker = PolicyWorker(case.path, learner=LearnerConfig(lr=1e-2), algorithm=AlgorithmConfig(),
                          temperature=1.0)
    batch = _batch(case)
    logp_old = worker.logprobs(batch)["logp_old"]
    before = {n: p.detach().clone() for n, p in worker.model.named_parameters()}
    metrics = worker.train(batch.with_(logp_old=logp_old))
    return SimpleNamespace(worker=worker, batch=batch, logp_old=logp_old, before=before, metrics=metrics)


@pytest.fixture(scope="module")
def exported(trained, case, tmp_path_factory):
    """The trained policy written by save_hf, with the original folder's tokenizer."""
    out = tmp_path_factory.mktemp(f"{case.family}-{case.tied}-hf")
    trained.worker.save_hf(str(out), tokenizer_path=case.path)
    return out


def test_learner_logprobs_equal_a_plain_forward(case, trained):
    from transformers import AutoModelForCausalLM

    batch = trained.batch
    ref = AutoModelForCausalLM.from_pretrained(case.path, dtype=torch.float32).eval()
    want = _forward_logp(ref, batch)
    mask = batch.loss_mask
    assert int(mask.sum()) == sum(len(case.encode(r)) + 1 for _, r in TEXTS)
    # `trained` used the default learner (packed rows, chunked logits); padded rows + full logits too
    padded = PolicyWorker(case.path, learner=LearnerConfig(sequence_packing=False, logprob_chunk_tokens=0),
                          algorithm=AlgorithmConfig(), temperature=1.0).logprobs(batch)["logp_old"]
    for logp in (trained.logp_old, padded):
        torch.testing.assert_close(logp[mask], want[mask], atol=ATOL, rtol=0)
        assert (logp[~mask] == 0).all()


def test_prefix_tree_logprobs_equal_a_plain_forward(case):
    """GRPO-shaped rows (each prompt twice, two responses) go through the prefix tree by default."""
    from transformers import AutoModelForCausalLM

    from nemo_rlvr.learner.logprobs import attention_pair_cost
    from nemo_rlvr.learner.packing import pack_prefix_tree

    samples = []
    for i, (prompt, response) in enumerate(TEXTS):
        for r in (response, response[::-1] + "0"):
            p, ids = case.encode(prompt), case.encode(r) + [case.eos_id]
            samples.append(Sample(prompt_ids=p, response_ids=ids, logprobs=[-1.0] * len(ids), text=r,
                                  finish_reason="stop", group_id=i, env="arithmetic"))
    batch = collate(samples, torch.ones(len(samples)), pad_id=case.pad_id)
    ref = AutoModelForCausalLM.from_pretrained(case.path, dtype=torch.float32).eval()
    assert pack_prefix_tree(batch.input_ids, batch.attention_mask, batch.loss_mask,
                            attn_cost=attention_pair_cost(ref)) is not None          # the tree is taken
    got = PolicyWorker(case.path, learner=LearnerConfig(), algorithm=AlgorithmConfig(),
                       temperature=1.0).logprobs(batch)["logp_old"]
    mask = batch.loss_mask
    torch.testing.assert_close(got[mask], _forward_logp(ref, batch)[mask], atol=ATOL, rtol=0)
    assert (got[~mask] == 0).all()


def test_train_step_is_finite_and_changes_every_weight(case, trained):
    w, batch = trained.worker, trained.batch
    assert trained.metrics and all(math.isfinite(v) for v in trained.metrics.values()), trained.metrics
    assert trained.metrics["train/grad_norm"] > 0
    unchanged = [n for n, p in w.model.named_parameters() if torch.equal(p.detach(), trained.before[n])]
    assert not unchanged, f"{case.family}: the step left these unchanged: {unchanged}"
    assert _tied(w.model) == case.tied
    # the step went uphill on the PG objective (adv > 0 sequences up, adv < 0 down, on balance)
    logp_new = w.logprobs(batch)["logp_old"]
    assert _objective(logp_new, batch) > _objective(trained.logp_old, batch)


def test_save_hf_loads_back_with_the_same_logits_and_tying(case, trained, exported):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    w, batch = trained.worker, trained.batch
    back = AutoModelForCausalLM.from_pretrained(str(exported), dtype=torch.float32).eval()
    assert back.config.tie_word_embeddings is case.tied and _tied(back) == case.tied
    mine = w.model.state_dict()
    for name, t in back.state_dict().items():
        torch.testing.assert_close(t, mine[name], atol=0, rtol=0, msg=lambda m, n=name: f"{n}: {m}")
    embed = back.get_input_embeddings().weight
    saved = load_file(str(exported / "model.safetensors"))
    if case.tied:  # saved once (as the embedding) or twice, equal
        assert torch.equal(back.get_output_embeddings().weight, embed)
        assert "lm_head.weight" not in saved or torch.equal(saved["lm_head.weight"], embed)
    else:
        assert not torch.equal(saved["lm_head.weight"], saved["model.embed_tokens.weight"])
    with torch.no_grad():
        args = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask.long()}
        torch.testing.assert_close(back(**args).logits, w.model(**args).logits, atol=ATOL, rtol=0)


def test_hf_generator_generates_and_syncs_to_the_learner(case, trained):
    w, batch = trained.worker, trained.batch
    gen = HFGenerator(case.path)
    prompt = Prompt(text="12+34=", token_ids=case.encode("12+34="), env="arithmetic")
    sampling = SamplingParams(n=2, temperature=1.0, max_new_tokens=6, seed=0)
    for s in gen.generate([prompt], sampling):
        assert 1 <= len(s.response_ids) <= 6 and len(s.logprobs) == len(s.response_ids)
        assert all(math.isfinite(x) and x <= 0 for x in s.logprobs)

    learner = w.logprobs(batch)["logp_old"]
    mask = batch.loss_mask
    assert (_forward_logp(gen.model, batch) - learner).abs()[mask].max() > 1e-3  # stale before the sync
    buckets = w.export_weights(bucket_bytes=8 * 1024)  # ~90-130 KB of weights: several buckets
    assert len(buckets) > 3
    stats = gen.load_weights(buckets)
    assert stats["weight_sync/bytes"] == sum(p.numel() * p.element_size() for p in gen.model.parameters())
    assert _tied(gen.model) == case.tied
    torch.testing.assert_close(_forward_logp(gen.model, batch)[mask], learner[mask], atol=ATOL, rtol=0)

    # and the synced generator's own sampled log-probs are the learner's (the on-policy contract)
    new = gen.generate([prompt], sampling)
    nb = collate(new, torch.zeros(len(new)), pad_id=gen.pad_id)
    diff = (w.logprobs(nb)["logp_old"] - nb.logp_gen).abs()[nb.loss_mask]
    assert diff.numel() == sum(len(s.response_ids) for s in new) and diff.max() < ATOL


def test_tokenizer_survives_auto_tokenizer_and_save_hf(request, case, exported):
    """The folder's tokenizer as the framework loads it (AutoTokenizer: HFGenerator, build.py) and as
    save_hf writes it encodes and decodes whitespace like the folder's own tokenizer.json."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    if case.family == "qwen2":
        # transformers 5 lists "qwen2" in MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS: AutoTokenizer ignores
        # tokenizer_class=TokenizersBackend and builds Qwen2Tokenizer, whose byte-level pre-tokenizer
        # replaces the tiny tokenizer's Metaspace one, so " ", "\n", "\t" vanish; save_hf then writes
        # that tokenizer.json. Real Qwen2 folders ship a Qwen2 tokenizer and are unaffected.
        request.applymarker(pytest.mark.xfail(strict=True, reason="AutoTokenizer swaps in Qwen2Tokenizer "
                                              "for the tiny (Metaspace) tokenizer under model_type qwen2"))
    text = "Question: what is 12 plus 34?\n<|im_start|>assistant\n46\t."
    want = case.encode(text)
    assert case.raw.decode(want, skip_special_tokens=False) == text
    loaded = AutoTokenizer.from_pretrained(case.path)
    assert loaded.encode(text, add_special_tokens=False) == want
    saved = Tokenizer.from_file(str(exported / "tokenizer.json"))
    assert saved.encode(text, add_special_tokens=False).ids == want
    assert saved.decode(want, skip_special_tokens=False) == text
