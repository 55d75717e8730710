"""Shared fixtures: a real worker (real model, real uvicorn) on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn

from gemma_worker.api.app import create_app
from gemma_worker.engine.protocol import Engine
from gemma_worker.settings import Settings

PARIS_PROMPT = "Question: What is the capital of France?\nAnswer:"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_settings(**overrides: Any) -> Settings:
    """Settings for tests: small context, greedy by default, nothing read from the env file."""
    values: dict[str, Any] = {
        "port": free_port(),
        "n_ctx": 1024,
        "parallel": 4,
        "max_queue": 8,
        "temperature": 0.0,
        "drain_grace_seconds": 10.0,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class RunningWorker:
    settings: Settings
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.settings.port}/ws"

    def ready_body(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{self.http}/ready", timeout=5).json()
        return body

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_worker(
    settings: Settings, engine: Engine | None = None, wait_ready: bool = True
) -> RunningWorker:
    app = create_app(settings, engine)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=settings.port, log_config=None, access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    worker = RunningWorker(settings, server, thread)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.started:
            if not wait_ready:
                return worker
            try:
                if httpx.get(f"{worker.http}/ready", timeout=2).status_code == 200:
                    return worker
            except httpx.HTTPError:
                pass
        time.sleep(0.05)
    worker.stop()
    raise RuntimeError("worker did not become ready")


@pytest.fixture(scope="session")
def worker() -> Iterator[RunningWorker]:
    """One shared worker with 4 slots for the endpoint tests."""
    w = start_worker(make_settings())
    yield w
    w.stop()


@pytest.fixture
def wait_idle(worker: RunningWorker) -> Iterator[None]:
    """Make sure the shared worker has no generation left over from an earlier test."""
    _wait_engine_idle(worker)
    yield
    _wait_engine_idle(worker)


def _wait_engine_idle(worker: RunningWorker, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = worker.ready_body()
        if body.get("active") == 0 and body.get("queued") == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"worker still busy: {body}")
