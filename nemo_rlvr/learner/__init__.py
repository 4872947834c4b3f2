"""The learner: policy ranks (FSDP2 when sharded), batches and packing, log-probs, lr schedules."""
