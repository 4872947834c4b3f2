"""The sharded learner: 2 gloo ranks (real Ray actors, FSDP2) against the single-process learner
on the same batch; checkpoints across world sizes; weights and HF export out of a sharded model.

Tolerances: fp32 on the CPU. The ranks sum the same per-token terms in another order (each rank
its own rows, then a reduce-scatter), so log-probs agree to 1e-5, losses and gradient norms to
1e-5 relative, and one AdamW step (lr 1e-3) gives the same weights to 2e-6 but for a few
elements whose gradient is near Adam's eps (`assert_same_update`).
"""

from __future__ import annotations

import random

import pytest
import torch

from nemo_rlvr.config import AlgorithmConfig, LearnerConfig
from nemo_rlvr.learner.group import LearnerGroup, LearnerWorker
from nemo_rlvr.learner.packing import collate
from nemo_rlvr.learner.policy import PolicyWorker
from nemo_rlvr.types import Sample
from nemo_rlvr.weights.buckets import iter_bucket_tensors

BUCKET = 1 << 20


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def make_batch(seed: int = 0, n: int = 10):
    rng = random.Random(seed)
    samples = []
    for i in range(n):  # prompts of 3-9 tokens, responses of 0-6 (an empty one included)
        p = [rng.randrange(4, 60) for _ in range(rng.randint(3, 9))]
        r = [rng.randrange(4, 60) for _ in range(0 if i == 3 else rng.randint(1, 6))]
        samples.append(Sample(p, r, [-1.5] * len(r), "", "stop", i // 2, "arithmetic"))
    adv = torch.tensor([rng.choice([-1.0, -0.5, 0.5, 1.0]) for _ in range(n)])
    return collate(samples, adv, pad_id=0)


def learner_cfg(**kw) -> LearnerConfig:
    return LearnerConfig(lr=1e-3, grad_clip=1e9, **kw)  # no clipping: grad norms compare as computed


def kwargs(learner: LearnerConfig, kl: float = 0.0) -> dict:
    return dict(learner=learner, algorithm=AlgorithmConfig(kl_coef=kl), temperature=1.0, seed=0)


def sharded(ray, model_dir: str, learner: LearnerConfig, kl: float = 0.0, world: int = 2) -> LearnerGroup:
    cls = ray.remote(num_cpus=1)(LearnerWorker)
    return LearnerGroup([cls.remote(model_dir, num_threads=1, rank=r, world_size=world, **kwargs(learner, kl))
                         for r in range(world)])


def weights(buckets) -> dict[str, torch.Tensor]:
    import ray

    buckets = [ray.get(b) if isinstance(b, ray.ObjectRef) else b for b in buckets]
    return {name: t.clone() for name, t in iter_bucket_tensors(buckets)}


@pytest.mark.parametrize("budget, packed", [(10_000, True), (20, True), (1, True), (10_000, False),
                                            (40, False)])
def test_two_ranks_match_one_process(ray_session, tiny_model_dir, budget, packed):
    cfg = learner_cfg(max_tokens_per_microbatch=budget, sequence_packing=packed)
    batch = make_batch()
    one = PolicyWorker(tiny_model_dir, **kwargs(learner_cfg()))  # reference: one pass, padded
    want_lp = one.logprobs(batch)["logp_old"]
    want = one.train(batch)
    want_w = weights(one.export_weights(BUCKET))

    group = sharded(ray_session, tiny_model_dir, cfg)
    try:
        got_lp = group.logprobs(batch)["logp_old"]
        got = group.train(batch)
        got_w = weights(group.weights(BUCKET))
    finally:
        for w in group.workers:
            ray_session.kill(w)
    torch.testing.assert_close(got_lp, want_lp, rtol=0, atol=1e-5)
    for key in ("loss/total", "loss/pg", "train/grad_norm", "train/entropy", "train/logprob_mismatch"):
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key
    assert got["train/logprob_mismatch_max"] == pytest.approx(want["train/logprob_mismatch_max"], rel=1e-5)
    assert got_w.keys() == want_w.keys()
    assert_same_update(got_w, want_w, lr=1e-3)


def assert_same_update(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], *, lr: float) -> None:
    """Weights after one AdamW step agree to 2e-6, except a few elements (<= 0.05 %, measured 1-4
    of 16-33k per matrix) whose gradient is near Adam's eps (1e-8): there the first step's
    g / (sqrt(g^2) + eps) turns fp32 rounding of g into a visible change (up to 3.4e-4 seen),
    which stays below lr, the most one step can move a weight."""
    total = off = 0
    for name in want:
        d = (got[name] - want[name]).abs()
        assert d.max() < lr, (name, d.max().item())
        total, off = total + d.numel(), off + int((d > 2e-6).sum())
    assert off <= 5e-4 * total, f"{off} of {total} elements differ by more than 2e-6"


def test_checkpoint_moves_between_world_sizes(ray_session, tiny_model_dir, tmp_path):
    """2 ranks save after a step; 1 process and 2 ranks load it and take the same next step."""
    cfg = learner_cfg(max_tokens_per_microbatch=30)
    b1, b2 = make_batch(1), make_batch(2)
    two = sharded(ray_session, tiny_model_dir, cfg)
    try:
        two.train(b1)
        two.save(str(tmp_path / "from2"))
        want = two.train(b2)                                   # the uninterrupted next step
    finally:
        for w in two.workers:
            ray_session.kill(w)
    assert sorted(p.name for p in (tmp_path / "from2").iterdir()) == ["dcp", "rank_0.pt", "rank_1.pt"]

    one = PolicyWorker(tiny_model_dir, **kwargs(cfg))
    one.load(str(tmp_path / "from2"))                          # 2 ranks -> 1 process
    got = one.train(b2)
    assert got["loss/total"] == pytest.approx(want["loss/total"], rel=1e-5)
    assert got["train/grad_norm"] == pytest.approx(want["train/grad_norm"], rel=1e-5)
    assert got["train/lr"] == want["train/lr"]

    one.save(str(tmp_path / "from1"))                          # and back: 1 process -> 2 ranks
    b3 = make_batch(3)
    want3 = one.train(b3)
    again = sharded(ray_session, tiny_model_dir, cfg)
    try:
        again.load(str(tmp_path / "from1"))
        got3 = again.train(b3)
    finally:
        for w in again.workers:
            ray_session.kill(w)
    assert got3["loss/total"] == pytest.approx(want3["loss/total"], rel=1e-5)
    assert got3["train/grad_norm"] == pytest.approx(want3["train/grad_norm"], rel=1e-5)


@pytest.mark.parametrize("reference", ["model", "host_copy"])
def test_hf_export_and_reference_of_a_sharded_model(ray_session, tiny_model_dir, tmp_path, reference):
    """A sharded learner with KL (its reference a sharded model, or host copies of its shards that
    the policy module takes in for the reference pass) exports the same HF files as the unsharded
    learner after the same step, and scores the reference the same before and after the step."""
    from safetensors.torch import load_file

    cfg = learner_cfg()
    batch, later = make_batch(4), make_batch(5)
    one = PolicyWorker(tiny_model_dir, **kwargs(cfg, kl=0.1))
    ref_one = one.logprobs(batch)
    one.train(batch.with_(**ref_one))
    ref_one_later = one.logprobs(later)   # policy moved, reference did not
    one.save_hf(str(tmp_path / "one"), tiny_model_dir)
    two = sharded(ray_session, tiny_model_dir, learner_cfg(reference=reference), kl=0.1)
    try:
        ref_two = two.logprobs(batch)
        two.train(batch.with_(**ref_two))
        ref_two_later = two.logprobs(later)
        two.save_hf(str(tmp_path / "two"), tiny_model_dir)
    finally:
        for w in two.workers:
            ray_session.kill(w)
    torch.testing.assert_close(ref_two["logp_ref"], ref_one["logp_ref"], rtol=0, atol=1e-5)
    torch.testing.assert_close(ref_two_later["logp_ref"], ref_one_later["logp_ref"], rtol=0, atol=1e-5)
    torch.testing.assert_close(ref_two_later["logp_old"], ref_one_later["logp_old"], rtol=0, atol=1e-4)
    moved = (ref_one_later["logp_old"] - ref_one_later["logp_ref"]).abs().max()
    assert moved > 1e-3, "the step did not move the policy: the reference check would prove nothing"
    files = lambda d: sorted(p.name for p in d.iterdir())  # noqa: E731
    assert files(tmp_path / "two") == files(tmp_path / "one")
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert a.keys() == b.keys()
    assert_same_update(b, a, lr=1e-3)
    import json

    cfg_one = json.loads((tmp_path / "one" / "config.json").read_text())
    cfg_two = json.loads((tmp_path / "two" / "config.json").read_text())
    assert cfg_two["architectures"] == cfg_one["architectures"] == ["Qwen2ForCausalLM"]


def test_host_copy_reference_equals_the_model_reference_in_one_process(tiny_model_dir):
    """Unsharded: the host-copy reference gives the frozen start policy's log-probs, bit for bit the
    separate reference model's, after the policy has moved; the policy's own weights come back."""
    batch, later = make_batch(6), make_batch(7)
    a = PolicyWorker(tiny_model_dir, **kwargs(learner_cfg(), kl=0.1))
    b = PolicyWorker(tiny_model_dir, **kwargs(learner_cfg(reference="host_copy"), kl=0.1))
    assert b.ref is None and len(b.ref_host) == len(list(b.model.parameters()))
    for w in (a, b):
        w.train(batch.with_(**w.logprobs(batch)))
    before = b.param_checksum()
    got, want = b.logprobs(later), a.logprobs(later)
    torch.testing.assert_close(got["logp_ref"], want["logp_ref"], rtol=0, atol=0)
    torch.testing.assert_close(got["logp_old"], want["logp_old"], rtol=0, atol=0)
    assert b.param_checksum() == before                       # the policy's weights are back
    assert (got["logp_old"] - got["logp_ref"]).abs().max() > 1e-3
