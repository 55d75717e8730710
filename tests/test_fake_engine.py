"""The fake engine keeps the engine's contract (the tests that run on it rely on it)."""

from __future__ import annotations

import pytest

from gemma_worker.core.conversation import Conversation, Turn
from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.sampling import SamplingParams
from gemma_worker.engine.interface import Engine
from gemma_worker.engine.job import GenerationSpec
from gemma_worker.engine.messages import Failed, Finished, Queued, Started, Text, Trimmed
from tests.fake_engine import DEFAULT_ANSWER, FakeEngine

pytestmark = pytest.mark.asyncio


def params(max_tokens: int = 16, stop: tuple[str, ...] = ()) -> SamplingParams:
    return SamplingParams(max_tokens, 0.0, 1.0, 40, None, stop)


async def run(engine: FakeEngine, spec: GenerationSpec) -> list[object]:
    handle = engine.submit(spec)
    return [event async for event in handle.events()]


async def started(**kw: object) -> FakeEngine:
    engine = FakeEngine(**kw)  # type: ignore[arg-type]
    await engine.start()
    return engine


async def test_it_is_an_engine() -> None:
    engine: Engine = await started()
    assert engine.info is not None and engine.identity is not None
    assert engine.identity.id == "fake-model"


async def test_answers_stop_and_length() -> None:
    engine = await started()
    events = await run(engine, GenerationSpec("a", Conversation("hi", "plain"), params()))
    assert isinstance(events[0], Started)
    text = "".join(e.text for e in events if isinstance(e, Text))
    assert text == "".join(DEFAULT_ANSWER)
    final = events[-1]
    assert isinstance(final, Finished) and final.finish_reason == "stop"
    assert final.usage.completion_tokens == len(DEFAULT_ANSWER)
    short = await run(engine, GenerationSpec("b", Conversation("hi", "plain"), params(2)))
    assert isinstance(short[-1], Finished) and short[-1].finish_reason == "length"


async def test_stop_strings_cut_the_answer() -> None:
    engine = await started()
    spec = GenerationSpec("a", Conversation("hi", "plain"), params(stop=(" capital",)))
    events = await run(engine, spec)
    assert "".join(e.text for e in events if isinstance(e, Text)) == " Paris. It is the"


async def test_full_slots_and_queue_refuse_and_waiting_requests_hear_their_place() -> None:
    engine = await started(slots=1, max_queue=1, token_delay=0.01)
    first = engine.submit(GenerationSpec("a", Conversation("hi", "plain"), params()))
    second = engine.submit(GenerationSpec("b", Conversation("hi", "plain"), params()))
    with pytest.raises(WorkerError) as info:
        engine.submit(GenerationSpec("c", Conversation("hi", "plain"), params()))
    assert info.value.code is ErrorCode.OVERLOADED
    assert isinstance(await second.next_event(), Queued)
    first.cancel()
    events = [e async for e in first.events()]
    assert isinstance(events[-1], Finished) and events[-1].finish_reason == "cancelled"
    rest = [e async for e in second.events()]
    assert isinstance(rest[-1], Finished) and rest[-1].finish_reason == "stop"


async def test_history_is_trimmed_only_when_the_spec_allows() -> None:
    engine = await started(n_ctx=64)
    history = tuple(Turn("x" * 40, "y" * 40) for _ in range(4))
    conv = Conversation("hi", "plain", history)
    trimmed = await run(engine, GenerationSpec("a", conv, params(8)))
    assert isinstance(trimmed[0], Trimmed) and trimmed[0].dropped_turns > 0
    refused = await run(engine, GenerationSpec("b", conv, params(8), trim_history=False))
    assert isinstance(refused[-1], Failed)
    assert refused[-1].error.code is ErrorCode.CONTEXT_OVERFLOW


async def test_a_grammar_answer_is_its_shortest_valid_text() -> None:
    engine = await started()
    grammar = await engine.compile_grammar('root ::= "{" "\\"a\\"" ":" [0-9] "}"')
    spec = GenerationSpec("a", Conversation("hi", "plain"), params(), grammar=grammar)
    events = await run(engine, spec)
    assert "".join(e.text for e in events if isinstance(e, Text)) == '{"a":0}'
    with pytest.raises(WorkerError):
        await engine.compile_grammar("root ::= (")
