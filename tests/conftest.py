"""Shared fixtures: a real worker (real model, real uvicorn) on a free loopback port."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from gemma_worker.api.app import create_app
from gemma_worker.cli.daemon import server_config
from gemma_worker.engine.interface import Engine
from gemma_worker.sessions.store import SessionStore
from gemma_worker.settings import Settings
from tests.programs import RedisServer, free_port

PARIS_PROMPT = "Question: What is the capital of France?\nAnswer:"


def make_settings(**overrides: Any) -> Settings:
    """Settings for tests: small context, greedy by default, nothing read from the env file.
    Deterministic kernels: several tests compare outputs across batches and cache hits, and
    ggml reads some kernel choices once per process (fast mode: tests/test_fast_mode.py)."""
    values: dict[str, Any] = {
        "deterministic": True,
        "port": free_port(),
        "n_ctx": 1024,
        "parallel": 4,
        "max_queue": 8,
        "temperature": 0.0,
        "drain_grace_seconds": 10.0,
        "data_dir": tempfile.mkdtemp(prefix="gemma-worker-test-"),
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class RunningWorker:
    settings: Settings
    server: uvicorn.Server
    thread: threading.Thread
    #: With TLS (``ssl_certfile``): what clients verify the worker's certificate with.
    verify: ssl.SSLContext | None = None

    @property
    def http(self) -> str:
        if self.settings.ssl_certfile is not None:
            return f"https://localhost:{self.settings.port}"
        return f"http://127.0.0.1:{self.settings.port}"

    @property
    def ws(self) -> str:
        if self.settings.ssl_certfile is not None:
            return f"wss://localhost:{self.settings.port}/ws"
        return f"ws://127.0.0.1:{self.settings.port}/ws"

    def ready_body(self) -> dict[str, Any]:
        r = httpx.get(f"{self.http}/ready", timeout=5, verify=self.verify or True)
        body: dict[str, Any] = r.json()
        return body

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_worker(
    settings: Settings,
    engine: Engine | None = None,
    wait_ready: bool = True,
    store: SessionStore | None = None,
    *,
    verify: ssl.SSLContext | None = None,
    send_buffer: int | None = None,
) -> RunningWorker:
    """``verify``: with TLS, the context that trusts the worker's certificate.
    ``send_buffer``: the kernel's send buffer of every accepted connection, in bytes (they
    inherit it from the listening socket), so a client that stops reading blocks the
    worker's writes after that much rather than after megabytes."""
    app = create_app(settings, engine, store)
    server = uvicorn.Server(server_config(app, settings))
    sockets = None
    if send_buffer is not None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        listener.bind((settings.host, settings.port))
        sockets = [listener]
    thread = threading.Thread(target=server.run, kwargs={"sockets": sockets}, daemon=True)
    thread.start()
    worker = RunningWorker(settings, server, thread, verify)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.started:
            if not wait_ready:
                return worker
            try:
                if worker.ready_body().get("status") == "ready":
                    return worker
            except httpx.HTTPError:
                pass
        time.sleep(0.05)
    worker.stop()
    raise RuntimeError("worker did not become ready")


def start_fake_worker(settings: Settings, **engine: Any) -> RunningWorker:
    """A real app and server on :class:`~tests.fake_engine.FakeEngine` (``engine``: its
    options), for the tests of protocol logic."""
    from tests.fake_engine import FakeEngine  # noqa: PLC0415 - only the tests that use it

    return start_worker(settings, FakeEngine(**engine))


def spawn_daemon(
    env: dict[str, str] | None = None, *args: str, log_file: Path | None = None
) -> tuple[subprocess.Popen[str], int]:
    """``python -m gemma_worker --mode daemon`` on a free port, once it is ready; its stderr
    (the logs) goes to ``log_file`` when given."""
    port = free_port()
    with open(log_file or os.devnull, "w") as logs:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gemma_worker", "--mode", "daemon", "--port", str(port), *args],
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=logs,
            text=True,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise RuntimeError("daemon did not become ready")


@pytest.fixture(autouse=True)
def _isolated_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Workers started by a test (in process or as a subprocess) keep their data in a temp dir."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg-data")))


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


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server (from the OS packages) for the tests that share state."""
    server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


_QUANTIZE = """
import ctypes, sys
import llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
params.allow_requantize = True
sys.exit(llama_cpp.llama_model_quantize(
    sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(params)))
"""


@pytest.fixture(scope="session")
def second_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, genuinely different model: the embedded Gemma requantized to Q8_0 (about
    2 s; in a subprocess, whose llama.cpp log is not the test's)."""
    from gemma_worker.engine.model_files import resolve_model_path  # noqa: PLC0415

    out = tmp_path_factory.mktemp("second-model") / "gemma-q8.gguf"
    done = subprocess.run(
        [sys.executable, "-c", _QUANTIZE, str(resolve_model_path(None)), str(out)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return out
