"""Environments: the protocol and registry (base.py), lookup by name (registry.py), and the
built-ins: math, code (+ sandbox.py), tool_call, instruction, reasoning_gym, arithmetic."""
