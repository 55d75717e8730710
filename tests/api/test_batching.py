"""Continuous batching through the API, on the real model."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from tests.api.wsclient import connect, recv_event, run_request, send
from tests.conftest import PARIS_PROMPT, RunningWorker, make_settings, start_worker

PROMPTS = [
    PARIS_PROMPT,
    "The three primary colors are",
    "def add(a, b):",
    "Question: What is the largest planet?\nAnswer:",
    "Once upon a time",
    "The recipe for bread needs",
    "import numpy as np\n",
    "Question: Who wrote Hamlet?\nAnswer:",
    "My favourite season is",
    "SELECT * FROM",
    "The moon is",
    "Dear Sir or Madam,",
    "1, 2, 3, 4,",
    "The best way to learn is",
    "In 1969, astronauts",
    "Roses are red,",
]


@pytest.fixture(scope="module")
def wide_worker() -> Iterator[RunningWorker]:
    w = start_worker(make_settings(parallel=16, n_ctx=512))
    yield w
    w.stop()


async def _one(worker: RunningWorker, prompt: str, max_tokens: int) -> list[dict[str, object]]:
    async with connect(worker.ws) as ws:
        return await run_request(ws, {"input": prompt, "max_tokens": max_tokens, "temperature": 0})


@pytest.mark.parametrize("n", [8, 16])
async def test_concurrent_outputs_equal_solo_runs(wide_worker: RunningWorker, n: int) -> None:
    prompts = PROMPTS[:n]
    solo = [(await _one(wide_worker, p, 20))[-1] for p in prompts]
    runs = await asyncio.gather(*(_one(wide_worker, p, 20) for p in prompts))
    together = [events[-1] for events in runs]
    assert all(r["type"] == "result" for r in together)
    assert [r["content"] for r in together] == [r["content"] for r in solo]
    # they really ran side by side: nobody had to wait for a slot
    assert not any(e.get("stage") == "queued" for events in runs for e in events)


@pytest.fixture
def one_slot() -> Iterator[RunningWorker]:
    w = start_worker(make_settings(parallel=1, max_queue=2))
    yield w
    w.stop()


async def _queue_behind(worker: RunningWorker, ws_b: object) -> None:
    """Wait until request B reports that it is queued."""
    while True:
        event = await recv_event(ws_b)  # type: ignore[arg-type]
        if event["type"] == "reasoning" and event.get("stage") == "queued":
            return


async def _started_after(ws_b: object) -> float:
    while True:
        event = await recv_event(ws_b)  # type: ignore[arg-type]
        if event["type"] == "reasoning" and event.get("stage") == "prompt":
            return time.perf_counter()


@pytest.mark.parametrize("how", ["cancel", "disconnect"])
async def test_freed_slot_goes_to_the_queued_request_at_once(
    one_slot: RunningWorker, how: str
) -> None:
    ws_a = await connect(one_slot.ws)
    async with connect(one_slot.ws) as ws_b:
        await send(ws_a, {"input": PARIS_PROMPT, "max_tokens": 400, "request_id": "a"})
        while (await recv_event(ws_a))["type"] != "token":
            pass
        await send(ws_b, {"input": PARIS_PROMPT, "max_tokens": 4, "request_id": "b"})
        await _queue_behind(one_slot, ws_b)
        t0 = time.perf_counter()
        if how == "cancel":
            await send(ws_a, {"type": "cancel", "request_id": "a"})
        else:
            await ws_a.close()
        started = await _started_after(ws_b)
        # one decoding step is ~25 ms here; the 400-token request had ~10 s left
        assert started - t0 < 0.5
        events = [await recv_event(ws_b)]
        while events[-1]["type"] not in {"result", "error"}:
            events.append(await recv_event(ws_b))
        assert events[-1]["type"] == "result"
    if how == "cancel":
        final = await recv_event(ws_a)
        while final["type"] != "result":
            final = await recv_event(ws_a)
        assert final["finish_reason"] == "cancelled"
        await ws_a.close()


async def test_overloaded_answer_is_immediate(one_slot: RunningWorker) -> None:
    async with connect(one_slot.ws) as ws:
        for rid in ("r1", "r2", "r3"):  # one running, two queued: full
            await send(
                ws, {"input": PARIS_PROMPT, "max_tokens": 300, "request_id": rid, "stateless": True}
            )
        while True:
            event = await recv_event(ws)
            if event["request_id"] == "r3" and event.get("stage") == "queued":
                break
        t0 = time.perf_counter()
        events = await run_request(ws, {"input": "hi", "request_id": "r4"})
        assert events[-1]["code"] == "OVERLOADED"
        assert time.perf_counter() - t0 < 0.5
        for rid in ("r1", "r2", "r3"):
            await send(ws, {"type": "cancel", "request_id": rid})
