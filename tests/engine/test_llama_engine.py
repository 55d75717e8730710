"""The batching engine on the real model, without the HTTP layer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gemma_worker.api.app import engine_config
from gemma_worker.core.request import GenerationRequest
from gemma_worker.engine.job import GenerationHandle
from gemma_worker.engine.llama_engine import LlamaEngine
from gemma_worker.engine.messages import Finished, Started, Text
from gemma_worker.settings import Settings
from tests.conftest import PARIS_PROMPT, make_settings

PROMPTS = [
    PARIS_PROMPT,
    "The three primary colors are",
    "def add(a, b):",
    "Question: What is the largest planet?\nAnswer:",
]


@pytest.fixture
async def engine() -> AsyncIterator[LlamaEngine]:
    eng = LlamaEngine(engine_config(make_settings(parallel=4, stream_buffer=4)))
    await eng.start()
    yield eng
    await eng.close()


def submit(eng: LlamaEngine, settings: Settings, text: str, max_tokens: int) -> GenerationHandle:
    req = GenerationRequest(input=text, max_tokens=max_tokens, temperature=0.0)
    params = settings.request_limits().resolve(req)
    return eng.submit(eng.renderer.render(text), params, f"t-{text[:8]}")


async def collect(handle: GenerationHandle) -> tuple[str, Finished]:
    text = ""
    async for event in handle.events():
        if isinstance(event, Text):
            text += event.text
        elif isinstance(event, Finished):
            return text, event
    raise AssertionError("no Finished event")


async def test_batched_outputs_equal_solo_runs(engine: LlamaEngine) -> None:
    settings = make_settings()
    solo = [await collect(submit(engine, settings, p, 24)) for p in PROMPTS]
    together = await asyncio.gather(*(collect(submit(engine, settings, p, 24)) for p in PROMPTS))
    assert [t for t, _ in together] == [t for t, _ in solo]
    assert all(f.completion_tokens > 0 for _, f in together)


async def test_cancel_stops_within_a_step(engine: LlamaEngine) -> None:
    handle = submit(engine, make_settings(), PARIS_PROMPT, 500)
    seen = 0
    while True:
        event = await handle.next_event()
        if isinstance(event, Text):
            seen += 1
            if seen == 3:
                handle.cancel()
        if isinstance(event, Finished):
            break
    assert event.finish_reason == "cancelled"
    assert event.completion_tokens <= seen + 2
    assert engine.stats().active == 0


async def test_a_slow_consumer_pauses_only_itself(engine: LlamaEngine) -> None:
    settings = make_settings()
    slow = submit(engine, settings, PARIS_PROMPT, 200)
    assert isinstance(await slow.next_event(), Started)
    _, fast_done = await collect(submit(engine, settings, PROMPTS[1], 60))
    assert fast_done.completion_tokens == 60
    # the unread stream is held at its buffer (4 events) instead of running to the end
    await asyncio.sleep(0.2)
    assert engine.stats().active == 1
    slow_text, slow_done = await collect(slow)
    assert slow_done.completion_tokens == 200
    assert slow_text
