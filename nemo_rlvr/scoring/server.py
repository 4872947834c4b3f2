"""HTTP env server (`nemo-rlvr serve-env`): our verify records and the NeMo Gym /verify shape.

    POST /verify ──► parse (one record | {"records": [...]} | NeMo Gym body) ──► samples
                        │ (event loop)                               ▲ scores
                        ▼                                            │
                    _Batcher thread: merges concurrent requests ──► pool.score(...)
    GET /health, GET /metrics

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

Every request is scored by one pool (`make_scorer`), so timeouts, crash isolation and
metrics are the same as in training. Concurrent requests are scored together: NeMo Gym
sends one /verify per rollout, many at once, and a pool fed one sample at a time would
keep only one worker busy.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, HTTPException, Request

from nemo_rlvr.config import EnvConfig
from nemo_rlvr.scoring.base import METRIC_KEYS, Scorer
from nemo_rlvr.scoring.make import make_scorer
from nemo_rlvr.scoring.records import (
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


def create_app(env_name: str, cfg: EnvConfig) -> FastAPI:
    """The env server app; the pool starts with the app (lifespan) and stops with it."""
    state: dict[str, _Batcher] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["batcher"] = _Batcher(make_scorer(cfg))
        try:
            yield
        finally:
            await asyncio.to_thread(state.pop("batcher").close)

    app = FastAPI(title=f"nemo-rlvr env server ({env_name})", lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "env": env_name, "workers": cfg.num_workers, "remote": cfg.url}

    @app.get("/metrics")
    async def metrics() -> dict[str, float]:
        """Counters since the server started (verifier/samples, errors, timeouts, crashes, seconds)."""
        return dict(state["batcher"].totals)

    @app.post("/verify")
    async def verify(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HTTPException(400, f"request body is not valid JSON ({e}); send one record, "
                                     f'{{"records": [...]}}, or a NeMo Gym verify request.') from None
        if not isinstance(body, dict):
            raise HTTPException(422, "request body must be a JSON object: one record, "
                                     '{"records": [...]}, or a NeMo Gym verify request.')
        batcher = state["batcher"]
        if "records" in body and "response" not in body:
            records = _check_batch(body["records"])
            scores = await batcher.score([record_to_sample(r, env_name) for r in records])
            return {"records": [scored_record(r, s) for r, s in zip(records, scores)]}
        if "responses_create_params" in body or isinstance(body.get("response"), dict):
            sample = gym_sample(body, env_name)
            (s,) = await batcher.score([sample])
            extra = {"failure_reason": s.error} if s.error is not None else {}
            return {**body, "reward": s.reward, "reward_components": dict(s.components), "error": s.error,
                    **extra}
        try:
            record = check_record(body)
        except RecordError as e:
            raise HTTPException(422, str(e)) from None
        (s,) = await batcher.score([record_to_sample(record, env_name)])
        return scored_record(record, s)

    return app


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
    env = body.get("env") or default_env
    if not isinstance(env, str):
        raise HTTPException(422, f"'env' must be an environment name (string), got {type(env).__name__}.")
    text = response_text(resp["output"])
    fields = {k: v for k, v in body.items() if k not in (*GYM_KEYS, *RESERVED_KEYS)}
    return Sample([], [], [], text, "stop", 0, env, fields, prompt_text=_prompt_text(params))


def response_text(output: list[Any]) -> str:
    """Assistant text of a Responses `output` list; function calls as <tool_call> tags."""
    parts: list[str] = []
    for i, item in enumerate(output):
        if not isinstance(item, dict):
            raise HTTPException(422, f"response.output[{i}] must be an object, got {type(item).__name__}.")
        kind = item.get("type")
        if kind == "message" and item.get("role", "assistant") == "assistant":
            content = item.get("content")
            if isinstance(content, str):
                parts.append(content)
                continue
            for c in content if isinstance(content, list) else []:
                if isinstance(c, dict) and c.get("type") == "output_text" and isinstance(c.get("text"), str):
                    parts.append(c["text"])
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
    """One thread owns the scorer: it scores everything queued since its last call in one go."""

    def __init__(self, scorer: Scorer):
        self.scorer = scorer
        self.totals = dict.fromkeys(METRIC_KEYS, 0.0)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="env-server-batcher", daemon=True)
        self._thread.start()

    async def score(self, samples: Sequence[Sample]) -> list[Score]:
        loop = asyncio.get_running_loop()
        job = _Job(samples, loop, loop.create_future())
        self._queue.put(job)
        return await job.future

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
                j.loop.call_soon_threadsafe(_resolve, j.future, part)
            if stop:
                return


def _resolve(future: asyncio.Future[list[Score]], scores: list[Score]) -> None:
    if not future.done():  # the client may have gone away
        future.set_result(scores)
