"""Weight transfer from the learner to the generators: bucket packing (buckets.py), the gloo
transport (gloo.py, vllm_engine.py) and the trainer engines for every backend, through vLLM's
weight-transfer handshake (transfer.py). Learner and generators both import this package, never
each other."""
