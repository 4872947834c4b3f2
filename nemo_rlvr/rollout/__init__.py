"""Generation: the Generator protocol, the HF and vLLM backends, generator actors."""
