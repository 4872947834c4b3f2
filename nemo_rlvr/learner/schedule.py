"""Learning-rate schedules: the factor on the base lr for each optimizer step.

Linear warm-up, then constant, linear or cosine decay to a floor. A pure function of the
0-based optimizer step, so the policy worker wraps it in
`LambdaLR(opt, functools.partial(lr_multiplier, kind=..., ...))` and the scheduler's
checkpoint state stays its step count (a partial of a module-level function pickles).
"""

from __future__ import annotations

import math
from typing import Literal

SCHEDULES = ("constant", "linear", "cosine")


def lr_multiplier(
    step: int,
    *,
    kind: Literal["constant", "linear", "cosine"],
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float,
) -> float:
    """Factor on the base lr for optimizer step `step` (0-based: step 0 is the first update).

    - warm-up, step < warmup_steps: (step + 1) / (warmup_steps + 1), so the first update
      uses lr / (W + 1), not 0, and step W is the first at the full lr (the policy
      worker's original constant schedule, reproduced bit for bit);
    - constant: 1 from step W on; `min_lr_ratio` and `total_steps` are not used;
    - linear / cosine, W <= step < total_steps: p = (step - W) / (total_steps - W) and
      1 - (1 - min_lr_ratio) * d with d = p (linear) or (1 - cos(pi * p)) / 2 (cosine);
    - step >= total_steps: min_lr_ratio (the floor is held; with total_steps <= W the
      decay is empty and the floor follows warm-up directly).
    The floor bounds the decay only: warm-up starts below it when min_lr_ratio > 1 / (W + 1).
    """
    if kind not in SCHEDULES:
        raise ValueError(f"lr schedule kind={kind!r} is not one of {', '.join(SCHEDULES)}; "
                         f"set learner.lr_schedule to one of them")
    if step < 0 or warmup_steps < 0 or not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"lr_multiplier(step={step}, warmup_steps={warmup_steps}, "
                         f"min_lr_ratio={min_lr_ratio}): steps must be >= 0 and min_lr_ratio in [0, 1]")
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if kind == "constant":
        return 1.0
    if step >= total_steps:
        return float(min_lr_ratio)
    p = (step - warmup_steps) / (total_steps - warmup_steps)  # in [0, 1); denominator > 0 here
    decayed = p if kind == "linear" else 0.5 * (1.0 - math.cos(math.pi * p))
    return 1.0 - (1.0 - min_lr_ratio) * decayed  # exactly 1.0 at p = 0
