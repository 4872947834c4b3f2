"""Env server under bad input and load: schemathesis against its OpenAPI schema, body and
queue limits, and verifiers that crash or hang (uvicorn in a subprocess, started by the CLI)."""

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
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODULE = "tests.helpers.verifier_envs"
BODY_MB = 0.01  # 10,485 bytes
MAX_BYTES = int(BODY_MB * 2**20)
EXAMPLES = 200
"""Schemathesis cases per mode for POST /verify."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*flags: str) -> tuple[str, subprocess.Popen]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nemo_rlvr.scoring.cli", "serve-env", "--env", "arithmetic",
         "--env-module", MODULE, "--port", str(port), *flags],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return url, proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server did not start:\n{proc.stdout.read()}")
        time.sleep(0.1)


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def fuzz_url():
    url, proc = start_server("--workers", "1", "--timeout-s", "2")  # default body and queue limits
    yield url
    stop_server(proc)


@pytest.fixture(scope="module")
def limits_url():
    """Tiny limits: 10 KiB bodies, 2 samples queued; 1 worker, 2 s per sample."""
    url, proc = start_server("--workers", "1", "--timeout-s", "2", "--max-body-mb", str(BODY_MB),
                             "--max-queue", "2")
    yield url
    stop_server(proc)


@pytest.fixture(scope="module")
def api_schema(fuzz_url):
    return schemathesis.openapi.from_url(fuzz_url + "/openapi.json")


# Driven through hypothesis directly: schemathesis' pytest plugin (schema.parametrize) fails on
# pytest 9 (it sets `request.node._nodeid`). call_and_validate runs all built-in checks:
# not_a_server_error, status_code / content_type / response_headers / response_schema
# conformance, positive_data_acceptance (a schema-valid body gets 2xx) and
# negative_data_rejection (a schema-invalid one gets 4xx).
@pytest.mark.parametrize("method, path, mode", [
    ("POST", "/verify", GenerationMode.POSITIVE),
    ("POST", "/verify", GenerationMode.NEGATIVE),
    ("GET", "/health", GenerationMode.POSITIVE),
    ("GET", "/metrics", GenerationMode.POSITIVE),
])
def test_schemathesis_no_5xx_and_conforms(api_schema, method, path, mode):
    seen: list[int] = []

    @given(case=api_schema[path][method].as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES if path == "/verify" else 5, deadline=None, derandomize=True,
              database=None, suppress_health_check=list(HealthCheck))
    def check(case):
        seen.append(case.call_and_validate(timeout=30).status_code)

    check()
    assert seen and all(code < 500 for code in seen)
    if path == "/verify":  # both kinds of case reached the server, not just one shape
        assert (200 in seen) if mode == GenerationMode.POSITIVE else any(400 <= c < 500 for c in seen)


def test_openapi_documents_the_shapes_and_errors(fuzz_url):
    verify = httpx.get(fuzz_url + "/openapi.json").json()["paths"]["/verify"]["post"]
    body = verify["requestBody"]["content"]["application/json"]["schema"]
    assert [s["title"] for s in body["oneOf"]] == ["Record", "Batch", "NeMoGymVerifyRequest"]
    assert {"200", "400", "413", "422", "503"} <= set(verify["responses"])
    assert "Retry-After" in verify["responses"]["503"]["headers"]


# ------------------------------------------------------------------ body size


def raw_exchange(url: str, head: str, chunks: list[bytes]) -> str:
    """Send request headers and `chunks` on a socket without finishing the body; the reply's status line."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head.encode())
        for c in chunks:
            s.sendall(c)
        reply = b""
        while not reply.endswith(b"}") and (part := s.recv(65536)):  # the JSON error body ends with }
            reply += part
        return reply.decode(errors="replace")


def test_413_from_content_length_before_the_body_arrives(limits_url):
    # Claims 1 GB, sends 10 bytes: the answer can only come from the header.
    reply = raw_exchange(limits_url, "POST /verify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                     "Content-Length: 1000000000\r\n\r\n", [b'{"response'])
    assert reply.startswith("HTTP/1.1 413"), reply
    assert "--max-body-mb 0.01" in reply


def test_413_while_streaming_a_chunked_body(limits_url):
    # 3 chunks of 4 KiB (12 KiB > 10 KiB limit) and no terminating 0-chunk: the server must count bytes.
    chunk = b"1000\r\n" + b" " * 4096 + b"\r\n"
    reply = raw_exchange(limits_url, "POST /verify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                     "Transfer-Encoding: chunked\r\n\r\n", [chunk] * 3)
    assert reply.startswith("HTTP/1.1 413"), reply


def test_413_with_an_ordinary_client_and_just_under_is_fine(limits_url):
    pad = " " * (MAX_BYTES - 40)
    ok = httpx.post(limits_url + "/verify", content=f'{{"response": "1", "answer": 1}}{pad}'[:MAX_BYTES])
    assert ok.status_code == 200 and ok.json()["reward"] == 1.0
    big = '{"response": "1", "answer": 1}' + " " * MAX_BYTES

    def gen():  # no Content-Length: httpx sends it chunked
        yield big[:5000].encode()
        yield big[5000:].encode()

    for content in (big, gen()):
        r = httpx.post(limits_url + "/verify", content=content)
        assert r.status_code == 413
        assert "limit of 0.01 MiB (serve-env --max-body-mb 0.01)" in r.json()["detail"]


# ------------------------------------------------------------------ queue


def test_503_with_retry_after_when_the_queue_is_full(limits_url):
    slow = {"env": "test_sleep", "response": "x", "sleep_s": 1.0}
    with httpx.Client(timeout=30) as client, concurrent.futures.ThreadPoolExecutor(2) as ex:
        held = [ex.submit(client.post, limits_url + "/verify", json=slow) for _ in range(2)]
        deadline = time.monotonic() + 10
        while client.get(limits_url + "/metrics").json()["verifier/queued"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        r = client.post(limits_url + "/verify", json={"response": "1", "answer": 1})
        assert r.status_code == 503
        assert int(r.headers["Retry-After"]) >= 1
        assert "--max-queue 2" in r.json()["detail"]
        assert [f.result().json()["reward"] for f in held] == [1.0, 1.0]  # the admitted ones finish
        assert client.get(limits_url + "/metrics").json()["verifier/queued"] == 0
        r = client.post(limits_url + "/verify", json={"response": "1", "answer": 1})
        assert r.status_code == 200 and r.json()["reward"] == 1.0


def test_batch_larger_than_the_queue_is_413_naming_records(limits_url):
    r = httpx.post(limits_url + "/verify", json={"records": [{"response": "1"}] * 3})
    assert r.status_code == 413
    assert "'records' has 3 records" in r.json()["detail"] and "--max-queue 2" in r.json()["detail"]


# ------------------------------------------------------------------ verifiers that fail


def test_crashing_verifier_scores_zero_and_the_next_request_succeeds(limits_url):
    r = httpx.post(limits_url + "/verify", json={"id": 1, "env": "test_crash", "response": "x", "crash": True},
                   timeout=30)
    assert r.status_code == 200
    out = r.json()
    assert out["reward"] == 0.0 and out["error"].startswith("verifier crashed: worker exit code 3")
    good = httpx.post(limits_url + "/verify", json={"id": 2, "response": "3", "answer": 3})
    assert good.status_code == 200 and good.json()["reward"] == 1.0 and good.json()["error"] is None


def test_hanging_and_raising_verifiers_score_zero_and_the_server_keeps_serving(limits_url):
    hang = httpx.post(limits_url + "/verify", json={"env": "test_sleep", "response": "x", "sleep_s": 60},
                      timeout=30).json()
    assert hang["reward"] == 0.0 and hang["error"].startswith("timeout after 2")
    raised = httpx.post(limits_url + "/verify", json={"env": "test_raise", "response": "y"}).json()
    assert raised["reward"] == 0.0 and raised["error"] == "ValueError: bad response 'y'"
    m = httpx.get(limits_url + "/metrics").json()
    assert m["verifier/timeouts"] >= 1 and m["verifier/queued"] == 0
    assert httpx.post(limits_url + "/verify", json={"response": "2", "answer": 2}).json()["reward"] == 1.0


# ------------------------------------------------------------------ malformed JSON


@pytest.mark.parametrize("payload, status, needle", [
    (b'{"response": "1", "answer": NaN}', 400, "NaN is not a JSON number"),
    (b'{"response": "1", "answer": 1e999}', 400, "out of range"),
    (b'{"response": "1", "answer": ' + b"9" * 5000 + b"}", 400, "not valid JSON"),
    (b'{"response": "1", "x": ' + b"[" * 200 + b"]" * 200 + b"}", 400, "deeper than 100 levels"),
    (b"\xff\xfe", 400, "not valid JSON"),
    (b"", 400, "not valid JSON"),
    (b'{"responses_create_params": {}, "response": {"output": []}, "env": 3}', 422, "'env' must be"),
    (b'{"records": [], "responses_create_params": {}}', 422, "'response' must be an OpenAI Responses"),
])
def test_malformed_bodies_are_4xx_naming_the_problem(limits_url, payload, status, needle):
    r = httpx.post(limits_url + "/verify", content=payload, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


def test_lone_surrogate_is_scored_not_a_500(limits_url):
    r = httpx.post(limits_url + "/verify", content=b'{"response": "\\ud800", "answer": 1}',
                   headers={"content-type": "application/json"})
    assert r.status_code == 200
    assert r.json()["response"] == "\ud800" and r.json()["reward"] == 0.0
