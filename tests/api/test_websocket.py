"""``/ws`` against the real model."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from tests.api.wsclient import connect, recv_event, run_request, send
from tests.conftest import PARIS_PROMPT, RunningWorker

pytestmark = pytest.mark.usefixtures("wait_idle")


async def test_event_order_and_tokens_concatenate(worker: RunningWorker) -> None:
    async with connect(worker.ws) as ws:
        events = await run_request(
            ws, {"input": PARIS_PROMPT, "max_tokens": 8, "temperature": 0, "request_id": "r1"}
        )
    types = [e["type"] for e in events]
    assert types[0] == "session"
    assert types[-1] == "result"
    assert "token" in types
    first_token = types.index("token")
    assert all(t == "reasoning" for t in types[1:first_token])
    assert all(t == "token" for t in types[first_token:-1])
    assert all(e["request_id"] == "r1" for e in events)
    result = events[-1]
    tokens = "".join(e["content"] for e in events if e["type"] == "token")
    assert tokens == result["content"]
    assert "Paris" in result["content"]
    assert result["status"] == "success"
    assert result["origin"] == "local"
    assert result["session_id"] == events[0]["session_id"]
    assert result["finish_reason"] == "length"
    assert result["usage"]["completion_tokens"] == 8
    assert result["usage"]["prompt_tokens"] > 5
    timings = result["timings"]
    assert timings["ttft_ms"] > 0
    assert timings["total_ms"] >= timings["ttft_ms"]
    assert timings["tokens_per_second"] > 0


async def test_a_new_session_id_is_announced_and_returned(worker: RunningWorker) -> None:
    async with connect(worker.ws) as ws:
        events = await run_request(ws, {"input": "Hello", "max_tokens": 2})
    session = events[0]
    assert (session["type"], session["new"], session["turns"]) == ("session", True, 0)
    assert str(uuid.UUID(session["session_id"], version=4)) == session["session_id"]
    assert events[-1]["session_id"] == session["session_id"]


async def test_several_requests_on_one_connection(worker: RunningWorker) -> None:
    async with connect(worker.ws) as ws:
        results = []
        for i in range(3):
            events = await run_request(
                ws, {"input": PARIS_PROMPT, "max_tokens": 4, "request_id": f"seq-{i}"}
            )
            results.append(events[-1])
    assert [r["request_id"] for r in results] == ["seq-0", "seq-1", "seq-2"]
    assert all(r["type"] == "result" for r in results)
    # temperature 0: the same prompt gives the same text each time
    assert len({r["content"] for r in results}) == 1


async def test_concurrent_requests_on_one_connection_are_multiplexed(
    worker: RunningWorker,
) -> None:
    async with connect(worker.ws) as ws:
        # Stateless: two requests on the connection's one session would be SESSION_BUSY.
        one = {"max_tokens": 6, "stateless": True}
        await send(ws, {"input": PARIS_PROMPT, "request_id": "a", **one})
        await send(ws, {"input": "Question: What is 2+2?\nAnswer:", "request_id": "b", **one})
        done: dict[str, dict[str, object]] = {}
        tokens: dict[str, str] = {"a": "", "b": ""}
        while len(done) < 2:
            event = await recv_event(ws)
            if event["type"] == "token":
                tokens[event["request_id"]] += event["content"]
            elif event["type"] == "result":
                done[event["request_id"]] = event
    assert done["a"]["content"] == tokens["a"]
    assert done["b"]["content"] == tokens["b"]


async def test_two_connections_at_once(worker: RunningWorker) -> None:
    async def one(tag: str) -> list[dict[str, object]]:
        async with connect(worker.ws) as ws:
            return await run_request(
                ws, {"input": PARIS_PROMPT, "max_tokens": 6, "request_id": tag}
            )

    a, b = await asyncio.gather(one("c1"), one("c2"))
    assert a[-1]["type"] == b[-1]["type"] == "result"
    assert a[-1]["content"] == b[-1]["content"]  # greedy: same prompt, same answer


async def test_cancel_in_flight(worker: RunningWorker) -> None:
    async with connect(worker.ws) as ws:
        await send(ws, {"input": PARIS_PROMPT, "max_tokens": 500, "request_id": "long"})
        while (await recv_event(ws))["type"] != "token":
            pass
        await send(ws, {"type": "cancel", "request_id": "long"})
        while True:
            event = await recv_event(ws)
            if event["type"] == "result":
                break
        assert event["finish_reason"] == "cancelled"
        assert event["usage"]["completion_tokens"] < 500
        # the connection is still usable
        events = await run_request(ws, {"input": PARIS_PROMPT, "max_tokens": 3})
        assert events[-1]["type"] == "result"


async def test_disconnect_mid_stream_frees_the_engine(worker: RunningWorker) -> None:
    async with connect(worker.ws) as ws:
        await send(ws, {"input": PARIS_PROMPT, "max_tokens": 900})
        while (await recv_event(ws))["type"] != "token":
            pass
        assert worker.ready_body()["active"] == 1
    # the client is gone: the slot must be free within a step or two
    deadline = time.monotonic() + 2.0
    while worker.ready_body()["active"] != 0:
        assert time.monotonic() < deadline, "generation kept running after disconnect"
        await asyncio.sleep(0.02)
    async with connect(worker.ws) as ws:
        t0 = time.monotonic()
        events = await run_request(ws, {"input": PARIS_PROMPT, "max_tokens": 2})
        assert events[-1]["timings"]["queue_ms"] < 100
        assert time.monotonic() - t0 < 5
