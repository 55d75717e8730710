"""A WebSocket connection keeps its session (issue 14), on the real model."""

from __future__ import annotations

import httpx
import pytest

from tests.api.wsclient import connect, recv_event, run_request, send
from tests.conftest import RunningWorker

pytestmark = pytest.mark.usefixtures("wait_idle")

Q1 = {"input": "Question: What is the capital of France?\nAnswer:", "max_tokens": 4, "stop": ["\n"]}
Q2 = {
    "input": "\nQuestion: What is the capital of Italy?\nAnswer:",
    "max_tokens": 4,
    "stop": ["\n"],
}


def status(worker: RunningWorker, session_id: str) -> int:
    return httpx.get(f"{worker.http}/v1/sessions/{session_id}", timeout=10).status_code


def delete(worker: RunningWorker, session_id: str) -> int:
    return httpx.delete(f"{worker.http}/v1/sessions/{session_id}", timeout=10).status_code


def execute(worker: RunningWorker, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{worker.http}/v1/execute", json=body, timeout=60)


def history(worker: RunningWorker, session_id: str) -> list[dict[str, object]]:
    r = httpx.get(f"{worker.http}/v1/sessions/{session_id}", timeout=10)
    assert r.status_code == 200, r.text
    turns: list[dict[str, object]] = r.json()["history"]
    return turns


async def test_two_requests_on_one_connection_share_the_session_and_its_history(
    worker: RunningWorker,
) -> None:
    async with connect(worker.ws) as ws:
        first = await run_request(ws, Q1)
        second = await run_request(ws, Q2)
    s1, s2 = first[0], second[0]
    assert s1["type"] == s2["type"] == "session"
    assert s1["session_id"] == s2["session_id"]
    assert (s1["new"], s1["turns"], s2["new"], s2["turns"]) == (True, 0, False, 1)
    assert second[-1]["usage"]["cached_tokens"] > 0  # the first turn's KV cache
    assert [t["user"] for t in history(worker, s1["session_id"])] == [Q1["input"], Q2["input"]]


async def test_three_connections_three_sessions(worker: RunningWorker) -> None:
    ids = set()
    for _ in range(3):
        async with connect(worker.ws) as ws:
            ids.add((await run_request(ws, Q1))[0]["session_id"])
    assert len(ids) == 3


async def test_new_session_switches_and_a_named_session_becomes_current(
    worker: RunningWorker,
) -> None:
    async with connect(worker.ws) as ws:
        a = (await run_request(ws, Q1))[0]["session_id"]
        b_start = (await run_request(ws, {**Q1, "new_session": True}))[0]
        b = b_start["session_id"]
        assert b != a and b_start["new"]
        assert (await run_request(ws, Q2))[0]["session_id"] == b
        assert (await run_request(ws, {**Q2, "session_id": a}))[0]["session_id"] == a
        assert (await run_request(ws, Q2))[0]["session_id"] == a  # named: now current
    assert len(history(worker, a)) == 3 and len(history(worker, b)) == 2


async def test_stateless_stores_nothing_and_leaves_the_current_session_alone(
    worker: RunningWorker,
) -> None:
    async with connect(worker.ws) as ws:
        current = (await run_request(ws, Q1))[0]["session_id"]
        events = await run_request(ws, {**Q1, "stateless": True})
        start = events[0]
        assert start["stateless"] and start["session_id"] != current and start["turns"] == 0
        assert events[-1]["type"] == "result"
        after = (await run_request(ws, Q2))[0]
    assert status(worker, start["session_id"]) == 404
    assert after["session_id"] == current and after["turns"] == 1 and not after["stateless"]
    assert len(history(worker, current)) == 2
    rest = execute(worker, {**Q1, "stateless": True})
    assert rest.status_code == 200
    assert status(worker, rest.json()["session_id"]) == 404


async def test_session_busy_applies_to_the_current_session_only(worker: RunningWorker) -> None:
    long = {"input": "Count: 1, 2, 3,", "max_tokens": 60}
    async with connect(worker.ws) as ws:
        await run_request(ws, Q1)  # the connection's session exists
        await send(ws, {**long, "request_id": "running"})
        await send(ws, {**Q2, "request_id": "same"})  # the current session: busy
        await send(ws, {**Q2, "request_id": "free", "stateless": True})
        await send(ws, {**Q2, "request_id": "other", "new_session": True})
        ends: dict[str, dict[str, object]] = {}
        while len(ends) < 4:
            event = await recv_event(ws)
            if event["type"] in {"result", "error"}:
                ends[event["request_id"]] = event
    assert ends["same"]["type"] == "error" and ends["same"]["code"] == "SESSION_BUSY"
    assert {ends[r]["type"] for r in ("running", "free", "other")} == {"result"}


async def test_a_deleted_connection_session_is_not_found_not_silently_remade(
    worker: RunningWorker,
) -> None:
    async with connect(worker.ws) as ws:
        sid = (await run_request(ws, Q1))[0]["session_id"]
        assert delete(worker, sid) == 200
        events = await run_request(ws, Q2)
        assert events[-1]["type"] == "error" and events[-1]["code"] == "SESSION_NOT_FOUND"
        fresh = (await run_request(ws, {**Q1, "new_session": True}))[0]
        assert fresh["session_id"] != sid and fresh["new"]


async def test_a_cancelled_first_turn_leaves_the_id_for_the_next_request(
    worker: RunningWorker,
) -> None:
    async with connect(worker.ws) as ws:
        await send(ws, {"input": "Count: 1, 2, 3,", "max_tokens": 200, "request_id": "c"})
        start = await recv_event(ws)
        await send(ws, {"type": "cancel", "request_id": "c"})
        while (event := await recv_event(ws))["type"] not in {"result", "error"}:
            pass
        assert event["finish_reason"] == "cancelled"
        nxt = (await run_request(ws, Q1))[0]
    assert nxt["session_id"] == start["session_id"] and nxt["new"] and nxt["turns"] == 0
    assert len(history(worker, nxt["session_id"])) == 1
