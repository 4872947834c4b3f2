"""Learning-rate schedules against hand-worked numbers (arithmetic in the comments)."""

import io
import pickle
from functools import partial

import pytest
import torch

from nemo_rlvr.learner.schedule import lr_multiplier

# An optimizer's first step lazily imports torch._dynamo (~1 s); pay that once at collection
# so no single test goes over the 1 s unit-test budget.
torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0).step()


def factors(n: int, **kw) -> list[float]:
    return [lr_multiplier(s, **kw) for s in range(n)]


def test_constant_with_warmup():
    # W=3: (s+1)/(W+1) for s < 3 -> 1/4, 2/4, 3/4; from step 3 on, 1
    got = factors(7, kind="constant", warmup_steps=3, total_steps=5, min_lr_ratio=0.5)
    assert got == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0]    # total_steps and the floor play no part


def test_linear_no_warmup_decays_to_floor():
    # W=0, T=4, min 0: p = s/4, 1 - p -> 1, .75, .5, .25; s >= 4: the floor 0
    got = factors(6, kind="linear", warmup_steps=0, total_steps=4, min_lr_ratio=0.0)
    assert got == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0, 0.0], abs=1e-12)


def test_linear_warmup_then_decay_to_floor():
    # W=1: s=0 -> 1/2. T=5, min .2: p = (s-1)/4, 1 - .8p -> s=1: 1, s=2: .8, s=3: .6, s=4: .4;
    # s >= 5: .2
    got = factors(8, kind="linear", warmup_steps=1, total_steps=5, min_lr_ratio=0.2)
    assert got == pytest.approx([0.5, 1.0, 0.8, 0.6, 0.4, 0.2, 0.2, 0.2], abs=1e-12)


def test_cosine_warmup_then_half_cosine_to_floor():
    kw = {"kind": "cosine", "warmup_steps": 2, "total_steps": 6, "min_lr_ratio": 0.1}
    # warm-up W=2: s=0 -> 1/3, s=1 -> 2/3, s=2 -> 1 (p = 0)
    # decay p = (s-2)/4, factor = 1 - .9 * (1 - cos(pi p)) / 2 = .1 + .9 * (1 + cos(pi p)) / 2
    #   s=3: p=.25, cos = .70710678 -> .1 + .45 * 1.70710678 = .86819805
    #   s=4: p=.5 (midpoint), cos = 0 -> .1 + .9 * .5 = .55
    #   s=5: p=.75, cos = -.70710678 -> .1 + .45 * .29289322 = .23180195
    # s >= 6: the floor .1
    expected = [1 / 3, 2 / 3, 1.0, 0.86819805, 0.55, 0.23180195, 0.1, 0.1]
    assert factors(8, **kw) == pytest.approx(expected, abs=1e-8)
    assert lr_multiplier(2, **kw) == 1.0                    # decay starts at exactly the full lr
    assert lr_multiplier(1000, **kw) == 0.1                 # the floor is held, exactly


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_total_at_or_before_warmup_end_goes_to_floor(kind):
    # W=4, T=2: warm-up is untouched (1/5 .. 4/5); the decay is empty, so step 4 on is the floor .3
    got = factors(6, kind=kind, warmup_steps=4, total_steps=2, min_lr_ratio=0.3)
    assert got == pytest.approx([0.2, 0.4, 0.6, 0.8, 0.3, 0.3], abs=1e-12)
    # W = T = 3: no division by zero; step 3 is already at the floor
    assert lr_multiplier(3, kind=kind, warmup_steps=3, total_steps=3, min_lr_ratio=0.3) == 0.3


@pytest.mark.parametrize("warm", [0, 1, 5])
def test_constant_is_bit_identical_to_the_old_lambda(warm):
    def old(s):  # nemo_rlvr/learner/policy.py before lr_schedule
        return min(1.0, (s + 1) / (warm + 1)) if warm else 1.0
    for s in range(20):
        new = lr_multiplier(s, kind="constant", warmup_steps=warm, total_steps=20, min_lr_ratio=0.0)
        assert new == old(s) and type(new) is float, (warm, s, new, old(s))


def test_bad_kind_names_the_options():
    with pytest.raises(ValueError, match=r"'step'.*constant, linear, cosine.*learner\.lr_schedule"):
        lr_multiplier(0, kind="step", warmup_steps=0, total_steps=4, min_lr_ratio=0.0)


def _sgd(lr: float) -> tuple[torch.nn.Parameter, torch.optim.Optimizer]:
    p = torch.nn.Parameter(torch.zeros(1))
    return p, torch.optim.SGD([p], lr=lr)


def test_lambda_lr_with_partial_drives_a_real_optimizer():
    p, opt = _sgd(lr=0.5)
    fn = partial(lr_multiplier, kind="linear", warmup_steps=1, total_steps=5, min_lr_ratio=0.2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, fn)
    # factors .5, 1, .8, .6, .4, .2, .2 (test_linear_warmup_then_decay_to_floor) * base lr .5
    expected = [0.25, 0.5, 0.4, 0.3, 0.2, 0.1, 0.1]
    used = []
    for _ in expected:
        used.append(opt.param_groups[0]["lr"])
        p.sum().backward()                                   # grad 1: SGD moves p by -lr
        opt.step()
        opt.zero_grad()
        sched.step()
    assert used == pytest.approx(expected, abs=1e-12)
    # p = -(.25 + .5 + .4 + .3 + .2 + .1 + .1) = -1.85
    assert p.item() == pytest.approx(-1.85, abs=1e-6)


def test_scheduler_state_pickles_and_resumes():
    fn = partial(lr_multiplier, kind="cosine", warmup_steps=2, total_steps=6, min_lr_ratio=0.1)
    assert pickle.loads(pickle.dumps(fn))(4) == fn(4) == pytest.approx(0.55)
    _, opt = _sgd(lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, fn)
    for _ in range(3):
        opt.step()
        sched.step()
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)                      # as the policy worker's rank_<r>.pt
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    _, opt2 = _sgd(lr=1.0)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, fn)
    sched2.load_state_dict(state)
    # resumed at step 3: p = .25 -> .86819805 (test_cosine_warmup_then_half_cosine_to_floor)
    assert sched2.last_epoch == 3
    assert sched2.get_last_lr()[0] == pytest.approx(0.86819805, abs=1e-8)
    opt2.step()
    sched2.step()
    assert sched2.get_last_lr()[0] == pytest.approx(0.55)   # step 4: the midpoint
