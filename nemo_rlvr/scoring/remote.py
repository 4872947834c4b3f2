"""Remote scorer: scores samples through an env server (`nemo-rlvr serve-env`) over HTTP.

Same interface as the local pool (`score` -> `Scores`, `close`); `make_scorer` picks it when
`env.url` is set. Each `score` call POSTs the batch as `{"records": [...]}` to
`<env.url>/verify`; a failed request (connection error, timeout, 5xx) is retried
`env.max_retries` times with exponential backoff; if it still fails every sample of the
batch gets reward 0 with `error` set. Nothing raises into the caller.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from typing import Any

import httpx

from nemo_rlvr.config import EnvConfig
from nemo_rlvr.scoring.base import METRIC_KEYS, Counters, Scores
from nemo_rlvr.types import Sample, Score

MAX_BATCH = 512
"""Records per request; a larger score() call is sent as several requests, in order."""
_BACKOFF_S = 0.5
_BACKOFF_MAX_S = 8.0


class RemoteScorer:
    """POSTs batches to `cfg.url + "/verify"`; the server runs the pool (timeouts, crashes)."""

    def __init__(self, cfg: EnvConfig, *, request_timeout_s: float | None = None):
        if not cfg.url:
            raise ValueError("env.url is not set; RemoteScorer needs the env server's base URL, "
                             "e.g. env.url=http://127.0.0.1:8000 (start one with `nemo-rlvr serve-env`).")
        self.cfg = cfg
        self.url = cfg.url.rstrip("/") + "/verify"
        self.request_timeout_s = request_timeout_s
        """Read timeout per request; None: 60 s + timeout_s * (1 + max_retries) * ceil(n / workers)
        with `workers` from the server's /health (the most a healthy server can take)."""
        self._server_workers: int | None = None
        self._client = httpx.Client(timeout=httpx.Timeout(10.0, connect=5.0))

    def score(self, samples: Sequence[Sample]) -> Scores:
        """Scores in order; `.metrics` are this call's counters. `verifier/crashes` happen
        server-side and are not seen here; `verifier/remote_failures` counts requests that
        failed for good."""
        t0 = time.perf_counter()
        self._stats = Counters((*METRIC_KEYS, "verifier/remote_failures"))
        out: list[Score] = []
        for start in range(0, len(samples), MAX_BATCH):
            out += self._score_batch(samples[start:start + MAX_BATCH])
        self._stats.add_batch(out, time.perf_counter() - t0)
        self._stats["verifier/timeouts"] += sum((s.error or "").startswith("timeout") for s in out)
        return Scores(out, self._stats)

    def close(self) -> None:
        self._client.close()

    # -------------------------------------------------------------- one request

    def _score_batch(self, samples: Sequence[Sample]) -> list[Score]:
        records, bad = self._records(samples)
        scores: list[Score | None] = [bad.get(i) for i in range(len(samples))]
        todo = [i for i in range(len(samples)) if i not in bad]
        if todo:
            got = self._post([records[i] for i in todo])
            for i, s in zip(todo, got):
                scores[i] = s
        return [s if s is not None else Score(0.0, {}, "remote verifier returned no score") for s in scores]

    def _records(self, samples: Sequence[Sample]) -> tuple[list[dict[str, Any] | None], dict[int, Score]]:
        """Verify records for the samples; those whose fields are not JSON get a Score here."""
        records: list[dict[str, Any] | None] = []
        bad: dict[int, Score] = {}
        for i, s in enumerate(samples):
            rec = {**s.fields, "id": i, "env": s.env or self.cfg.name, "prompt": s.prompt_text,
                   "response": s.text}
            try:
                json.dumps(rec)
            except (TypeError, ValueError) as e:
                bad[i] = Score(0.0, {}, f"env fields cannot be sent as JSON: {e}")
                rec = None
            records.append(rec)
        return records, bad

    def _post(self, records: list[dict[str, Any]]) -> list[Score]:
        timeout = self._read_timeout(len(records))
        last = ""
        attempts = self.cfg.max_retries + 1
        for attempt in range(attempts):
            if attempt:
                time.sleep(min(_BACKOFF_S * 2 ** (attempt - 1), _BACKOFF_MAX_S))
            try:
                r = self._client.post(self.url, json={"records": records},
                                      timeout=httpx.Timeout(timeout, connect=5.0))
            except httpx.HTTPError as e:
                last = f"{type(e).__name__}: {e}"
                continue
            if r.status_code >= 500:
                last = f"HTTP {r.status_code}: {r.text[:200]}"
                continue
            if r.status_code != 200:  # the request itself is wrong: retrying will not help
                last = f"HTTP {r.status_code}: {r.text[:300]}"
                break
            try:
                return _parse_scores(r.json(), len(records))
            except (ValueError, KeyError, TypeError) as e:
                last = f"bad response body ({e})"
                break
        self._stats["verifier/remote_failures"] += 1
        err = f"remote verifier {self.url} failed after {attempt + 1} attempt(s): {last}"
        return [Score(0.0, {}, err) for _ in records]

    def _read_timeout(self, n: int) -> float:
        if self.request_timeout_s is not None:
            return self.request_timeout_s
        if self._server_workers is None:
            try:
                r = self._client.get(self.url[: -len("/verify")] + "/health", timeout=5.0)
                self._server_workers = max(1, int(r.json().get("workers") or 1))
            except (httpx.HTTPError, ValueError, TypeError, AttributeError):
                pass  # unknown this time: assume one worker, ask again next call
        workers = self._server_workers or 1
        return 60.0 + self.cfg.timeout_s * (1 + self.cfg.max_retries) * math.ceil(n / workers)


def _parse_scores(body: Any, n: int) -> list[Score]:
    recs = body["records"]
    if not isinstance(recs, list):
        raise ValueError(f"'records' is a {type(recs).__name__}, not a list")
    if len(recs) != n:
        raise ValueError(f"expected {n} records, got {len(recs)}")
    return [Score(float(r["reward"]),
                  {str(k): float(v) for k, v in (r.get("reward_components") or {}).items()},
                  r.get("error")) for r in recs]
