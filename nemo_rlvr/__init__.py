"""nemo-rlvr: reinforcement learning from verifiable rewards for LLMs."""

__version__ = "0.1.0"
