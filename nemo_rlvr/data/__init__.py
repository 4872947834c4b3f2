"""Prompt data: built-in procedural tasks (`arithmetic`) for tests and the CPU demo."""
