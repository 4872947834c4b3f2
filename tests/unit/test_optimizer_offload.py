"""move_optimizer_state: what colocated GPU runs call to give a generator the optimizer's memory
while it generates. Here the moments go to the meta device (the CPU has nowhere else to send them);
the round trip through host memory on a GPU is tests/gpu/test_sharded_learner_gpu.py's."""

from __future__ import annotations

import torch

from nemo_rlvr.learner.policy import move_optimizer_state


def test_the_moments_move_the_step_counter_stays():
    p = torch.nn.Parameter(torch.ones(3, 2))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.full_like(p, 0.5)
    opt.step()
    st = opt.state[p]
    # after one step with grad 0.5: exp_avg = (1 - 0.9) * 0.5 = 0.05, exp_avg_sq = (1 - 0.999) * 0.25
    assert torch.allclose(st["exp_avg"], torch.full((3, 2), 0.05))
    assert torch.allclose(st["exp_avg_sq"], torch.full((3, 2), 0.00025))
    assert move_optimizer_state(opt, torch.device("cpu")) == 0          # already there: nothing moves
    moved = move_optimizer_state(opt, torch.device("meta"))
    assert moved == 2 * 6 * 4                                            # two fp32 moments of 6 entries
    assert st["exp_avg"].is_meta and st["exp_avg_sq"].is_meta
    assert st["step"].device.type == "cpu" and float(st["step"]) == 1.0  # the counter is not state to move
    assert move_optimizer_state(opt, torch.device("meta")) == 0
