"""Load generators that speak OpenAI's ``/v1/completions`` (SSE), which both the worker and
llama.cpp's ``llama-server`` serve: the same requests, timed the same way, on either server."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from _common import PROMPTS, p95


@dataclass
class Completion:
    """One streamed completion as the client saw it."""

    sent: float
    #: Arrival time of each chunk that carried text.
    arrivals: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    text: str = ""

    @property
    def ttft_s(self) -> float:
        return self.arrivals[0] - self.sent

    def gaps(self, start: float = 0.0, end: float = float("inf")) -> list[float]:
        """Inter-token gaps (seconds) that overlap [start, end]."""
        a = self.arrivals
        return [a[i] - a[i - 1] for i in range(1, len(a)) if a[i] >= start and a[i - 1] <= end]


async def complete(
    http: httpx.AsyncClient,
    base: str,
    prompt: str,
    max_tokens: int,
    into: Completion | None = None,
    **extra: Any,
) -> Completion:
    """Stream one greedy completion; usage from the final chunk (chunk count if absent).
    Arrivals are recorded in ``into`` as they come, so a cancelled stream keeps them."""
    body = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }
    done = into or Completion(sent=0.0)
    done.sent = time.perf_counter()
    async with http.stream("POST", f"{base}/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{base}: HTTP {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                done.completion_tokens = int(chunk["usage"]["completion_tokens"])
            choices = chunk.get("choices") or []
            if choices and choices[0].get("text"):
                done.arrivals.append(time.perf_counter())
                done.text += choices[0]["text"]
    if not done.arrivals:
        raise RuntimeError(f"{base}: no text streamed")
    done.completion_tokens = done.completion_tokens or len(done.arrivals)
    return done


@dataclass
class Load:
    n_clients: int
    aggregate_tps: float
    ttft_p50_ms: float


async def closed_loop(
    http: httpx.AsyncClient,
    base: str,
    n_clients: int,
    per_client: int,
    max_tokens: int,
    *,
    ramp_s: float = 0.05,
    **extra: Any,
) -> Load:
    """``n_clients`` clients, each sending ``per_client`` requests back to back."""
    done: list[Completion] = []

    async def client(c: int) -> None:
        await asyncio.sleep(c * ramp_s)
        for r in range(per_client):
            prompt = PROMPTS[(c + r) % len(PROMPTS)]
            done.append(await complete(http, base, prompt, max_tokens, **extra))

    t0 = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(n_clients)))
    wall = time.perf_counter() - t0
    return Load(
        n_clients,
        sum(d.completion_tokens for d in done) / wall,
        statistics.median(d.ttft_s for d in done) * 1e3,
    )


_FILLER = (
    "The committee reviewed the quarterly report on regional water supply, noting that "
    "reservoir levels rose after the spring rains while demand from farms and new housing "
    "kept growing. Engineers proposed replacing old pipes, adding meters to every district "
    "and publishing weekly figures so that residents could follow the changes themselves. "
)


def long_prompt(n_words_target: int) -> str:
    """A prompt of about ``n_words_target`` tokens that no server has cached: it starts with a
    fresh nonce, so prefix caches cannot serve any of it."""
    words = _FILLER.split()
    body = " ".join(words[i % len(words)] for i in range(n_words_target))
    return f"Record {uuid.uuid4().hex}.\n{body}\nSummary:"


async def count_tokens(http: httpx.AsyncClient, base: str, text: str) -> int:
    """Token count through the server's ``/tokenize`` (both servers have it)."""
    r = await http.post(f"{base}/tokenize", json={"content": text})
    r.raise_for_status()
    return len(r.json()["tokens"])


async def calibrated_long_prompt(http: httpx.AsyncClient, base: str, n_tokens: int) -> int:
    """How many filler words give a prompt of about ``n_tokens`` tokens."""
    words = n_tokens
    for _ in range(4):
        got = await count_tokens(http, base, long_prompt(words))
        words = max(1, round(words * n_tokens / got))
    return words


async def long_prompt_ttft(http: httpx.AsyncClient, base: str, words: int) -> float:
    """Time to first token (ms) of a fresh long prompt sent alone."""
    done = await complete(http, base, long_prompt(words), 4)
    return done.ttft_s * 1e3


@dataclass
class Interference:
    #: Median gap of the running streams before the long prompt arrived (ms).
    normal_gap_ms: float
    #: p95 of their gaps while the long prompt was being processed (ms).
    p95_gap_ms: float
    #: The long prompt's time to first token (ms).
    ttft_ms: float

    @property
    def ratio(self) -> float:
        return self.p95_gap_ms / self.normal_gap_ms


async def interference(
    http: httpx.AsyncClient, base: str, n_streams: int, words: int, settle_s: float = 2.0
) -> Interference:
    """``n_streams`` streams decode; after ``settle_s`` a long prompt arrives. Their token gaps
    before it arrived against their gaps until it produced its first token."""
    done = [Completion(sent=0.0) for _ in range(n_streams)]
    streams = [
        asyncio.create_task(complete(http, base, PROMPTS[i % len(PROMPTS)], 1000, into=d))
        for i, d in enumerate(done)
    ]
    await asyncio.sleep(settle_s)
    long = await complete(http, base, long_prompt(words), 4)
    t_send, t_first = long.sent, long.arrivals[0]
    await asyncio.sleep(0.2)
    for task in streams:  # the streams have served their purpose
        task.cancel()
    await asyncio.gather(*streams, return_exceptions=True)
    before = [g for d in done for g in d.gaps(end=t_send - 0.5)]
    during = [g for d in done for g in d.gaps(t_send, t_first)]
    if not before or not during:
        raise RuntimeError("streams ended before the long prompt was processed; raise max_tokens")
    return Interference(statistics.median(before) * 1e3, p95(during) * 1e3, long.ttft_s * 1e3)
