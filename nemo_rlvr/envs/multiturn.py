"""Multi-turn environments: the model calls tools over several turns, the environment runs them
and answers, and scores the finished episode.

    state = env.start(fields)                  # one episode, from a record's fields
    turn  = env.step(state, text)              # the model's turn -> tool messages, done?
    ...   (rollout/multiturn.py appends the tool messages and lets the model go on)
    score = env.score(state, final_text)       # the finished episode -> Score

A multi-turn environment is registered like any other (`@register_env`) and says so with the
class attribute `multi_turn = True`. Tools are environment code (trusted), run in the driver's
process; model-written code still only ever runs in the sandbox (envs/sandbox.py).

`step` never raises for the model's mistakes: a malformed call, an unknown tool or a tool that
raises becomes a `tool` message saying so (counted in `tool_errors`) and the episode goes on; a
turn without any call ends the episode (the model answered). The rollout ends it too at
generation.max_turns or generation.max_episode_tokens (finish_reason "length").

Built in: `kv_store`, a stateful store the model must read with two or more `get` calls before it
can answer (fields: `store` {key: int}, `keys` the keys to add, `answer` their sum).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from nemo_rlvr.envs.base import FieldSpec, Score, register_env
from nemo_rlvr.envs.tool_call import parse_calls


@dataclass
class Turn:
    """The environment's answer to one model turn."""

    messages: list[dict[str, str]]
    """Chat messages to append (role "tool"), in order."""
    done: bool
    """True when the episode is over (the model answered without a call, or the env ended it)."""
    tool_calls: int = 0
    tool_errors: int = 0
    """Malformed calls, unknown tools and tools that raised, in this turn."""


class MultiTurnEnvironment(Protocol):
    multi_turn: bool

    def start(self, fields: Mapping[str, Any]) -> Any: ...

    def step(self, state: Any, text: str) -> Turn: ...

    def score(self, state: Any, final_text: str) -> Score: ...


def is_multi_turn(env_cls: type) -> bool:
    return bool(getattr(env_cls, "multi_turn", False))


def tool_message(content: Any) -> dict[str, str]:
    return {"role": "tool", "content": content if isinstance(content, str) else json.dumps(content)}


class ToolError(Exception):
    """A tool call the environment answers with an error (the model sees `error: <message>`).
    `kind`: "unknown" (no such tool), "arguments" (arguments the tool does not take), "failed"."""

    def __init__(self, message: str, kind: str = "failed"):
        super().__init__(message)
        self.kind = kind


class ToolEnvironment:
    """Base for multi-turn environments whose tools are methods `tool_<name>(state, **arguments)`:
    `step` parses the turn's `<tool_call>` blocks (the tool_call env's parser), runs each call with
    `run_tool` and answers with one tool message per call (or one saying what was wrong)."""

    multi_turn = True

    def start(self, fields: Mapping[str, Any]) -> Any:
        return {"fields": dict(fields)}

    def run_tool(self, state: Any, name: str, arguments: Mapping[str, Any]) -> Any:
        """The answer of tool `name`, or ToolError saying what went wrong (training and serve-env
        both call tools through this)."""
        fn = getattr(self, f"tool_{name}", None)
        if fn is None:
            raise ToolError(f"unknown tool {name!r}", "unknown")
        try:
            inspect.signature(fn).bind(state, **arguments)
        except TypeError as e:
            raise ToolError(f"{name} failed: TypeError: {e}", "arguments") from None
        try:
            return fn(state, **arguments)
        except Exception as e:  # a tool's failure is an answer to the model, not a crash
            raise ToolError(f"{name} failed: {type(e).__name__}: {e}") from e

    def step(self, state: Any, text: str) -> Turn:
        calls, problem = parse_calls(text)
        if problem is not None:
            return Turn([tool_message(f"error: {problem}")], done=False, tool_calls=0, tool_errors=1)
        if not calls:
            return Turn([], done=True)
        messages, errors = [], 0
        for call in calls:
            try:
                messages.append(tool_message(self.run_tool(state, call.name, call.arguments)))
            except ToolError as e:
                errors += 1
                messages.append(tool_message(f"error: {e}"))
        return Turn(messages, done=False, tool_calls=len(calls), tool_errors=errors)


@register_env("kv_store")
@dataclass
class KVStoreEnv(ToolEnvironment):
    """Add up the values of `keys` in a store the model can only read through `get(key)`.

    Reward 1 when the final answer (the last turn, no call in it) is the sum as an integer and the
    model read every key of `keys` with `get` first; 0 otherwise (an answer without reading is
    a guess). Components: `answered`, `read_all`, `correct`."""

    name: str = field(default="kv_store", init=False)
    fields = {"store": FieldSpec((dict,), "the store, {key: integer value}"),
              "keys": FieldSpec((list,), "the keys whose values the answer adds up, e.g. [\"a\", \"b\"]"),
              "answer": FieldSpec((int,), "the sum of the values of `keys`")}

    def start(self, fields: Mapping[str, Any]) -> Any:
        return {"store": dict(fields["store"]), "read": set(), "keys": list(fields["keys"]),
                "answer": int(fields["answer"])}

    def tool_get(self, state: Any, key: str) -> str:
        if key not in state["store"]:
            raise KeyError(f"no key {key!r}")
        state["read"].add(key)
        return str(state["store"][key])

    def score(self, state: Any, final_text: str) -> Score:
        text = final_text.strip()
        answered = text.lstrip("-").isdigit()
        read_all = set(state["keys"]) <= state["read"]
        correct = answered and int(text) == int(state["answer"])
        parts = {"answered": float(answered), "read_all": float(read_all), "correct": float(correct)}
        return Score(float(correct and read_all), parts)

    def score_record(self, response: str, fields: Mapping[str, Any]) -> Score:
        """Single-turn use (`nemo-rlvr verify`): the answer alone, nothing was read."""
        return self.score({"store": fields["store"], "read": set(), "keys": fields["keys"],
                           "answer": fields["answer"]}, response)


@register_env("nemo_gym")
class NemoGymEnv(ToolEnvironment):
    """Drive a NeMo Gym resources server over HTTP: train against environments written for NeMo Gym.

        start  -> POST {url}/seed_session  (the record's fields; the server's session cookie is kept
                                            in this episode's own client)
        a call -> POST {url}/{tool_name}   (the call's arguments) -> a tool message with the answer
        score  -> POST {url}/verify        (the record's fields, its `responses_create_params`, and the
                                            episode as an OpenAI Responses object) -> `reward`

    The Responses object lists the episode's `function_call` / `function_call_output` items in order
    and the final answer as an assistant `message` with one `output_text`. A tool the server does
    not have (404), a 4xx/5xx answer or a connection error becomes a tool message saying so; a
    /verify that fails scores 0 with `error`. env.options: `url`, `timeout_s`."""

    fields = {"responses_create_params": FieldSpec((dict,), "the OpenAI Responses create params of the "
                                                            "rollout, e.g. {\"input\": [...]}", required=False)}

    def __init__(self, url: str, timeout_s: float = 30.0):
        self.url, self.timeout_s = url.rstrip("/"), timeout_s

    def start(self, fields: Mapping[str, Any]) -> Any:
        import httpx

        client = httpx.Client(base_url=self.url, timeout=self.timeout_s)
        seed = {k: v for k, v in fields.items() if k != "responses_create_params"}
        client.post("/seed_session", json=seed).raise_for_status()
        return {"client": client, "fields": dict(fields), "output": [], "n": 0}

    def run_tool(self, state: Any, name: str, arguments: Mapping[str, Any]) -> Any:
        """POST the call to the server, recording it and its answer in the episode's Responses items."""
        state["n"] += 1
        call_id = f"call_{state['n']}"
        state["output"].append({"type": "function_call", "call_id": call_id, "name": name,
                                "arguments": json.dumps(arguments), "id": f"fc_{state['n']}", "status": "completed"})
        try:
            answer = self._post(state["client"], name, arguments)
        except ToolError as e:
            state["output"].append({"type": "function_call_output", "call_id": call_id, "output": f"error: {e}"})
            raise
        state["output"].append({"type": "function_call_output", "call_id": call_id, "output": answer})
        return answer

    @staticmethod
    def _post(client: Any, name: str, arguments: Mapping[str, Any]) -> str:
        try:
            r = client.post(f"/{name}", json=arguments)
        except Exception as e:  # the server is down or slow: an answer to the model, not a crash
            raise ToolError(f"{name}: {type(e).__name__}: {e}") from e
        if r.status_code >= 400:
            raise ToolError(f"{name}: HTTP {r.status_code} {r.text[:200]}")
        return r.text

    def score(self, state: Any, final_text: str) -> Score:
        fields = state["fields"]
        rcp = fields.get("responses_create_params", {"input": []})
        output = [*state["output"], {"type": "message", "role": "assistant", "id": "msg_final", "status": "completed",
                                     "content": [{"type": "output_text", "text": final_text, "annotations": []}]}]
        response = {"id": "resp_nemo_rlvr", "object": "response", "created_at": 0, "model": "nemo-rlvr",
                    "output": output, "parallel_tool_calls": True, "tool_choice": "auto",
                    "tools": rcp.get("tools", [])}
        body = {**fields, "responses_create_params": rcp, "response": response}
        try:
            r = state["client"].post("/verify", json=body)
            r.raise_for_status()
            return Score(float(r.json()["reward"]))
        except Exception as e:
            return Score(0.0, {}, f"NeMo Gym /verify failed: {type(e).__name__}: {e}")
        finally:
            state["client"].close()
