"""A worker whose Redis is unreachable: session requests get a clear 503, nothing hangs,
the routes that need no session keep working (rate limits fail open), nothing leaks."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from tests.api.wsclient import connect, run_request
from tests.conftest import PARIS_PROMPT, RunningWorker, free_port, make_settings, start_worker


@pytest.fixture(scope="module")
def cut_off() -> Iterator[RunningWorker]:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    w = start_worker(
        make_settings(
            parallel=1, redis_url=dead, rate_limit_requests="100/minute", max_concurrent_per_key=2
        )
    )
    yield w
    w.stop()


def test_session_requests_get_503_and_no_details(cut_off: RunningWorker) -> None:
    r = httpx.post(
        f"{cut_off.http}/v1/execute", json={"input": PARIS_PROMPT, "max_tokens": 2}, timeout=30
    )
    assert r.status_code == 503
    body = r.json()
    assert body["code"] == "OVERLOADED"
    assert body["error"] == "the session store is unavailable; retry shortly"
    assert "Retry-After" in r.headers
    assert "127.0.0.1" not in r.text and "redis" not in r.text.lower()
    listing = httpx.get(f"{cut_off.http}/v1/sessions", timeout=30)
    assert listing.status_code == 503


def test_the_websocket_stays_usable(cut_off: RunningWorker) -> None:
    async def run() -> None:
        async with connect(cut_off.ws) as ws:
            for _ in range(2):
                events = await run_request(ws, {"input": PARIS_PROMPT, "max_tokens": 2})
                assert events[-1]["type"] == "error"
                assert events[-1]["code"] == "OVERLOADED"

    asyncio.run(run())


def test_routes_without_sessions_keep_working(cut_off: RunningWorker) -> None:
    r = httpx.post(
        f"{cut_off.http}/v1/completions",
        json={"model": "gemma", "prompt": PARIS_PROMPT, "max_tokens": 2, "temperature": 0},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert "Paris" in r.json()["choices"][0]["text"]
