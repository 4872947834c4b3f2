"""Three GRPO steps of the tiny recipe through real Ray actors (HF backend, CPU): one learner
process and one generator; and two learner ranks (FSDP2 over gloo) with two generator replicas.
Weights reach the generators through the gloo weight-transfer group (vLLM's handshake)."""

from __future__ import annotations

import json

import pytest
import torch

from nemo_rlvr.config import load_config
from nemo_rlvr.learner.packing import collate
from nemo_rlvr.types import SamplingParams
from tests.helpers.training_envs import write_addition_prompts

STEP_KEYS = {
    "step", "train/reward_mean", "train/reward_std", "train/accuracy", "train/response_len_mean",
    "train/response_len_max", "train/truncation_rate", "train/logprob_mismatch", "train/logprob_mismatch_max",
    "train/entropy", "train/grad_norm", "train/lr", "loss/total", "loss/pg", "loss/kl", "loss/clip_frac",
    "reward/digit_share/mean", "verifier/errors", "verifier/seconds", "timing/generate", "timing/score",
    "timing/logprobs", "timing/train", "timing/weight_sync", "timing/step", "weight_sync/bytes",
    "weight_sync/gb_per_s",
    "throughput/gen_tokens_per_s", "throughput/train_tokens_per_s",
}


@pytest.fixture(scope="module", params=[1, 2], ids=["1-learner-1-generator", "2-learner-ranks-2-generators"])
def ray_run(tiny_model_dir, tmp_path_factory, request):
    ray = pytest.importorskip("ray")
    from nemo_rlvr.build import build_run
    from nemo_rlvr.controller import train

    out = tmp_path_factory.mktemp("runs")
    data = write_addition_prompts(out)
    cfg = load_config(None, [f"model.path={tiny_model_dir}", "train.steps=3", f"output_dir={out}",
                             f"data.source={data}", "env.name=digit_share",
                             "env.module=tests.helpers.training_envs",
                             "train.prompts_per_step=8", "algorithm.group_size=4", "learner.lr=1e-3",
                             "algorithm.kl_coef=0.01", "validation.every_steps=0",
                             f"cluster.num_cpus={2 * request.param}", "checkpoint.export_hf=true",
                             f"learner.num_workers={request.param}", f"generation.num_workers={request.param}",
                             # colocated: the loop sleeps and wakes the generators (no-ops on CPU)
                             f"cluster.placement={'colocated' if request.param == 1 else 'split'}"])
    run = build_run(cfg)
    assert len(run.learner.workers) == len(run.generators.workers) == request.param
    assert run.learner.transfer
    before = run.learner.param_checksum()
    train(run)
    run.logger.close()
    yield cfg, run, before
    run.scorer.close()
    ray.shutdown()


def test_weights_changed_and_generator_has_them(ray_run):
    cfg, run, before = ray_run
    assert run.learner.param_checksum() != before
    prompts = run.val_prompts[:4]
    samples = run.generators.generate(prompts, SamplingParams(n=2, temperature=1.0, max_new_tokens=5, seed=5))
    batch = collate(samples, torch.zeros(len(samples)), pad_id=run.pad_id)
    diff = (run.learner.logprobs(batch)["logp_old"] - batch.logp_gen).abs()[batch.loss_mask]
    assert diff.max() < 1e-5, "generator log-probs differ from the learner's: weights not synced"


def test_metrics_jsonl_has_every_key(ray_run):
    cfg, run, _ = ray_run
    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert "val/accuracy" in rows[0] and "val/accuracy" in rows[-1]
    for r in rows[1:]:
        missing = STEP_KEYS - set(r)
        assert not missing, f"step {r['step']} lacks {sorted(missing)}"
        assert r["train/logprob_mismatch"] < 1e-5        # synced every step, fp32
        assert r["loss/kl"] >= 0.0
    assert rows[1]["loss/kl"] == pytest.approx(0.0, abs=1e-6)   # step 1: policy == reference
    assert rows[3]["loss/kl"] > 0.0                              # after two updates it has moved


def test_final_hf_folder_loads_with_transformers(ray_run, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, run, _ = ray_run
    path = cfg.run_dir / "final_hf"
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert abs(sum(p.double().sum().item() for p in model.parameters()) - run.learner.param_checksum()) < 1e-6
    trained_from = AutoTokenizer.from_pretrained(tiny_model_dir)  # the export carries the same tokenizer
    assert tok("12+34=")["input_ids"] == trained_from("12+34=")["input_ids"]
    assert (tok.get_vocab(), tok.eos_token_id, tok.pad_token_id) == (
        trained_from.get_vocab(), trained_from.eos_token_id, trained_from.pad_token_id)
