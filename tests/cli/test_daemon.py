"""``--mode daemon``: serving, and the graceful drain on SIGTERM with a request in flight."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.conftest import PARIS_PROMPT, spawn_daemon


@pytest.fixture
def daemon() -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc, port = spawn_daemon({"GEMMA_DRAIN_GRACE_SECONDS": "60"}, "--n-ctx", "1024")
    yield proc, port
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_sigterm_lets_the_generation_finish(
    daemon: tuple[subprocess.Popen[str], int],
) -> None:
    proc, port = daemon
    base = f"http://127.0.0.1:{port}"
    with connect(f"ws://127.0.0.1:{port}/ws") as ws:
        ws.send(json.dumps({"input": PARIS_PROMPT, "max_tokens": 120, "temperature": 0}))
        while json.loads(ws.recv())["type"] != "token":
            pass
        proc.send_signal(signal.SIGTERM)
        # draining: not ready, new work refused, the running generation continues
        deadline = time.monotonic() + 5
        while httpx.get(f"{base}/ready").status_code != 503:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert httpx.get(f"{base}/ready").json()["status"] == "draining"
        refused = httpx.post(f"{base}/v1/execute", json={"input": "hi"})
        assert refused.status_code == 503
        assert refused.json()["code"] == "OVERLOADED"
        # a new WebSocket is refused at the handshake, so a balancer can retry it elsewhere
        with pytest.raises(InvalidStatus) as denied:
            connect(f"ws://127.0.0.1:{port}/ws").close()
        assert denied.value.response.status_code == 503
        assert json.loads(denied.value.response.body or b"{}")["code"] == "OVERLOADED"
        assert denied.value.response.headers["Retry-After"] == "5"
        events = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                events.append(json.loads(ws.recv()))
        result = [e for e in events if e["type"] == "result"]
        assert len(result) == 1
        assert result[0]["finish_reason"] == "length"
        assert result[0]["usage"]["completion_tokens"] == 120
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1001
    assert proc.wait(timeout=30) == 0
