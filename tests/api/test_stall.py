"""A client that stops reading a stream gives its slot back after the stall timeout, on
every transport (a real server on the fake engine, counting fast; a real socket that never
reads)."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
from collections.abc import Iterator

import httpx
import pytest

from gemma_worker.engine.job import GenerationSpec
from tests.conftest import PARIS_PROMPT, RunningWorker, make_settings, start_worker
from tests.fake_engine import DEFAULT_ANSWER, FakeEngine

STALL_S = 1.5


@pytest.fixture(scope="module")
def stalling() -> Iterator[RunningWorker]:
    w = start_worker(
        make_settings(stream_stall_timeout_seconds=STALL_S),
        FakeEngine(script=counting, slots=2, n_ctx=4096, stream_buffer=4, token_delay=0.001),
        send_buffer=4096,
    )
    yield w
    w.stop()


def counting(spec: GenerationSpec, prompt: str) -> list[str]:
    """Counts on, one number per token, when asked to count; else the default answer."""
    if "Count" not in prompt:
        return list(DEFAULT_ANSWER)
    return [f" {n}," for n in range(4, 4000)]


def reader_that_never_reads(port: int) -> socket.socket:
    """A connection whose receive window is as small as the kernel allows."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    s.connect(("127.0.0.1", port))
    return s


def stalled(worker: RunningWorker, transport: str) -> float:
    text = httpx.get(f"{worker.http}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(f'gemma_worker_stalled_streams_total{{transport="{transport}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_freed(worker: RunningWorker, within_s: float) -> float:
    """Seconds until no generation is running (fails after ``within_s``)."""
    started = time.monotonic()
    while worker.ready_body()["active"] != 0:
        assert time.monotonic() - started < within_s, "the stalled stream kept its slot"
        time.sleep(0.1)
    return time.monotonic() - started


def wait_running(worker: RunningWorker) -> None:
    deadline = time.monotonic() + 30
    while worker.ready_body()["active"] == 0:
        assert time.monotonic() < deadline, "the generation did not start"
        time.sleep(0.05)


COUNT = "Count from 1 to 1000: 1, 2, 3,"
STREAMS = {
    "/v1/completions": {
        "model": "gemma",
        "prompt": COUNT,
        "max_tokens": 2000,
        "stream": True,
        "logprobs": 5,
        "temperature": 0,
    },
    "/v1/execute": {"input": COUNT, "max_tokens": 2000, "stream": True, "stateless": True},
}


@pytest.mark.parametrize("path", list(STREAMS))
def test_an_http_stream_nobody_reads_is_cancelled(stalling: RunningWorker, path: str) -> None:
    before = stalled(stalling, "http")
    body = json.dumps(STREAMS[path]).encode()
    s = reader_that_never_reads(stalling.settings.port)
    try:
        s.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
            + b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        wait_running(stalling)
        wait_freed(stalling, within_s=60)
        assert stalled(stalling, "http") == before + 1
        # reading again, the client sees the stream was cut: its last record says so
        s.settimeout(10)
        data = b""
        while not data.endswith(b"0\r\n\r\n"):
            chunk = s.recv(1 << 16)
            assert chunk, "the connection closed before the end of the body"
            data += chunk
        assert b"stream_stalled" in data[-2000:].lower()
        # another client is served as usual
        r = httpx.post(
            f"{stalling.http}/v1/execute", json={"input": PARIS_PROMPT, "max_tokens": 3}, timeout=60
        )
        assert r.status_code == 200 and "Paris" in r.json()["result"]
    finally:
        s.close()


def ws_frame(text: str) -> bytes:
    """A masked client text frame (RFC 6455)."""
    data = text.encode()
    mask = os.urandom(4)
    head = b"\x81"
    if len(data) < 126:
        head += bytes([0x80 | len(data)])
    else:
        head += bytes([0x80 | 126]) + struct.pack("!H", len(data))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def test_a_websocket_nobody_reads_is_closed_and_its_requests_end(
    stalling: RunningWorker,
) -> None:
    before = stalled(stalling, "websocket")
    s = reader_that_never_reads(stalling.settings.port)
    key = base64.b64encode(os.urandom(16)).decode()
    try:
        s.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        assert b"101" in s.recv(1024)
        ask = {"input": "Count from 1 to 1000: 1, 2, 3,", "max_tokens": 2000, "stateless": True}
        s.sendall(ws_frame(json.dumps(ask)) + ws_frame(json.dumps({**ask, "request_id": "b"})))
        wait_running(stalling)
        wait_freed(stalling, within_s=60)
        assert stalled(stalling, "websocket") == before + 1
    finally:
        s.close()
