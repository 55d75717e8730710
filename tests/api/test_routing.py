"""What a balancer routes on: X-Session-Id (REST) and ?session_id= (/ws) name the session
when the body does not, and a body naming another one is refused; X-Worker-Id on every
response says which replica answered."""

from __future__ import annotations

import asyncio

import httpx

from tests.api.wsclient import connect, recv_event, run_request, send
from tests.conftest import RunningWorker


def new_session(worker: RunningWorker) -> str:
    r = httpx.post(
        f"{worker.http}/v1/execute",
        json={"input": "Question: Name a colour.\nAnswer:", "max_tokens": 3},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    session: str = r.json()["session_id"]
    return session


def test_the_session_header_continues_a_session(worker: RunningWorker, wait_idle: None) -> None:
    session = new_session(worker)
    r = httpx.post(
        f"{worker.http}/v1/execute",
        json={"input": "Question: Another?\nAnswer:", "max_tokens": 3},
        headers={"X-Session-Id": session},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json()["session_id"] == session
    assert r.json()["usage"]["cached_tokens"] > 0
    # the same session named twice is fine
    same = httpx.post(
        f"{worker.http}/v1/execute",
        json={"input": "Question: More?\nAnswer:", "max_tokens": 3, "session_id": session},
        headers={"X-Session-Id": session},
        timeout=60,
    )
    assert same.status_code == 200, same.text


def test_a_body_naming_another_session_is_refused(worker: RunningWorker) -> None:
    session = new_session(worker)
    r = httpx.post(
        f"{worker.http}/v1/execute",
        json={"input": "hi", "session_id": "someone-else"},
        headers={"X-Session-Id": session},
        timeout=60,
    )
    assert r.status_code == 422
    body = r.json()
    assert body["code"] == "INVALID_REQUEST"
    assert "X-Session-Id" in body["error"]
    bad = httpx.post(
        f"{worker.http}/v1/execute",
        json={"input": "hi"},
        headers={"X-Session-Id": "not a valid id!"},
        timeout=60,
    )
    assert bad.status_code == 422


def test_every_response_names_the_worker(worker: RunningWorker) -> None:
    name = worker.settings.replica_name
    assert name.endswith(f":{worker.settings.port}")
    for r in (
        httpx.get(f"{worker.http}/health"),
        httpx.get(f"{worker.http}/nope"),
        httpx.post(f"{worker.http}/v1/execute", content=b"{"),
    ):
        assert r.headers["X-Worker-Id"] == name

    async def handshake() -> str:
        async with connect(worker.ws) as ws:
            assert ws.response is not None
            return ws.response.headers["X-Worker-Id"]

    assert asyncio.run(handshake()) == name


def test_the_connection_session_parameter(worker: RunningWorker, wait_idle: None) -> None:
    session = new_session(worker)

    async def run() -> None:
        async with connect(f"{worker.ws}?session_id={session}") as ws:
            events = await run_request(ws, {"input": "Question: And?\nAnswer:", "max_tokens": 3})
            assert events[0]["type"] == "session"
            assert events[0]["session_id"] == session
            assert events[-1]["type"] == "result"
            await send(ws, {"input": "hi", "session_id": "someone-else", "request_id": "r2"})
            error = await recv_event(ws)
            assert error["type"] == "error"
            assert error["code"] == "INVALID_REQUEST"
            assert error["request_id"] == "r2"
            # the connection stays usable
            again = await run_request(ws, {"input": "Question: Last?\nAnswer:", "max_tokens": 3})
            assert again[-1]["type"] == "result"
            assert again[-1]["session_id"] == session

    asyncio.run(run())
