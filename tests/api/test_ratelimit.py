"""Rate limits per key (or client address) over REST and WebSocket: a real server on the
fake engine (long answers, 10 ms a token), since this is the limiter's logic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.wsclient import connect, recv_event, run_request, send
from tests.conftest import PARIS_PROMPT, RunningWorker, make_settings, start_fake_worker
from tests.fake_engine import repeating

KEY_A = "rate-key-a-0123456789"
KEY_B = "rate-key-b-0123456789"
ASK = {"input": PARIS_PROMPT, "max_tokens": 2, "temperature": 0}


@pytest.fixture
def limited() -> Iterator[RunningWorker]:
    w = fake(make_settings(api_keys=[KEY_A, KEY_B], rate_limit_requests="2 per 3 seconds"))
    yield w
    w.stop()


def fake(settings: Any) -> RunningWorker:
    return start_fake_worker(settings, slots=2, script=repeating(" x"), token_delay=0.01)


def post(worker: RunningWorker, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{worker.http}/v1/execute",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )


def test_request_over_the_limit_is_429_with_retry_after(limited: RunningWorker) -> None:
    assert post(limited, KEY_A, ASK).status_code == 200
    assert post(limited, KEY_A, ASK).status_code == 200
    refused = post(limited, KEY_A, ASK)
    assert refused.status_code == 429
    body = refused.json()
    assert body["code"] == "RATE_LIMITED"
    retry = int(refused.headers["Retry-After"])
    assert 1 <= retry <= 3
    assert refused.headers["RateLimit-Limit"] == "2"
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert int(refused.headers["RateLimit-Reset"]) == retry
    assert body["retry_after"] == retry
    # another key has its own budget
    assert post(limited, KEY_B, ASK).status_code == 200
    # once the window has moved on, the client is served again
    time.sleep(retry + 0.2)
    assert post(limited, KEY_A, ASK).status_code == 200


async def test_websocket_gets_rate_limited_and_keeps_the_connection(
    limited: RunningWorker,
) -> None:
    headers = {"Authorization": f"Bearer {KEY_A}"}
    async with connect(limited.ws, additional_headers=headers) as ws:
        for _ in range(2):
            assert (await run_request(ws, ASK))[-1]["type"] == "result"
        refused = await run_request(ws, {**ASK, "request_id": "over"})
        assert [e["type"] for e in refused] == ["error"]
        assert refused[0]["code"] == "RATE_LIMITED"
        assert refused[0]["request_id"] == "over"
        assert refused[0]["retry_after"] >= 1
        await asyncio.sleep(refused[0]["retry_after"] + 0.2)
        # same connection, next allowed request works
        assert (await run_request(ws, ASK))[-1]["type"] == "result"


def test_token_limit_refuses_once_the_tokens_are_used() -> None:
    w = fake(make_settings(rate_limit_tokens="10 per 3 seconds"))
    try:
        body = {**ASK, "max_tokens": 8}
        first = httpx.post(f"{w.http}/v1/execute", json=body, timeout=60)
        assert first.json()["usage"]["completion_tokens"] == 8
        second = httpx.post(f"{w.http}/v1/execute", json=body, timeout=60)
        assert second.status_code == 200  # 2 tokens were left: admitted, and it uses them up
        third = httpx.post(f"{w.http}/v1/execute", json=body, timeout=60)
        assert third.status_code == 429
        assert "token" in third.json()["error"]
    finally:
        w.stop()


async def test_concurrent_generations_per_client_are_capped() -> None:
    w = fake(make_settings(max_concurrent_per_key=1))
    try:
        async with connect(w.ws) as a, connect(w.ws) as b:
            await send(a, {**ASK, "max_tokens": 64})
            assert (await recv_event(a))["type"] == "session"
            refused = await run_request(b, ASK)
            assert refused[-1]["code"] == "RATE_LIMITED"
            while (await recv_event(a))["type"] != "result":
                pass
            # the first one ended: the client may start another
            assert (await run_request(b, ASK))[-1]["type"] == "result"
    finally:
        w.stop()


async def test_tokens_of_a_client_that_hangs_up_still_count() -> None:
    w = fake(make_settings(rate_limit_tokens="10 per 30 seconds"))
    try:
        async with connect(w.ws) as ws:
            await send(ws, {**ASK, "max_tokens": 200})
            n_tokens = 0
            while n_tokens < 12:
                n_tokens += (await recv_event(ws))["type"] == "token"
        # gone mid-stream, past the budget: once the engine has stopped it (within a step),
        # its tokens are charged all the same
        await asyncio.sleep(0.5)
        async with connect(w.ws) as ws:
            events = await run_request(ws, ASK)
        assert events[-1].get("code") == "RATE_LIMITED", events[-1]
    finally:
        w.stop()
