"""Ollama's wire format over plain HTTP: the stream's lines, errors, cancel, limits, metrics."""

from __future__ import annotations

import json
import signal
import time

import httpx
import pytest

from tests.api.test_metrics import scrape, value
from tests.conftest import PARIS_PROMPT, RunningWorker, make_settings, spawn_daemon, start_worker

pytestmark = pytest.mark.usefixtures("wait_idle")

DURATIONS = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")


def test_generate_streams_ndjson_by_default(worker: RunningWorker) -> None:
    body = {"model": "x", "prompt": PARIS_PROMPT, "options": {"temperature": 0, "num_predict": 6}}
    with httpx.stream("POST", f"{worker.http}/api/generate", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    last = lines[-1]
    assert last["response"] == "" and last["done_reason"] == "length"
    assert last["prompt_eval_count"] == 13 and last["eval_count"] == 6
    assert all(isinstance(last[k], int) for k in DURATIONS)
    assert last["created_at"].endswith("Z") and last["model"].endswith(":latest")
    assert "Paris" in "".join(line["response"] for line in lines)


def test_an_empty_request_loads_the_model(worker: RunningWorker) -> None:
    r = httpx.post(f"{worker.http}/api/generate", json={"model": "x", "stream": False})
    assert r.status_code == 200 and r.json()["done_reason"] == "load" and r.json()["done"]
    r = httpx.post(f"{worker.http}/api/chat", json={"model": "x", "messages": [], "stream": False})
    assert r.json()["message"] == {"role": "assistant", "content": ""}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"not json", 400),
        (b"[1, 2]", 400),
        (b'{"prompt": 5}', 400),
        (b'{"prompt": "x", "options": {"num_predict": 0}}', 400),
        (b'{"prompt": "x", "options": {"num_predict": 100000}}', 400),
        (b'{"prompt": "x", "think": true}', 400),
        (b'{"prompt": "x", "format": {"type": "object", "patternProperties": {"a": {}}}}', 400),
    ],
)
def test_errors_are_ollamas_shape(worker: RunningWorker, body: bytes, status: int) -> None:
    r = httpx.post(
        f"{worker.http}/api/generate", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == status
    payload = r.json()
    assert list(payload) == ["error"] and isinstance(payload["error"], str) and payload["error"]
    assert "/" not in payload["error"] and "Traceback" not in payload["error"]


def test_a_client_that_leaves_cancels_its_generation(worker: RunningWorker) -> None:
    before = value(scrape(worker), "cancellations_total")
    body = {"prompt": "Count: 1, 2, 3,", "options": {"num_predict": 500}}
    with httpx.stream("POST", f"{worker.http}/api/generate", json=body, timeout=60) as r:
        lines = r.iter_lines()
        next(lines)
        next(lines)
    deadline = time.monotonic() + 10
    while worker.ready_body()["active"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.ready_body()["active"] == 0
    assert value(scrape(worker), "cancellations_total") == before + 1


def test_generations_are_counted_under_their_transport(worker: RunningWorker) -> None:
    def count() -> float:
        return value(
            scrape(worker), "generations_total", transport="ollama", finish_reason="length"
        )

    before = count()
    body = {"prompt": PARIS_PROMPT, "options": {"num_predict": 2}, "stream": False}
    assert httpx.post(f"{worker.http}/api/generate", json=body, timeout=60).status_code == 200
    assert count() == before + 1


def test_rate_limits_apply_with_ollamas_error_shape() -> None:
    limited = start_worker(make_settings(parallel=1, rate_limit_requests="2/minute"))
    try:
        body = {"prompt": PARIS_PROMPT, "options": {"num_predict": 1}, "stream": False}
        codes = [
            httpx.post(f"{limited.http}/api/generate", json=body, timeout=60) for _ in range(3)
        ]
        assert [r.status_code for r in codes] == [200, 200, 429]
        assert int(codes[2].headers["retry-after"]) > 0
        assert list(codes[2].json()) == ["error"]
    finally:
        limited.stop()


def test_a_foreign_web_page_cannot_post_a_generation(worker: RunningWorker) -> None:
    """A cross-site text/plain post needs no CORS preflight: it must not be read as JSON."""
    body = b'{"prompt": "hi", "stream": false, "options": {"num_predict": 2}}'
    plain = {"content-type": "text/plain"}
    foreign = httpx.post(
        f"{worker.http}/api/generate",
        content=body,
        headers={**plain, "origin": "https://evil.example"},
        timeout=60,
    )
    assert foreign.status_code == 400 and list(foreign.json()) == ["error"]
    own = httpx.post(
        f"{worker.http}/api/generate",
        content=body,
        headers={**plain, "origin": worker.http},
        timeout=60,
    )
    assert own.status_code == 200, own.text


def test_a_body_is_json_whatever_its_content_type(worker: RunningWorker) -> None:
    # curl -d '{...}', as Ollama's docs write it, sends application/x-www-form-urlencoded.
    body = b'{"prompt": "Question: What is the capital of France?\\nAnswer:", "stream": false,'
    body += b' "options": {"temperature": 0, "num_predict": 3}}'
    form = {"content-type": "application/x-www-form-urlencoded"}
    r = httpx.post(f"{worker.http}/api/generate", content=body, headers=form, timeout=60)
    assert r.status_code == 200, r.text
    assert "Paris" in r.json()["response"]


def test_a_drain_ends_a_stream_with_one_error_line_and_refuses_new_work() -> None:
    proc, port = spawn_daemon({"GEMMA_DRAIN_GRACE_SECONDS": "0.5"}, "--n-ctx", "1024")
    base = f"http://127.0.0.1:{port}"
    try:
        body = {"prompt": "Count: 1, 2, 3,", "options": {"num_predict": 900, "temperature": 0}}
        with httpx.stream("POST", f"{base}/api/generate", json=body, timeout=60) as r:
            lines = r.iter_lines()
            assert json.loads(next(lines))["done"] is False
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 5
            while httpx.get(f"{base}/ready").status_code != 503:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            refused = httpx.post(f"{base}/api/generate", json={"prompt": "hi", "stream": False})
            assert refused.status_code == 503 and list(refused.json()) == ["error"]
            rest = [json.loads(line) for line in lines if line]
        assert rest and all(not line.get("done") for line in rest)  # never finished
        assert list(rest[-1]) == ["error"] and "shutting down" in rest[-1]["error"]
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
