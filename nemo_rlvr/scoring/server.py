"""HTTP env server (`nemo-rlvr serve-env`): our verify records and the NeMo Gym /verify shape.

    POST /verify ──► read body (≤ max_body_mb, else 413) ──► parse (one record | {"records": [...]}
                     | NeMo Gym body; bad → 400/422) ──► admit (≤ max_queue samples, else 503) ──► samples
                        │ (event loop)                                                  ▲ scores
                        ▼                                                               │
                    _Batcher thread: merges concurrent requests ──► pool.score(...)
    GET /health, GET /metrics, GET /openapi.json (the request and response shapes below)

Request shapes (a bad one gets 400/422 whose `detail` names the field):
- one record `{"id", "env", "prompt", "response": str, ...env fields}` → the record plus
  `reward`, `reward_components`, `error` (as `nemo-rlvr verify` writes it);
- `{"records": [record, ...]}` → `{"records": [output, ...]}`, same order;
- NeMo Gym `BaseVerifyRequest`: `responses_create_params` (OpenAI Responses create params)
  and `response` (an OpenAI Responses object), env fields at top level → the body echoed
  plus `reward` (as `BaseVerifyResponse`), `reward_components` (as
  `BaseMultiRewardVerifyResponse`), `error`, and `failure_reason` when `error` is set.
  The text scored is every `output_text` part of the assistant `message` items in
  `response.output`, joined by newlines; a `function_call` item becomes
  `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` so tool_call envs score it.
A body with `responses_create_params`, or whose `response` is an object, is a NeMo Gym
request; else one with `records` and no `response` is a batch; else it is one record.

Every request is scored by one pool (`make_scorer`), so timeouts, crash isolation and
metrics are the same as in training: a verifier that raises, hangs or kills its worker
gives that sample reward 0 with `error`, and the server keeps serving. Concurrent requests
are scored together: NeMo Gym sends one /verify per rollout, many at once, and a pool fed
one sample at a time would keep only one worker busy. Memory stays bounded: a body over
`max_body_mb` is refused while it is read (413), and at most `max_queue` samples wait or
are being scored; past that a request gets 503 with `Retry-After` (seconds).
"""

from __future__ import annotations

import asyncio
import json
import math
import queue
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from nemo_rlvr.config import EnvConfig
from nemo_rlvr.scoring.base import METRIC_KEYS, Scorer
from nemo_rlvr.scoring.make import make_scorer
from nemo_rlvr.scoring.records import (
    OUTPUT_KEYS,
    RESERVED_KEYS,
    RecordError,
    check_record,
    record_to_sample,
    scored_record,
)
from nemo_rlvr.types import Sample, Score

MAX_MERGED = 1024
"""Most samples the batcher scores in one pool call."""
GYM_KEYS = ("responses_create_params", "response")
DEFAULT_MAX_BODY_MB = 8.0
"""Largest request body, MiB (serve-env --max-body-mb)."""
DEFAULT_MAX_QUEUE = 4096
"""Most samples admitted and not yet answered (serve-env --max-queue); RemoteScorer sends 512 a request."""
MAX_DEPTH = 100
"""Deepest JSON nesting accepted: deeper bodies would overflow the recursion limit when echoed."""
RETRY_AFTER_MAX_S = 60

Render = Callable[[list[Score]], Any]


class _JSON(JSONResponse):
    """JSONResponse that also renders strings holding lone surrogates (valid JSON escapes, not UTF-8)."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def create_app(env_name: str, cfg: EnvConfig, *, max_body_mb: float = DEFAULT_MAX_BODY_MB,
               max_queue: int = DEFAULT_MAX_QUEUE) -> FastAPI:
    """The env server app; the pool starts with the app (lifespan) and stops with it.

    `max_body_mb`: larger request bodies get 413, checked while reading. `max_queue`: samples
    admitted and not yet answered; a request that would pass it gets 503 + Retry-After."""
    if not max_body_mb > 0 or max_queue < 1:
        raise ValueError(f"max_body_mb={max_body_mb} and max_queue={max_queue} must be > 0 and >= 1; "
                         f"e.g. serve-env --max-body-mb {DEFAULT_MAX_BODY_MB:g} --max-queue {DEFAULT_MAX_QUEUE}.")
    max_bytes = int(max_body_mb * 2**20)
    state: dict[str, _Batcher] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["batcher"] = _Batcher(make_scorer(cfg))
        try:
            yield
        finally:
            await asyncio.to_thread(state.pop("batcher").close)

    app = FastAPI(title=f"nemo-rlvr env server ({env_name})", lifespan=lifespan,
                  default_response_class=_JSON)

    @app.get("/health", responses={200: _content(HEALTH_SCHEMA)})
    async def health() -> dict[str, Any]:
        return {"status": "ok", "env": env_name, "workers": cfg.num_workers, "remote": cfg.url}

    @app.get("/metrics", responses={200: _content(METRICS_SCHEMA)})
    async def metrics() -> dict[str, float]:
        """Counters since the server started (verifier/samples, errors, timeouts, crashes, seconds,
        rejected: 503s), and verifier/queued: samples admitted and not yet answered, now."""
        b = state["batcher"]
        return {**b.totals, "verifier/queued": float(b.pending), "verifier/rejected": float(b.rejected)}

    sessions = _sessions(env_name, cfg)

    @app.post("/verify", openapi_extra=VERIFY_REQUEST, responses=VERIFY_RESPONSES,
              response_class=_JSON)
    async def verify(request: Request) -> _JSON:
        """Score one record, a batch `{"records": [...]}`, or a NeMo Gym verify request (of a
        multi-turn session when it carries the session cookie: scoring/gym_sessions.py)."""
        if sessions is not None and sessions.has(request):
            from nemo_rlvr.scoring.gym_sessions import session_verify

            body = parse_body(await read_body(request, max_bytes, max_body_mb))
            if not isinstance(body, dict) or not isinstance(body.get("response"), dict):
                raise HTTPException(422, "a session's /verify needs a NeMo Gym verify request with 'response'.")
            return _JSON(session_verify(sessions, request, body, last_message_text(body["response"].get("output"))))
        batcher = state["batcher"]
        if batcher.pending >= max_queue:  # full: do not even read the body
            raise batcher.busy(max_queue)
        body = parse_body(await read_body(request, max_bytes, max_body_mb))
        samples, render = plan(body, env_name)
        if len(samples) > max_queue:
            raise HTTPException(413, f"'records' has {len(samples)} records, more than the server queues "
                                     f"(serve-env --max-queue {max_queue}); send at most {max_queue} a request.")
        if batcher.pending + len(samples) > max_queue:
            raise batcher.busy(max_queue)
        return _JSON(render(await batcher.score(samples)))

    if sessions is not None:  # after /verify, /health, /metrics: /{tool_name} would shadow them
        from nemo_rlvr.scoring.gym_sessions import add_session_routes

        async def read_json(request: Request) -> dict[str, Any]:
            body = parse_body(await read_body(request, max_bytes, max_body_mb))
            if not isinstance(body, dict):
                raise HTTPException(422, f"the body must be a JSON object, got {type(body).__name__}.")
            return body

        add_session_routes(app, sessions, read_json)
    return app


def _sessions(env_name: str, cfg: EnvConfig):
    """A session store when `env_name` is a multi-turn environment (served in NeMo Gym's shape)."""
    from nemo_rlvr.envs.multiturn import is_multi_turn
    from nemo_rlvr.envs.registry import env_class, get_env

    if cfg.url or not is_multi_turn(env_class(env_name, cfg.module)):
        return None
    from nemo_rlvr.scoring.gym_sessions import Sessions

    return Sessions(get_env(env_name, cfg.module, **dict(cfg.options)))


def message_texts(item: dict[str, Any]) -> list[str]:
    """The texts of an assistant `message` item of a Responses `output` list (its `output_text`
    parts, or its content when that is a string); [] for any other item."""
    if item.get("type") != "message" or item.get("role", "assistant") != "assistant":
        return []
    content = item.get("content")
    if isinstance(content, str):
        return [content]
    return [c["text"] for c in (content if isinstance(content, list) else [])
            if isinstance(c, dict) and c.get("type") == "output_text" and isinstance(c.get("text"), str)]


def last_message_text(output: Any) -> str:
    """The text of the last assistant message in a Responses `output` list (the episode's answer)."""
    texts = [t for item in (output if isinstance(output, list) else []) if isinstance(item, dict)
             for t in message_texts(item)]
    return texts[-1] if texts else ""


async def read_body(request: Request, max_bytes: int, max_body_mb: float) -> bytes:
    """The request body, or HTTPException(413) as soon as it is known to pass `max_bytes`:
    from Content-Length before reading, else while counting streamed (chunked) bytes."""
    def too_large() -> HTTPException:
        return HTTPException(413, f"request body is over the server's limit of {max_body_mb:g} MiB "
                                  f"(serve-env --max-body-mb {max_body_mb:g}); send fewer records a "
                                  f"request, or start the server with a larger --max-body-mb.")

    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise too_large()
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > max_bytes:
            raise too_large()
    return bytes(buf)


def _finite(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"number {text} is out of range for a float")
    return v


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_body(raw: bytes) -> Any:
    """The JSON body; HTTPException(400) if it is not strict JSON (NaN, 1e999, nesting past MAX_DEPTH)."""
    hint = 'send one record, {"records": [...]}, or a NeMo Gym verify request.'
    try:
        body = json.loads(raw, parse_float=_finite, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise HTTPException(400, f"request body is not valid JSON ({e}); {hint}") from None
    if _depth(body) > MAX_DEPTH:
        raise HTTPException(400, f"request body nests arrays/objects deeper than {MAX_DEPTH} levels; {hint}")
    return body


def _depth(obj: Any) -> int:
    """Nesting depth of a parsed JSON value (iterative: the value may be deep)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d)
            if d <= MAX_DEPTH:
                stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v)
                             if isinstance(c, dict | list))
    return deepest


def plan(body: Any, env_name: str) -> tuple[list[Sample], Render]:
    """The samples a request asks to score, and how to build its answer from their scores;
    HTTPException(422) naming the field when the body is none of the documented shapes."""
    if not isinstance(body, dict):
        raise HTTPException(422, "request body must be a JSON object: one record, "
                                 '{"records": [...]}, or a NeMo Gym verify request.')
    if "responses_create_params" in body or isinstance(body.get("response"), dict):
        sample = gym_sample(body, env_name)
        echo = {k: v for k, v in body.items() if k not in (*OUTPUT_KEYS, "failure_reason")}

        def gym_out(scores: list[Score]) -> dict[str, Any]:
            (s,) = scores
            extra = {"failure_reason": s.error} if s.error is not None else {}
            return {**echo, "reward": s.reward, "reward_components": dict(s.components), "error": s.error,
                    **extra}
        return [sample], gym_out
    if "records" in body and "response" not in body:
        records = _check_batch(body["records"])
        return ([record_to_sample(r, env_name) for r in records],
                lambda scores: {"records": [scored_record(r, s) for r, s in zip(records, scores)]})
    try:
        record = check_record(body)
    except RecordError as e:
        raise HTTPException(422, str(e)) from None
    return [record_to_sample(record, env_name)], lambda scores: scored_record(record, scores[0])


def _check_batch(records: Any) -> list[dict[str, Any]]:
    if not isinstance(records, list):
        raise HTTPException(422, f"'records' must be a list of records, got {type(records).__name__}.")
    for i, r in enumerate(records):
        try:
            check_record(r)
        except RecordError as e:
            raise HTTPException(422, f"records[{i}]: {e}") from None
    return records


def gym_sample(body: dict[str, Any], default_env: str) -> Sample:
    """The sample for a NeMo Gym verify request; raises HTTPException(422) naming the field."""
    params, resp = body.get("responses_create_params"), body.get("response")
    if not isinstance(params, dict):
        raise HTTPException(422, "'responses_create_params' is required and must be an object (the OpenAI "
                                 "Responses create params of the rollout, e.g. {\"input\": [...]}).")
    if not isinstance(resp, dict) or not isinstance(resp.get("output"), list):
        raise HTTPException(422, "'response' must be an OpenAI Responses object with an 'output' list "
                                 "(e.g. {\"output\": [{\"type\": \"message\", \"role\": \"assistant\", "
                                 "\"content\": [{\"type\": \"output_text\", \"text\": \"...\"}]}]}).")
    env = body.get("env")
    if env is not None and not isinstance(env, str):
        raise HTTPException(422, f"'env' must be an environment name (string), got {type(env).__name__}.")
    text = response_text(resp["output"])
    fields = {k: v for k, v in body.items() if k not in (*GYM_KEYS, *RESERVED_KEYS, *OUTPUT_KEYS)}
    return Sample([], [], [], text, "stop", 0, env or default_env, fields, prompt_text=_prompt_text(params))


def response_text(output: list[Any]) -> str:
    """Assistant text of a Responses `output` list; function calls as <tool_call> tags."""
    parts: list[str] = []
    for i, item in enumerate(output):
        if not isinstance(item, dict):
            raise HTTPException(422, f"response.output[{i}] must be an object, got {type(item).__name__}.")
        kind = item.get("type")
        if kind == "message":
            parts += message_texts(item)
        elif kind == "function_call":
            args = item.get("arguments")
            try:
                args = json.loads(args) if isinstance(args, str) else args
            except json.JSONDecodeError:
                pass  # kept as the raw string: the tool_call env scores malformed arguments 0
            call = {"name": item.get("name"), "arguments": args}
            parts.append(f"<tool_call>{json.dumps(call)}</tool_call>")
    return "\n".join(parts)


def _prompt_text(params: dict[str, Any]) -> str:
    inp = params.get("input")
    if isinstance(inp, str):
        return inp
    if isinstance(inp, list):
        users = [m for m in inp if isinstance(m, dict) and m.get("role") == "user"]
        return "\n".join(str(m.get("content")) for m in users)
    return ""


@dataclass
class _Job:
    samples: Sequence[Sample]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[Score]]


class _Batcher:
    """One thread owns the scorer: it scores everything queued since its last call in one go.

    `pending` (samples admitted and not yet answered) and `rejected` are read and written on
    the event loop only, so they need no lock; the thread hands results back through it."""

    def __init__(self, scorer: Scorer):
        self.scorer = scorer
        self.totals = dict.fromkeys(METRIC_KEYS, 0.0)
        self.pending = 0
        self.rejected = 0
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="env-server-batcher", daemon=True)
        self._thread.start()

    async def score(self, samples: Sequence[Sample]) -> list[Score]:
        loop = asyncio.get_running_loop()
        job = _Job(samples, loop, loop.create_future())
        self.pending += len(samples)  # given back in _resolve, even if the client has gone
        self._queue.put(job)
        return await job.future

    def busy(self, max_queue: int) -> HTTPException:
        """The 503 for a full queue; Retry-After ≈ seconds to score what is pending, at the rate so far."""
        self.rejected += 1
        done = self.totals["verifier/samples"]
        per_sample_s = self.totals["verifier/seconds"] / done if done else 0.01
        retry = min(RETRY_AFTER_MAX_S, max(1, math.ceil(self.pending * per_sample_s)))
        return HTTPException(503, f"the server is busy: {self.pending} samples are queued or being scored, "
                                  f"the most it holds (serve-env --max-queue {max_queue}). Retry after "
                                  f"{retry}s, or run more servers or workers.",
                             headers={"Retry-After": str(retry)})

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self.scorer.close()

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            jobs, n = [first], len(first.samples)
            stop = False
            while n < MAX_MERGED:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                jobs.append(job)
                n += len(job.samples)
            scores = self.scorer.score([s for j in jobs for s in j.samples])  # never raises
            for k, v in scores.metrics.items():
                self.totals[k] = self.totals.get(k, 0.0) + v
            start = 0
            for j in jobs:
                part, start = scores[start:start + len(j.samples)], start + len(j.samples)
                j.loop.call_soon_threadsafe(self._resolve, j, part)
            if stop:
                return

    def _resolve(self, job: _Job, scores: list[Score]) -> None:
        self.pending -= len(job.samples)
        if not job.future.done():  # the client may have gone away
            job.future.set_result(scores)


# ------------------------------------------------------------------ OpenAPI schema (GET /openapi.json)
# Written out rather than generated from pydantic models: the request is one of three shapes
# told apart by which keys are present (see `plan`), and both records and Gym bodies carry
# arbitrary env fields. tests/integration/test_env_server_fuzz.py fuzzes the server against it.

_ENV = {"type": ["string", "null"], "description": "environment name; overrides serve-env --env"}
_RECORD = {
    "type": "object", "required": ["response"],
    "properties": {"response": {"type": "string", "description": "the model's answer text"}, "env": _ENV,
                   "id": {"description": "passed through"}, "prompt": {"description": "passed through"}},
    "additionalProperties": True,
    "description": "a verify record; keys other than id, env, prompt, response are env fields",
}
_SCORED = {
    "type": "object", "required": ["reward", "reward_components", "error"],
    "properties": {"reward": {"type": "number"},
                   "reward_components": {"type": "object", "additionalProperties": {"type": "number"}},
                   "error": {"type": ["string", "null"], "description": "why the reward is 0; null if scored"}},
    "additionalProperties": True,
}
_GYM = {
    "type": "object", "required": ["responses_create_params", "response"],
    "properties": {
        "responses_create_params": {"type": "object", "description": "OpenAI Responses create params"},
        "response": {"type": "object", "required": ["output"], "description": "OpenAI Responses object",
                     "properties": {"output": {"type": "array", "items": {"type": "object"}}}},
        "env": _ENV,
    },
    "additionalProperties": True, "description": "NeMo Gym BaseVerifyRequest; other keys are env fields",
}
_NOT_GYM = {"not": {"required": ["responses_create_params"]}}
VERIFY_REQUEST = {"requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
    {**_RECORD, "title": "Record", **_NOT_GYM},
    {"title": "Batch", "type": "object", "required": ["records"], "additionalProperties": True,
     "properties": {"records": {"type": "array", "items": _RECORD}},
     "not": {"anyOf": [{"required": ["response"]}, {"required": ["responses_create_params"]}]}},
    {**_GYM, "title": "NeMoGymVerifyRequest"},
]}}}}}
_ERROR = {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}}


def _content(schema: dict[str, Any], description: str = "OK", **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}, **extra}


VERIFY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: _content({"anyOf": [
        {**_SCORED, "title": "ScoredRecord"},
        {"title": "ScoredBatch", "type": "object", "required": ["records"],
         "properties": {"records": {"type": "array", "items": _SCORED}}},
        {"title": "NeMoGymVerifyResponse", "allOf": [_GYM, _SCORED],
         "properties": {"failure_reason": {"type": "string", "description": "= error; only when set"}}},
    ]}, "the input plus reward, reward_components and error (per record for a batch)"),
    400: _content(_ERROR, "the body is not JSON (or NaN/Infinity, or nested too deep)"),
    413: _content(_ERROR, "the body is over --max-body-mb, or has more records than --max-queue"),
    422: _content(_ERROR, "JSON, but none of the request shapes; detail names the field"),
    503: _content(_ERROR, "the queue is full (--max-queue); retry after Retry-After seconds",
                  headers={"Retry-After": {"required": True, "schema": {"type": "integer", "minimum": 1},
                                           "description": "seconds"}}),
}
HEALTH_SCHEMA = {"type": "object", "required": ["status", "env", "workers", "remote"],
                 "properties": {"status": {"const": "ok"}, "env": {"type": "string"},
                                "workers": {"type": "integer"}, "remote": {"type": ["string", "null"]}}}
METRICS_SCHEMA = {"type": "object", "additionalProperties": {"type": "number"}}
