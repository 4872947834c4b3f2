"""`nemo-rlvr serve-env` for a multi-turn environment, in NeMo Gym's resources-server shape, so a
NeMo Gym agent can roll out against our environments:

    POST /seed_session  body: the record's env fields -> {} and a `session` cookie (env.start)
    POST /{tool_name}   body: the call's arguments    -> {"output": ...} (the env's tool_<name>;
                        404 for an unknown tool, 422 for arguments it does not take, 400 without a
                        session; a tool that raises answers {"output": "error: ..."} like in training)
    POST /verify        a NeMo Gym verify request with the session cookie -> the body plus `reward`
                        and `reward_components` (env.score on the last assistant message's text)

Sessions live in the server process (one dict, capped at `max_sessions`: the oldest is dropped);
/verify ends its session. Requests without a session cookie keep the single-turn /verify.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import OrderedDict
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response

from nemo_rlvr.envs.multiturn import ToolError

COOKIE = "session"


class Sessions:
    def __init__(self, env: Any, max_sessions: int = 10_000):
        self.env, self.max_sessions = env, max_sessions
        self.states: OrderedDict[str, Any] = OrderedDict()
        self.lock = asyncio.Lock()

    def get(self, request: Request) -> Any:
        sid = request.cookies.get(COOKIE)
        if sid not in self.states:
            raise HTTPException(400, "no session: POST /seed_session first and send its 'session' cookie back")
        return self.states[sid]

    def has(self, request: Request) -> bool:
        return request.cookies.get(COOKIE) in self.states


def add_session_routes(app: FastAPI, sessions: Sessions, read_json) -> None:
    """The /seed_session and tool routes; `read_json(request)` reads a JSON object body (the
    server's size-limited, strict reader)."""

    @app.post("/seed_session")
    async def seed_session(request: Request, response: Response) -> dict[str, Any]:
        fields = await read_json(request)
        try:
            state = sessions.env.start(fields)
        except (KeyError, TypeError, ValueError) as e:
            raise HTTPException(422, f"the environment cannot start an episode from these fields: "
                                     f"{type(e).__name__}: {e}") from None
        sid = uuid.uuid4().hex
        async with sessions.lock:
            sessions.states[sid] = state
            while len(sessions.states) > sessions.max_sessions:
                sessions.states.popitem(last=False)
        response.set_cookie(COOKIE, sid)
        return {}

    @app.post("/{tool_name}")
    async def tool(tool_name: str, request: Request) -> dict[str, Any]:
        if getattr(sessions.env, f"tool_{tool_name}", None) is None:
            raise HTTPException(404, f"no tool {tool_name!r}; this environment has "
                                     f"{sorted(n[5:] for n in dir(sessions.env) if n.startswith('tool_'))}")
        state = sessions.get(request)
        args = await read_json(request)
        try:
            return {"output": sessions.env.run_tool(state, tool_name, args)}
        except ToolError as e:  # the tool's own failure is an answer, as the model sees it in training
            if e.kind == "arguments":
                raise HTTPException(422, f"arguments of {tool_name}: {e}") from None
            return {"output": f"error: {e}"}


def session_verify(sessions: Sessions, request: Request, body: dict[str, Any], final_text: str) -> dict[str, Any]:
    state = sessions.states.pop(request.cookies[COOKIE])
    score = sessions.env.score(state, final_text)
    out = {**body, "reward": score.reward, "reward_components": score.components}
    if score.error:
        out |= {"error": score.error, "failure_reason": score.error}
    return json.loads(json.dumps(out, default=str))
