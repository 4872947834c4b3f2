"""RL math as pure torch functions: advantage estimators and policy losses (no I/O, no config)."""

from nemo_rlvr.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    dr_grpo_advantages,
    get_adv_estimator,
    group_stats,
    grpo_advantages,
    register_adv_est,
    rloo_advantages,
)
from nemo_rlvr.algorithms.losses import (
    LOSSES,
    aggregate,
    clipped_pg_loss,
    entropy_from_logits,
    get_loss,
    kl_penalty,
    masked_mean,
    register_loss,
    truncated_is_weights,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "LOSSES",
    "aggregate",
    "clipped_pg_loss",
    "dr_grpo_advantages",
    "entropy_from_logits",
    "get_adv_estimator",
    "get_loss",
    "group_stats",
    "grpo_advantages",
    "kl_penalty",
    "masked_mean",
    "register_adv_est",
    "register_loss",
    "rloo_advantages",
    "truncated_is_weights",
]
