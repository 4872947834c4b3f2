"""Verifiers: environments that score samples (see envs/base.py for the contract)."""

from nemo_rlvr.envs import arithmetic  # noqa: F401  (registers built-ins)
from nemo_rlvr.envs import code  # noqa: F401
from nemo_rlvr.envs import math  # noqa: F401
from nemo_rlvr.envs import tool_call  # noqa: F401
from nemo_rlvr.envs import instruction  # noqa: F401
from nemo_rlvr.envs import reasoning_gym  # noqa: F401
from nemo_rlvr.envs.base import ENVIRONMENTS, Environment, Score, get_env, register_env

__all__ = ["ENVIRONMENTS", "Environment", "Score", "get_env", "register_env"]
