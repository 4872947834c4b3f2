"""A small NeMo Gym-shaped resources server for tests: `/seed_session` (sets a session cookie and
seeds a key-value store from the request), tools `POST /get` and `POST /add`, and `/verify` (a
`BaseVerifyRequest`: reward 1 when the final assistant message is the sum of the `keys` and every
one of them was read with `get` in this session)."""

from __future__ import annotations

import threading
import uuid

from fastapi import FastAPI, HTTPException, Request, Response


def make_app() -> FastAPI:
    app = FastAPI()
    sessions: dict[str, dict] = {}
    app.state.sessions = sessions

    def session(request: Request) -> dict:
        sid = request.cookies.get("session")
        if sid not in sessions:
            raise HTTPException(400, "no session: call /seed_session first")
        return sessions[sid]

    @app.post("/seed_session")
    async def seed_session(request: Request, response: Response):
        body = await request.json()
        sid = uuid.uuid4().hex
        sessions[sid] = {"store": dict(body["store"]), "read": set()}
        response.set_cookie("session", sid)
        return {}

    @app.post("/get")
    async def get(request: Request):
        s, args = session(request), await request.json()
        if args.get("key") not in s["store"]:
            raise HTTPException(404, f"no key {args.get('key')!r}")
        s["read"].add(args["key"])
        return {"value": s["store"][args["key"]]}

    @app.post("/verify")
    async def verify(request: Request):
        s, body = session(request), await request.json()
        final = [c["text"] for item in body["response"]["output"] if item["type"] == "message"
                 for c in item["content"] if c["type"] == "output_text"][-1].strip()
        calls = [i for i in body["response"]["output"] if i["type"] == "function_call"]
        ok = final.lstrip("-").isdigit() and int(final) == body["answer"] and set(body["keys"]) <= s["read"]
        return {**body, "reward": float(ok), "n_calls": len(calls)}

    return app


def serve(app: FastAPI) -> tuple[str, object]:
    """Run `app` under uvicorn on a free localhost port in a thread; (base url, server to stop)."""
    import socket

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    import time

    while not server.started:
        time.sleep(0.01)
    return f"http://127.0.0.1:{port}", server
