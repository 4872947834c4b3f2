"""Weight transfer from the learner to the generators: bucket packing (buckets.py) and GPU
transports (cuda.py). Learner and generators both import this package, never each other."""
