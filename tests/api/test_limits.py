"""Resource limits on a real worker: message and body sizes, connection cap, idle timeout,
keepalive pings, input length in tokens."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from gemma_worker.runtime.state import WorkerState
from tests.api.wsclient import connect, recv_event, run_request, send
from tests.conftest import PARIS_PROMPT, RunningWorker, make_settings, start_worker

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def small() -> Iterator[RunningWorker]:
    w = start_worker(
        make_settings(
            parallel=2,
            max_connections=3,
            ws_idle_timeout_seconds=1.0,
            ws_ping_interval_seconds=0.5,
            ws_ping_timeout_seconds=0.5,
            max_input_tokens=50,
            # one test needs a generation that outlasts the idle timeout: decoded token by
            # token, 60 tokens take well over a second here
            speculation=False,
        )
    )
    yield w
    w.stop()


def state_of(worker: RunningWorker) -> WorkerState:
    state: WorkerState = worker.server.config.app.state.worker  # type: ignore[attr-defined]
    return state


async def wait_for(predicate: object, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def test_oversized_message_closes_1009_and_others_keep_streaming(
    small: RunningWorker,
) -> None:
    async with connect(small.ws, max_size=None) as other, connect(small.ws) as big:
        await send(other, {"input": PARIS_PROMPT, "max_tokens": 48, "temperature": 0})
        assert (await recv_event(other))["type"] == "session"
        await big.send("a" * (MIB + 1))
        with pytest.raises(ConnectionClosed) as closed:
            await recv_event(big, wait_s=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        events = []
        while not events or events[-1]["type"] not in {"result", "error"}:
            events.append(await recv_event(other))
        assert events[-1]["type"] == "result"
        assert events[-1]["usage"]["completion_tokens"] == 48
    # exactly 1 MiB is still a message the worker reads (and answers: not JSON)
    async with connect(small.ws) as ws:
        await ws.send("a" * MIB)
        assert (await recv_event(ws))["code"] == "INVALID_JSON"


async def test_connection_cap_answers_1013(small: RunningWorker) -> None:
    await wait_for(lambda: not state_of(small).lifecycle.connections)
    async with connect(small.ws) as a, connect(small.ws) as b, connect(small.ws) as c:
        async with connect(small.ws) as extra:
            with pytest.raises(ConnectionClosed) as closed:
                await recv_event(extra, wait_s=5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        for ws in (a, b, c):  # the three within the cap work
            assert (await run_request(ws, {"input": "Hi", "max_tokens": 1}))[-1]["type"] == "result"


async def test_idle_connection_is_closed_but_not_while_a_request_runs(
    small: RunningWorker,
) -> None:
    async with connect(small.ws) as ws:
        # a generation longer than the idle timeout: the connection stays open for it
        events = await run_request(ws, {"input": PARIS_PROMPT, "max_tokens": 60, "temperature": 0})
        assert events[-1]["type"] == "result"
        assert events[-1]["timings"]["total_ms"] > 1000
        started = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            await recv_event(ws, wait_s=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
        # idle counts from the end of the last request, not from the last message
        assert 0.8 < time.monotonic() - started < 5


async def test_keepalive_keeps_a_healthy_client_and_drops_a_dead_one(
    small: RunningWorker,
) -> None:
    await wait_for(lambda: not state_of(small).lifecycle.connections)
    # a dead peer: completes the handshake, then never reads or answers a ping
    dead = socket.create_connection(("127.0.0.1", small.settings.port))
    key = base64.b64encode(os.urandom(16)).decode()
    dead.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    try:
        assert b"101" in dead.recv(1024)
        await wait_for(lambda: len(state_of(small).lifecycle.connections) == 1)
        # dropped after a missed pong (interval 0.5 s + timeout 0.5 s here)
        await wait_for(lambda: not state_of(small).lifecycle.connections, within_s=5)
    finally:
        dead.close()


async def test_healthy_idle_client_answers_pings(small: RunningWorker) -> None:
    # idle timeout off, pings on: a quiet client that answers pings is kept
    w = start_worker(
        make_settings(parallel=1, ws_ping_interval_seconds=0.3, ws_ping_timeout_seconds=0.3)
    )
    try:
        async with connect(w.ws) as ws:
            await asyncio.sleep(2.0)  # several ping/pong rounds
            assert (await run_request(ws, {"input": "Hi", "max_tokens": 1}))[-1]["type"] == "result"
    finally:
        w.stop()


def test_input_over_the_token_limit_is_invalid(small: RunningWorker) -> None:
    r = httpx.post(f"{small.http}/v1/execute", json={"input": "word " * 80}, timeout=60)
    assert r.status_code == 422
    body = r.json()
    assert body["code"] == "INVALID_REQUEST"
    assert body["max_input_tokens"] == 50 and body["n_input_tokens"] > 50
    ok = httpx.post(f"{small.http}/v1/execute", json={"input": "word " * 10, "max_tokens": 1})
    assert ok.status_code == 200


def test_chunked_body_over_the_limit_is_413(small: RunningWorker) -> None:
    def chunks() -> Iterator[bytes]:
        # just over the 2 MiB limit, so the upload is over when the 413 comes back
        yield b'{"input": "'
        for _ in range(4):
            yield b"a" * (MIB // 2)
        yield b"a" * 1024 + b'"}'

    r = httpx.post(
        f"{small.http}/v1/execute",
        content=chunks(),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert r.status_code == 413
    assert r.json()["code"] == "PAYLOAD_TOO_LARGE"
