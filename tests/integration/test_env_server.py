"""Env server over real HTTP (uvicorn in a subprocess): our records, NeMo Gym shape, RemoteScorer."""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from nemo_rlvr.config import EnvConfig
from nemo_rlvr.scoring.remote import RemoteScorer
from nemo_rlvr.scoring.server import response_text
from nemo_rlvr.types import Sample

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODULE = "tests.helpers.verifier_envs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def gym_body(text: str, **fields) -> dict:
    """A NeMo Gym BaseVerifyRequest as its resource servers receive it."""
    return {
        "responses_create_params": {"input": [{"role": "user", "content": "What is 2+2?"}], "temperature": 0},
        "response": {
            "id": "resp_1", "created_at": 0.0, "model": "policy", "object": "response",
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "output": [
                {"id": "rs_1", "type": "reasoning", "summary": [{"type": "summary_text", "text": "think"}]},
                {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
                 "content": [{"type": "output_text", "text": text, "annotations": []}]},
            ],
        },
        **fields,
    }


@pytest.fixture(scope="module")
def server():
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nemo_rlvr.scoring.cli", "serve-env", "--env", "arithmetic",
         "--env-module", MODULE, "--port", str(port), "--workers", "2", "--timeout-s", "0.5"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server did not start:\n{proc.stdout.read()}")
        time.sleep(0.1)
    yield url, proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)


def test_health(server):
    url, _ = server
    health = httpx.get(url + "/health").json()
    assert health == {"status": "ok", "env": "arithmetic", "workers": 2, "remote": None}


def test_single_record(server):
    url, _ = server
    rec = {"id": 7, "prompt": "3+4", "response": "7", "answer": 7}
    r = httpx.post(url + "/verify", json=rec)
    assert r.status_code == 200
    assert r.json() == {**rec, "reward": 1.0, "reward_components": {"correct": 1.0}, "error": None}


def test_batch_keeps_order_and_routes_envs(server):
    url, _ = server
    recs = [{"id": i, "response": str(i), "answer": i if i % 2 else -1} for i in range(50)]
    recs[10] = {"id": 10, "env": "test_sleep", "response": "x", "sleep_s": 30}
    recs[20] = {"id": 20, "env": "test_raise", "response": "x"}
    out = httpx.post(url + "/verify", json={"records": recs}, timeout=30).json()["records"]
    assert [o["id"] for o in out] == list(range(50))
    assert out[10]["error"] == "timeout after 0.5s" and out[20]["error"] == "ValueError: bad response 'x'"
    expected = [float(i % 2) for i in range(50)]
    expected[10] = expected[20] = 0.0
    assert [o["reward"] for o in out] == expected


def test_nemo_gym_shape(server):
    url, _ = server
    body = gym_body("4", answer=4, uuid="abc")
    r = httpx.post(url + "/verify", json=body)
    assert r.status_code == 200
    out = r.json()
    assert out["reward"] == 1.0 and out["reward_components"] == {"correct": 1.0} and out["error"] is None
    assert {k: out[k] for k in body} == body  # BaseVerifyResponse echoes the request
    wrong = httpx.post(url + "/verify", json=gym_body("5", answer=4)).json()
    assert wrong["reward"] == 0.0
    missing = httpx.post(url + "/verify", json=gym_body("4")).json()  # no `answer` env field
    assert missing["reward"] == 0.0
    assert missing["failure_reason"] == missing["error"] == "missing env field 'answer'"


@pytest.mark.parametrize("payload, status, needle", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 422, "must be a JSON object"),
    (b'{"id": 1, "prompt": "p"}', 422, "no 'response' field"),
    (b'{"id": 1, "response": 5}', 422, "'response' must be a string"),
    (b'{"records": {"a": 1}}', 422, "'records' must be a list"),
    (b'{"records": [{"response": "1"}, {"id": 2}]}', 422, "records[1]: the record has no 'response' field"),
    (b'{"response": {"output": []}, "answer": 1}', 422, "'responses_create_params' is required"),
    (b'{"responses_create_params": {"input": "hi"}, "response": {"id": "r"}}', 422, "'output' list"),
    (b'{"responses_create_params": {}, "response": {"output": ["x"]}}', 422,
     "response.output[0] must be an object"),
])
def test_bad_requests_name_the_field(server, payload, status, needle):
    url, _ = server
    r = httpx.post(url + "/verify", content=payload, headers={"content-type": "application/json"})
    assert r.status_code == status
    assert needle in r.json()["detail"]


def test_concurrent_single_requests(server):
    url, _ = server
    with httpx.Client() as client, concurrent.futures.ThreadPoolExecutor(16) as ex:
        def post(i: int) -> dict:
            return client.post(url + "/verify", json={"id": i, "response": str(i), "answer": i}).json()

        outs = list(ex.map(post, range(64)))
    assert [(o["id"], o["reward"]) for o in outs] == [(i, 1.0) for i in range(64)]


def test_metrics_accumulate(server):
    url, _ = server
    before = httpx.get(url + "/metrics").json()
    batch = [{"response": "1", "answer": 1}, {"env": "test_raise", "response": "x"}]
    httpx.post(url + "/verify", json={"records": batch})
    after = httpx.get(url + "/metrics").json()
    assert after["verifier/samples"] - before["verifier/samples"] == 2
    assert after["verifier/errors"] - before["verifier/errors"] == 1


def test_remote_scorer_against_server(server):
    url, _ = server
    scorer = RemoteScorer(EnvConfig(name="arithmetic", url=url, timeout_s=0.5))
    samples = [Sample([], [], [], str(i), "stop", 0, "", {"answer": 3}) for i in range(6)]
    samples.append(Sample([], [], [], "x", "stop", 0, "test_sleep", {"sleep_s": 30}))
    samples.append(Sample([], [], [], "x", "stop", 0, "", {"bad": object()}))  # not JSON: fails alone
    out = scorer.score(samples)
    assert [s.reward for s in out] == [0, 0, 0, 1.0, 0, 0, 0, 0]
    assert out[3].components == {"correct": 1.0}
    assert out[6].error == "timeout after 0.5s"
    assert out[7].error.startswith("env fields cannot be sent as JSON")
    m = out.metrics
    assert (m["verifier/samples"], m["verifier/errors"], m["verifier/timeouts"]) == (8, 2, 1)
    scorer.close()


def test_remote_scorer_dead_url_gives_errors_in_bounded_time():
    scorer = RemoteScorer(EnvConfig(url=f"http://127.0.0.1:{free_port()}", max_retries=2))
    t0 = time.monotonic()
    out = scorer.score([Sample([], [], [], "1", "stop", 0, "arithmetic", {"answer": 1})] * 3)
    elapsed = time.monotonic() - t0
    assert all(s.reward == 0.0 and "failed after 3 attempt(s): ConnectError" in s.error for s in out)
    assert elapsed < 5  # backoff 0.5 s + 1 s
    assert out.metrics["verifier/remote_failures"] == 1
    scorer.close()


def test_remote_scorer_does_not_retry_a_4xx(server):
    url, _ = server
    scorer = RemoteScorer(EnvConfig(url=url + "/nope", max_retries=3))
    t0 = time.monotonic()
    (s,) = scorer.score([Sample([], [], [], "1", "stop", 0, "arithmetic", {})])
    assert "failed after 1 attempt(s): HTTP 404" in s.error and time.monotonic() - t0 < 2
    scorer.close()


def test_response_text_joins_messages_and_converts_function_calls():
    output = [
        {"type": "reasoning", "summary": []},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "Let me call it."}]},
        {"type": "function_call", "name": "get_weather", "arguments": '{"city": "Paris"}', "call_id": "c1"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "ignored"}]},
    ]
    assert response_text(output) == (
        'Let me call it.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>')


def test_shutdown_leaves_no_workers():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nemo_rlvr.scoring.cli", "serve-env", "--env", "arithmetic", "--port", str(port),
         "--workers", "2"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            break
        except httpx.HTTPError:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
    descendants = psutil.Process(proc.pid).children(recursive=True)
    assert len(descendants) >= 3  # forkserver + 2 workers (+ resource tracker)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0
    deadline = time.monotonic() + 10  # the forkserver and resource tracker exit on their own
    while (alive := [p for p in descendants if running(p)]):
        assert time.monotonic() < deadline, f"still running after the server exited: {alive}"
        time.sleep(0.05)
