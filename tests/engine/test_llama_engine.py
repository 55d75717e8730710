"""The batching engine on the real model, without the HTTP layer."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import itertools
import statistics
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TypeVar

import pytest

from gemma_worker.core.conversation import Conversation
from gemma_worker.core.request import ExecuteRequest
from gemma_worker.core.scheduling import StepEntry
from gemma_worker.engine.job import GenerationHandle, GenerationSpec
from gemma_worker.engine.llama_engine import EngineConfig, LlamaEngine
from gemma_worker.engine.messages import Finished, Started, Text
from gemma_worker.settings import Settings
from tests.conftest import PARIS_PROMPT, make_settings

PROMPTS = [
    PARIS_PROMPT,
    "The three primary colors are",
    "def add(a, b):",
    "Question: What is the largest planet?\nAnswer:",
]


E = TypeVar("E", bound=LlamaEngine)


@asynccontextmanager
async def running_engine(eng: E) -> AsyncIterator[E]:
    """``eng`` started, closed on the way out."""
    await eng.start()
    try:
        yield eng
    finally:
        await eng.close()


@pytest.fixture
async def engine() -> AsyncIterator[LlamaEngine]:
    async with running_engine(
        LlamaEngine(make_settings(parallel=4, stream_buffer=4).engine_config())
    ) as eng:
        yield eng


def submit(eng: LlamaEngine, settings: Settings, text: str, max_tokens: int) -> GenerationHandle:
    req = ExecuteRequest(input=text, max_tokens=max_tokens, temperature=0.0)
    params = settings.request_limits().resolve(req.sampling(), n_ctx=eng.n_ctx, n_vocab=262_144)
    return eng.submit(GenerationSpec(f"t-{text[:8]}", Conversation(text, "plain"), params))


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
    assert all(f.usage.completion_tokens > 0 for _, f in together)


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
    assert event.usage.completion_tokens <= seen + 2
    assert engine.stats().active == 0


async def test_a_slow_consumer_pauses_only_itself(engine: LlamaEngine) -> None:
    settings = make_settings()
    slow = submit(engine, settings, PARIS_PROMPT, 200)
    assert isinstance(await slow.next_event(), Started)
    _, fast_done = await collect(submit(engine, settings, PROMPTS[1], 60))
    assert fast_done.usage.completion_tokens == 60
    # the unread stream is held at its buffer (4 events) instead of running to the end
    await asyncio.sleep(0.2)
    assert engine.stats().active == 1
    slow_text, slow_done = await collect(slow)
    assert slow_done.usage.completion_tokens == 200
    assert slow_text


class RecordingEngine(LlamaEngine):
    """The real engine, recording each step's plan (which slots, how many tokens) through the
    config's ``on_step`` observer."""

    def __init__(self, config: EngineConfig) -> None:
        self.plans: list[list[StepEntry]] = []
        super().__init__(dataclasses.replace(config, on_step=self._record))

    def _record(self, plan: Sequence[StepEntry]) -> None:
        self.plans.append(list(plan))


async def test_long_prompt_is_chunked_and_running_stream_keeps_flowing() -> None:
    # one token per step for the running stream (no drafts): its 300 tokens then outlast
    # the long prompt's prefill, and its gaps are those of plain decode steps
    settings = make_settings(parallel=2, prefill_chunk=64, n_ctx=2048, speculation=False)
    eng = RecordingEngine(settings.engine_config())
    await eng.start()
    try:
        running = submit(eng, settings, PARIS_PROMPT, 300)
        arrivals: list[float] = []
        while len(arrivals) < 10:  # the running stream is decoding
            if isinstance(await running.next_event(), Text):
                arrivals.append(time.perf_counter())
        long_text = "The quick brown fox jumps over the lazy dog. " * 90  # ~900 tokens
        long = submit(eng, settings, long_text, 8)
        submitted = time.perf_counter()
        started = await long.next_event()
        assert isinstance(started, Started)
        assert started.n_prompt_tokens > 800
        first_plan = len(eng.plans)
        long_done = asyncio.Event()
        prefill_span = 0.0

        async def watch_long() -> None:
            while not isinstance(await long.next_event(), Text):
                pass
            long_done.set()
            nonlocal prefill_span
            prefill_span = time.perf_counter() - submitted

        watcher = asyncio.create_task(watch_long())
        while not long_done.is_set():
            event = await running.next_event()
            if isinstance(event, Text):
                arrivals.append(time.perf_counter())
        await watcher
        prefill_plans = [p for p in eng.plans[first_plan:] if any(e.prefill for e in p)]
        # the long prompt went in chunks of at most 64 tokens...
        assert len(prefill_plans) >= started.n_prompt_tokens // 64
        assert all(e.n_tokens <= 64 for p in prefill_plans for e in p if e.prefill)
        # ...and every one of those steps also decoded the running stream
        assert all(any(not e.prefill for e in p) for p in prefill_plans)
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        decode_gap = statistics.median(gaps[:9])
        chunk_gap = max(gaps[9:])
        # unchunked, the running stream would wait the whole prefill (~14 chunks); it waits
        # one chunk step at most
        assert chunk_gap < prefill_span / 4, (decode_gap, chunk_gap, prefill_span)
        running.cancel()
        await collect(running)
        await collect(long)
    finally:
        await eng.close()


async def test_a_prompt_alone_takes_whole_batches() -> None:
    settings = make_settings(parallel=2, prefill_chunk=64, n_batch=256, n_ctx=2048)
    async with running_engine(RecordingEngine(settings.engine_config())) as eng:
        long_text = "The quick brown fox jumps over the lazy dog. " * 90  # ~900 tokens
        _, finished = await collect(submit(eng, settings, long_text, 2))
        n_prompt = finished.usage.prompt_tokens
        chunks = [e.n_tokens for p in eng.plans for e in p if e.prefill]
        # prefill_chunk only limits prompt tokens beside decoding streams
        assert chunks == [256] * (n_prompt // 256) + [n_prompt % 256]


async def test_a_dropped_handle_frees_its_slot(engine: LlamaEngine) -> None:
    settings = make_settings()
    running = submit(engine, settings, PARIS_PROMPT, 500)
    assert isinstance(await running.next_event(), Started)
    del running  # nobody will ever read it (a client gone before its stream began)
    gc.collect()
    deadline = time.monotonic() + 2
    while engine.stats().active or engine.stats().queued:
        assert time.monotonic() < deadline, "an abandoned generation kept its slot"
        await asyncio.sleep(0.01)


async def test_a_cache_far_from_the_busy_slots_is_copied_beside_them() -> None:
    # One KV buffer per slot: llama.cpp runs the model once per run of consecutive busy
    # slots, so a reused cache is copied next to the busy ones, and must give the same output.
    settings = make_settings(parallel=4, n_ctx=1024)
    async with running_engine(RecordingEngine(settings.engine_config())) as eng:
        question = (
            "Question: Which river flows through the city of Paris, the capital of France, "
            "and into which sea does it finally empty?\nAnswer:"
        )
        cold_text, _ = await collect(submit(eng, settings, question, 12))  # slot 0
        a = submit(eng, settings, "Once upon a time", 4)  # slot 1
        b = submit(eng, settings, "The history of Rome", 4)  # slot 2, beside the busy 1
        await collect(a)
        await collect(b)
        busy = submit(eng, settings, "def fibonacci(n):", 300)  # slot 3, the empty one
        assert isinstance(await busy.next_event(), Started)
        again = submit(eng, settings, question, 12)
        started = await again.next_event()
        assert isinstance(started, Started)
        assert started.n_cached_tokens > 20
        first_plan = len(eng.plans)
        warm_text, _ = await collect(again)
        slots = {e.slot for p in eng.plans[first_plan:] for e in p}
        assert slots == {2, 3}  # ran in slot 2, beside 3, with slot 0's cache copied there
        assert warm_text == cold_text
        busy.cancel()
        await collect(busy)


async def test_a_gap_between_busy_slots_is_closed_by_moving_a_request() -> None:
    settings = make_settings(parallel=4, n_ctx=1024)
    prompt = "Once upon a time, in a small village by the sea,"
    async with running_engine(LlamaEngine(settings.engine_config())) as alone:
        alone_text, _ = await collect(submit(alone, settings, prompt, 40))
    async with running_engine(RecordingEngine(settings.engine_config())) as eng:
        a = submit(eng, settings, "The history of the Roman Empire begins", 60)  # slot 0
        b = submit(eng, settings, "def fibonacci(n):", 3)  # slot 1, soon done
        c = submit(eng, settings, prompt, 40)  # slot 2, moves to 1 when b is done
        (text, _), _, _ = await asyncio.gather(collect(c), collect(a), collect(b))
        slots_seen = [sorted(e.slot for e in p if not e.prefill) for p in eng.plans]
        assert [0, 1, 2] in slots_seen  # all three decoded together
        assert [0, 2] not in slots_seen  # the gap b left never cost a step...
        last_in_2 = max(i for i, s in enumerate(slots_seen) if 2 in s)
        assert [0, 1] in slots_seen[last_in_2 + 1 :]  # ...c went on in slot 1
        assert text == alone_text  # the moved KV cache gives the same output


def _scoped(
    eng: LlamaEngine, settings: Settings, text: str, max_tokens: int, scope: str
) -> GenerationHandle:
    req = ExecuteRequest(input=text, max_tokens=max_tokens, temperature=0.0)
    params = settings.request_limits().resolve(req.sampling(), n_ctx=eng.n_ctx, n_vocab=262_144)
    spec = GenerationSpec(f"t-{scope}", Conversation(text, "plain"), params, scope=scope)
    return eng.submit(spec)


async def test_requests_sent_together_with_one_head_compute_it_once() -> None:
    """Three requests of one key scope with the same long prompt, sent at once beside
    another: the head is processed once, the others start from a copy of it (reported as
    cached), and every answer is what the prompt gives alone. A request of another scope
    computes its own."""
    settings = make_settings(parallel=4, n_ctx=1024)
    head = "Summarise this server log for the on-call engineer.\n" + "".join(
        f"2026-12-04 10:{m:02d}:00 nginx[{100 + m}]: upstream timed out while reading\n"
        for m in range(18)
    )
    async with running_engine(LlamaEngine(settings.engine_config())) as alone:
        solo, _ = await collect(_scoped(alone, settings, head, 16, "a"))
    async with running_engine(RecordingEngine(settings.engine_config())) as eng:
        handles = [_scoped(eng, settings, head, 16, "a") for _ in range(3)]
        handles.append(_scoped(eng, settings, head, 16, "b"))
        done = await asyncio.gather(*(collect(h) for h in handles))
        n_prompt = done[0][1].usage.prompt_tokens
        assert n_prompt > 300
        assert [text for text, _ in done] == [solo] * 4
        cached = sorted(f.usage.cached_tokens for _, f in done[:3])
        assert cached == [0, n_prompt - 1, n_prompt - 1]
        assert done[3][1].usage.cached_tokens == 0  # another key's request shares nothing
        processed = sum(e.n_tokens for p in eng.plans for e in p if e.prefill)
        assert processed == 2 * n_prompt + 2  # scope a once (+1 each copy), scope b once
