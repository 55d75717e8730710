"""REST endpoints against the real model."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import httpx
import pytest

from tests.conftest import PARIS_PROMPT, RunningWorker, make_settings, start_worker

pytestmark = pytest.mark.usefixtures("wait_idle")


def post(worker: RunningWorker, body: Any, **kw: Any) -> httpx.Response:
    return httpx.post(f"{worker.http}/v1/execute", json=body, timeout=60, **kw)


def test_health(worker: RunningWorker) -> None:
    r = httpx.get(f"{worker.http}/health")
    assert r.status_code == 200
    assert r.json()["status"] == "healthy"
    assert r.json()["version"]


def test_ready_reports_the_model(worker: RunningWorker) -> None:
    r = httpx.get(f"{worker.http}/ready")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ready"
    assert body["model_loaded"] is True
    assert body["model_file"].endswith(".gguf")
    assert "/" not in body["model_file"]  # no directories from an open route
    assert body["model"]["architecture"] == "gemma3"
    assert body["slots"] == worker.settings.parallel


def test_root_lists_endpoints(worker: RunningWorker) -> None:
    body = httpx.get(f"{worker.http}/").json()
    assert body["name"] == "FazAI Gemma Worker"
    assert body["endpoints"]["websocket"] == "WS /ws"
    assert body["worker_id"] == worker.settings.replica_name
    # the suite runs the deterministic kernels (tests/conftest.py)
    assert body["kernels"]["batch_invariant"] is True
    assert body["kernels"]["repack_weights"] is False


def test_docs_and_openapi(worker: RunningWorker) -> None:
    assert httpx.get(f"{worker.http}/docs").status_code == 200
    schema = httpx.get(f"{worker.http}/openapi.json").json()
    assert "/v1/execute" in schema["paths"]
    assert "/ready" in schema["paths"]


def test_execute_answers_paris(worker: RunningWorker) -> None:
    r = post(worker, {"input": PARIS_PROMPT, "max_tokens": 8, "temperature": 0})
    assert r.status_code == 200
    body = r.json()
    assert "Paris" in body["result"]
    assert body["status"] == "success"
    assert body["origin"] == "local"
    assert body["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 8
    assert body["inference_time_ms"] > 0
    assert body["session_id"] and body["request_id"]


def test_execute_stop_string(worker: RunningWorker) -> None:
    body = post(
        worker, {"input": PARIS_PROMPT, "max_tokens": 30, "temperature": 0, "stop": ["\n"]}
    ).json()
    assert body["finish_reason"] == "stop"
    assert "\n" not in body["result"]
    assert "Paris" in body["result"]


def test_seeded_sampling_is_reproducible(worker: RunningWorker) -> None:
    req = {"input": "Once upon a time", "max_tokens": 12, "temperature": 1.0, "seed": 1234}
    a = post(worker, req).json()["result"]
    b = post(worker, req).json()["result"]
    assert a == b


def test_execute_stream_is_ndjson_events(worker: RunningWorker) -> None:
    body = {"input": PARIS_PROMPT, "max_tokens": 8, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{worker.http}/v1/execute", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        events = [json.loads(line) for line in r.iter_lines() if line]
    assert events[0]["type"] == "session"
    assert events[-1]["type"] == "result"
    tokens = "".join(e["content"] for e in events if e["type"] == "token")
    assert tokens == events[-1]["content"]
    assert "Paris" in tokens


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"max_tokens": 3}, 422, "INVALID_REQUEST"),
        ({"input": ""}, 422, "INVALID_REQUEST"),
        ({"input": "x", "max_tokens": -1}, 422, "INVALID_REQUEST"),
        ({"input": "x", "max_tokens": 99_999_999}, 422, "INVALID_REQUEST"),
        ({"input": "x", "temperature": "warm"}, 422, "INVALID_REQUEST"),
        ({"input": "x", "top_p": 2}, 422, "INVALID_REQUEST"),
        ({"input": "x", "stop": "no"}, 422, "INVALID_REQUEST"),
        ({"input": "a" * 300_000}, 422, "INVALID_REQUEST"),  # over max_input_chars
        ({"input": "x", "system": "a" * 300_000}, 422, "INVALID_REQUEST"),
        ({"input": "a" * (2 * 1024 * 1024)}, 413, "PAYLOAD_TOO_LARGE"),
        ({"input": "word " * 1200, "max_tokens": 8}, 400, "CONTEXT_OVERFLOW"),
        ({"input": "word " * 1200, "max_tokens": 8, "stream": True}, 400, "CONTEXT_OVERFLOW"),
    ],
)
def test_execute_errors(worker: RunningWorker, body: Any, status: int, code: str) -> None:
    r = post(worker, body)
    assert r.status_code == status, r.text
    err = r.json()
    assert err["status"] == "error"
    assert err["code"] == code
    assert "Traceback" not in r.text and "/work/" not in r.text


def test_context_overflow_names_the_sizes(worker: RunningWorker) -> None:
    err = post(worker, {"input": "word " * 1200, "max_tokens": 8}).json()
    assert err["n_ctx"] == worker.settings.n_ctx
    assert err["n_prompt_tokens"] > worker.settings.n_ctx


def test_invalid_json_body(worker: RunningWorker) -> None:
    r = httpx.post(
        f"{worker.http}/v1/execute",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400
    assert r.json()["code"] == "INVALID_JSON"


@pytest.mark.parametrize("body", ["[1, 2]", '"text"', "42"])
def test_body_that_is_not_an_object_is_invalid_json(worker: RunningWorker, body: str) -> None:
    r = httpx.post(
        f"{worker.http}/v1/execute", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert r.json()["code"] == "INVALID_JSON"


def test_client_disconnect_frees_the_engine(worker: RunningWorker) -> None:
    body = json.dumps({"input": PARIS_PROMPT, "max_tokens": 900}).encode()
    with socket.create_connection(("127.0.0.1", worker.settings.port)) as s:
        s.sendall(
            b"POST /v1/execute HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        deadline = time.monotonic() + 10
        while worker.ready_body()["active"] != 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    deadline = time.monotonic() + 2
    while worker.ready_body()["active"] != 0:
        assert time.monotonic() < deadline, "generation kept running after the client left"
        time.sleep(0.02)


def test_cors_is_off_by_default(worker: RunningWorker) -> None:
    r = httpx.options(
        f"{worker.http}/v1/execute",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in r.headers


def test_cors_allows_configured_origins() -> None:
    w = start_worker(make_settings(parallel=1, cors_origins=["http://app.example"]))
    try:
        headers = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}
        r = httpx.options(f"{w.http}/v1/execute", headers=headers)
        assert r.headers["access-control-allow-origin"] == "http://app.example"
        headers["Origin"] = "http://evil.example"
        r = httpx.options(f"{w.http}/v1/execute", headers=headers)
        assert "access-control-allow-origin" not in r.headers
    finally:
        w.stop()
