"""Abusive requests beside a steady load: does any single request stall the others?

A worker process on the embedded model serves two steady clients (one API key) sending
short requests (8 tokens) back to back. Each abusive request of issue 21 (another key) then
runs a few times, a second apart; the script prints the p95 latency of the steady requests
that overlapped it against the p95 without it (goal: at most 2x), and the abusive request's
own time to its answer or error.

    python bench/abuse.py [--window 4] [--only NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import string
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import free_port, p95, worker_process

STEADY = {
    "input": "Question: What is the capital of France?\nAnswer:",
    "max_tokens": 8,
    "temperature": 0,
    "stateless": True,
}
STALL_S = 3.0
STEADY_KEY = "bench-steady-key-0123456789"
ABUSER_KEY = "bench-abuser-key-0123456789"
#: Abuses run once only (they take long, or hold the worker while they run).
ONCE = {"a stream nobody reads", "50 WebSockets x 2 requests"}


@dataclass
class Steady:
    """Two clients' back-to-back requests: (start time, latency) of each."""

    samples: list[tuple[float, float]] = field(default_factory=list)
    #: Each steady request's wait for a slot (start time, seconds).
    waits: list[tuple[float, float]] = field(default_factory=list)
    stop: bool = False

    async def client(self, http: httpx.AsyncClient) -> None:
        headers = {"Authorization": f"Bearer {STEADY_KEY}"}
        while not self.stop:
            started = time.monotonic()
            r = await http.post("/v1/execute", json=STEADY, headers=headers)
            if r.status_code == 200:
                self.samples.append((started, time.monotonic() - started))
                self.waits.append((started, r.json()["timings"]["queue_ms"] / 1e3))

    def between(self, start: float, end: float) -> list[float]:
        """Latencies of the requests that started in the window."""
        return [lat for t, lat in self.samples if start <= t <= end]

    def overlapping(self, start: float, end: float) -> list[float]:
        """Latencies of the requests that ran at some point during ``start``-``end``."""
        return [lat for t, lat in self.samples if t <= end and t + lat >= start]

    def waits_overlapping(self, start: float, end: float) -> list[float]:
        """Queue waits of the requests that ran at some point during ``start``-``end``."""
        spans = dict(self.samples)
        return [w for t, w in self.waits if t <= end and t + spans[t] >= start]


Abuse = Callable[[httpx.AsyncClient, str], Awaitable[str]]


def enum_body(n: int, top_k: int) -> dict[str, Any]:
    rng = random.Random(n)
    words = {"".join(rng.choices(string.ascii_lowercase, k=rng.randint(4, 6))) for _ in range(n)}
    return {
        "model": "gemma",
        "messages": [{"role": "user", "content": "Pick one."}],
        "max_tokens": 8,
        "temperature": 1.0,
        "top_k": top_k,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "pick", "schema": {"type": "string", "enum": sorted(words)}},
        },
    }


def any_of_body(n: int) -> dict[str, Any]:
    branches = [
        {"type": "object", "properties": {f"k{i}": {"type": "integer"}}, "required": [f"k{i}"]}
        for i in range(n)
    ]
    return {
        "model": "gemma",
        "messages": [{"role": "user", "content": "JSON please."}],
        "max_tokens": 8,
        "temperature": 1.0,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "any", "schema": {"anyOf": branches}},
        },
    }


def nested_body(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return {
        "model": "gemma",
        "messages": [{"role": "user", "content": "JSON please."}],
        "max_tokens": 16,
        "temperature": 1.0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
    }


async def post(
    http: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None, **kw: Any
) -> str:
    r = await http.post(path, headers={**AUTH, **(headers or {})}, **kw)
    return str(r.status_code)


def messages_body(n: int, roles: list[str]) -> bytes:
    messages = [{"role": roles[i % len(roles)], "content": "hi"} for i in range(n)]
    body = {"model": "gemma", "messages": messages, "max_tokens": 4}
    return json.dumps(body, separators=(",", ":")).encode()


def ws_url(base: str) -> str:
    return base.replace("http", "ws") + "/ws"


AUTH = {"Authorization": f"Bearer {ABUSER_KEY}"}


async def nested_ws(_http: httpx.AsyncClient, base: str) -> str:
    async with connect(ws_url(base), additional_headers=AUTH) as ws:
        await ws.send("[" * 2000)
        event = json.loads(await ws.recv())
    return str(event.get("code"))


async def stalled_reader(http: httpx.AsyncClient, base: str) -> str:
    """A streamed answer nobody reads: the seconds until its slot is free again."""
    port = int(base.rsplit(":", 1)[1])
    body = json.dumps(
        {
            "model": "gemma",
            "messages": [{"role": "user", "content": "Count to 1000."}],
            "max_tokens": 2000,
            "stream": True,
            "logprobs": True,
            "top_logprobs": 20,
        }
    ).encode()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    s.setblocking(False)
    await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port))
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: Bearer {ABUSER_KEY}\r\n".encode()
        + b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    started = time.monotonic()
    try:
        while time.monotonic() - started < 120:
            await asyncio.sleep(0.5)
            metrics = (await http.get("/metrics", headers=AUTH)).text
            if 'gemma_worker_stalled_streams_total{transport="http"} 1.0' in metrics:
                return f"freed after {time.monotonic() - started:.1f} s"
        return "not freed within 120 s"
    finally:
        s.close()


async def greedy_websockets(http: httpx.AsyncClient, base: str) -> str:
    """50 WebSockets with 2 requests each from one client: how many of its 100 ran (the rest
    are its own excess, refused)."""
    ok = 0

    async def one() -> None:
        nonlocal ok
        async with connect(ws_url(base), additional_headers=AUTH) as ws:
            for i in range(2):
                await ws.send(json.dumps({**STEADY, "max_tokens": 32, "request_id": f"r{i}"}))
            for _ in range(2):
                while True:
                    event = json.loads(await ws.recv())
                    if event["type"] in {"result", "error"}:
                        ok += event["type"] == "result"
                        break

    await asyncio.gather(*(one() for _ in range(50)))
    return f"{ok}/100 ran"


def abuses() -> dict[str, Abuse]:
    many = messages_body(65000, ["user"])
    alternating = messages_body(60000, ["user", "assistant"])
    json_type = {"content-type": "application/json"}
    return {
        "tokenize a\\n\\n x32000": lambda h, _b: post(
            h, "/tokenize", json={"content": "a\n\n" * 32000}
        ),
        "prompt a\\n x40000": lambda h, _b: post(
            h, "/v1/execute", json={"input": "a\n" * 40000, "max_tokens": 8}
        ),
        "65,000 chat messages": lambda h, _b: post(
            h, "/v1/chat/completions", content=many, headers=json_type
        ),
        "60,000 alternating messages": lambda h, _b: post(
            h, "/v1/chat/completions", content=alternating, headers=json_type
        ),
        "enum of 1,000, temperature 1": lambda h, _b: post(
            h, "/v1/chat/completions", json=enum_body(1000, 64)
        ),
        "enum of 6,000, top_k 1e6": lambda h, _b: post(
            h, "/v1/chat/completions", json=enum_body(6000, 1_000_000)
        ),
        "anyOf of 200 objects": lambda h, _b: post(
            h, "/v1/chat/completions", json=any_of_body(200)
        ),
        "objects nested 40 deep": lambda h, _b: post(
            h, "/v1/chat/completions", json=nested_body(40)
        ),
        '"[" x2000 on /ws': nested_ws,
        "a stream nobody reads": stalled_reader,
        "50 WebSockets x 2 requests": greedy_websockets,
    }


async def session_turns(http: httpx.AsyncClient) -> str:
    """Time to first token of turns 3 and 8 of a session growing to ~4,000 tokens."""
    filler = "Notes on the history of the region, line by line.\n" * 40
    session: str | None = None
    ttft: dict[int, float] = {}
    for turn in range(1, 9):
        body: dict[str, Any] = {
            "input": filler + f"Question {turn}: say a number.\nAnswer:",
            "max_tokens": 4,
            "temperature": 0,
        }
        if session is not None:
            body["session_id"] = session
        r = (await http.post("/v1/execute", json=body, headers=AUTH)).json()
        session = r["session_id"]
        ttft[turn] = r["timings"]["ttft_ms"]
    return f"turn 3 {ttft[3]:.0f} ms, turn 8 {ttft[8]:.0f} ms ({ttft[8] / ttft[3]:.2f}x)"


async def run(window: float, only: str | None) -> None:
    port = free_port()
    env = {
        "GEMMA_STREAM_STALL_TIMEOUT": str(STALL_S),
        "GEMMA_N_CTX": "8192",
        "GEMMA_PARALLEL": "4",
        "GEMMA_API_KEYS": f"{STEADY_KEY},{ABUSER_KEY}",
    }
    with worker_process(port, env) as base:
        limits = httpx.Limits(max_connections=None)
        async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as http:
            steady = Steady()
            clients = [asyncio.ensure_future(steady.client(http)) for _ in range(2)]
            await asyncio.sleep(2)  # warm
            t0 = time.monotonic()
            await asyncio.sleep(window)
            base_p95 = p95(steady.between(t0, time.monotonic()))
            print(f"steady 2 clients alone: p95 {base_p95 * 1e3:.0f} ms")
            print(
                f"{'abusive request':32} {'steady p95':>11} {'ratio':>6} {'wait p95':>9}  "
                "its own answer"
            )
            for name, abuse in abuses().items():
                if only and only not in name:
                    continue
                start = time.monotonic()
                own: list[float] = []
                during: list[float] = []
                waits: list[float] = []
                outcome = ""
                while not own or (time.monotonic() - start < window and name not in ONCE):
                    t = time.monotonic()
                    outcome = await abuse(http, base)
                    own.append(time.monotonic() - t)
                    await asyncio.sleep(1.0)  # what overlapped this run has finished
                    during += steady.overlapping(t, t + own[-1])
                    waits += steady.waits_overlapping(t, t + own[-1])
                during_p95 = p95(during) if during else float("nan")
                ratio = during_p95 / base_p95
                verdict = "PASS" if ratio <= 2 else "FAIL"
                wait_p95 = p95(waits) if waits else float("nan")
                print(
                    f"{name:32} {during_p95 * 1e3:8.0f} ms {ratio:5.2f}x {wait_p95 * 1e3:6.0f} ms  "
                    f"{statistics.median(own) * 1e3:7.0f} ms -> {outcome}  {verdict}"
                )
            steady.stop = True
            await asyncio.gather(*clients)
            print("sessions:", await session_turns(http))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=4.0, help="seconds per abusive request")
    parser.add_argument("--only", help="run the abuses whose name contains this")
    args = parser.parse_args()
    asyncio.run(run(args.window, args.only))


if __name__ == "__main__":
    main()
