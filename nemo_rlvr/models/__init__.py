"""Models the project builds itself: the tiny Qwen2, its local tokenizer, the cached warm start."""
