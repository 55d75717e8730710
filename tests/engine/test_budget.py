"""Constrained answers within their token budget, on the real model and engine: an answer that
fits is the one the unsteered engine gives; one that would not fit closes in time, valid, with
finish reason ``stop``; free text is still cut (``length``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import jsonschema
import pytest
import pytest_asyncio

from gemma_worker.core.errors import ErrorCode
from gemma_worker.core.json_schema import ToolSpec, schema_to_gbnf, tool_call_gbnf
from gemma_worker.core.sampling import SamplingParams
from gemma_worker.engine.budget import AnswerBudget
from gemma_worker.engine.job import GenerationSpec
from gemma_worker.engine.llama_engine import LlamaEngine
from gemma_worker.engine.messages import Failed, Finished
from gemma_worker.engine.prompt import Prompt
from tests.conftest import PARIS_PROMPT, make_settings
from tests.engine.test_llama_engine import collect, running_engine

SCHEMA = {
    "type": "object",
    "properties": {
        "server": {"type": "string"},
        "services": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "risk": {"enum": ["low", "medium", "high"]},
                },
                "required": ["name", "risk"],
            },
        },
    },
    "required": ["server", "services"],
}
TOOL = ToolSpec(
    "restart",
    {
        "type": "object",
        "properties": {"host": {"type": "string"}, "service": {"type": "string"}},
        "required": ["host", "service"],
    },
)
GRAMMARS = {
    "schema": (schema_to_gbnf(SCHEMA), SCHEMA),
    "tool": (tool_call_gbnf([TOOL], required=True, parallel=False), None),
}
PROMPT = Prompt(
    "The services of a web server and their risk, as JSON:\n",
    add_special=True,
    parse_special=False,
    format="plain",
)


def greedy(max_tokens: int, *, temperature: float = 0.0, seed: int | None = None) -> SamplingParams:
    return SamplingParams(max_tokens, temperature, 0.95, 40, seed, ())


# One pair of engines for the module (loading a model twice per test would double its time).
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engines() -> AsyncIterator[tuple[LlamaEngine, LlamaEngine]]:
    """The engine as it is, and with the budget off (how answers came out before it)."""
    async with (
        running_engine(LlamaEngine(make_settings(parallel=4).engine_config())) as on,
        running_engine(
            LlamaEngine(make_settings(parallel=2, grammar_budget=False).engine_config())
        ) as off,
    ):
        yield on, off


async def run(eng: LlamaEngine, gbnf: str, params: SamplingParams) -> tuple[str, Finished]:
    grammar = await eng.compile_grammar(gbnf)
    return await collect(eng.submit(GenerationSpec("b", PROMPT, params, grammar=grammar)))


def check(text: str, schema: object | None) -> None:
    value = json.loads(text)
    if schema is None:  # a tool call
        assert value["name"] == "restart"
        jsonschema.validate(value["arguments"], TOOL.parameters)
    else:
        jsonschema.validate(value, schema)


@pytest.mark.parametrize("kind", sorted(GRAMMARS))
async def test_an_answer_that_fits_is_untouched(
    engines: tuple[LlamaEngine, LlamaEngine], kind: str
) -> None:
    on, off = engines
    gbnf, schema = GRAMMARS[kind]
    before, done_before = await run(off, gbnf, greedy(400))
    after, done_after = await run(on, gbnf, greedy(400))
    assert (after, done_after.finish_reason) == (before, done_before.finish_reason)
    assert done_before.finish_reason == "stop"  # the greedy answer ends by itself
    check(before, schema)
    # exactly its own length: the same answer, now ended by its grammar (no room for EOS)
    n = done_before.usage.completion_tokens
    exact, done_exact = await run(on, gbnf, greedy(n))
    assert (exact, done_exact.finish_reason) == (before, "stop")
    cut, done_cut = await run(off, gbnf, greedy(n - 1))
    assert done_cut.finish_reason == "length"
    assert cut == before[: len(cut)]


@pytest.mark.parametrize("kind", sorted(GRAMMARS))
async def test_an_answer_that_would_not_fit_closes_in_time(
    engines: tuple[LlamaEngine, LlamaEngine], kind: str
) -> None:
    on, _ = engines
    gbnf, schema = GRAMMARS[kind]
    grammar = await on.compile_grammar(gbnf)
    least = grammar.min_tokens
    assert least > 0
    cases = [(budget, seed) for budget in (least, least + 1, least + 7, 40) for seed in range(3)]
    answers = await asyncio.gather(
        *(run(on, gbnf, greedy(budget, temperature=0.8, seed=seed)) for budget, seed in cases)
    )
    for (budget, seed), (text, done) in zip(cases, answers, strict=True):
        assert done.finish_reason == "stop", (budget, seed, text)
        assert done.usage.completion_tokens <= budget
        check(text, schema)


async def test_a_call_started_in_auto_mode_closes_in_time(
    engines: tuple[LlamaEngine, LlamaEngine],
) -> None:
    """With tools offered (``auto``), the model may answer in words or call; once it has begun
    a call, the call is completed within the budget, like a forced one."""
    on, _ = engines
    gbnf = tool_call_gbnf([TOOL], required=False, parallel=True)
    prompt = Prompt(
        'Task: restart redis on db-02.\nCall: {"name": "restart", "arguments": {"host": '
        '"db-02", "service": "redis"}}\nTask: restart postgres on db-07.\nCall: {"name": '
        '"restart", "arguments": {"host": "db-07", "service": "postgres"}}\n'
        "Task: restart nginx on web-01.\nCall:",
        add_special=True,
        parse_special=False,
        format="plain",
    )
    grammar_text = gbnf

    async def one(seed: int) -> tuple[str, Finished]:
        grammar = await on.compile_grammar(grammar_text)
        params = greedy(24, temperature=0.8, seed=seed)
        return await collect(on.submit(GenerationSpec("a", prompt, params, grammar=grammar)))

    answers = await asyncio.gather(*(one(seed) for seed in range(12)))
    calls = [(text, done) for text, done in answers if text.lstrip().startswith(("{", "["))]
    assert calls, "the model never began a call: the test shows nothing"
    for text, done in calls:
        assert done.finish_reason == "stop", text
        value = json.loads(text)
        for call in value if isinstance(value, list) else [value]:
            assert call["name"] == "restart"
            jsonschema.validate(call["arguments"], TOOL.parameters)


async def test_free_text_is_still_cut_with_length(
    engines: tuple[LlamaEngine, LlamaEngine],
) -> None:
    on, _ = engines
    text, done = await run(on, "root ::= [a-zA-Z ,.\\n]*\n", greedy(6))
    assert done.finish_reason == "length" and done.usage.completion_tokens == 6
    # tools offered (auto): the model answers in words here, and that text is cut
    tools = tool_call_gbnf([TOOL], required=False, parallel=True)
    grammar = await on.compile_grammar(tools)
    paris = Prompt(PARIS_PROMPT, add_special=True, parse_special=False, format="plain")
    text, done = await collect(on.submit(GenerationSpec("p", paris, greedy(3), grammar=grammar)))
    assert not text.lstrip().startswith(("{", "["))
    assert done.finish_reason == "length" and done.usage.completion_tokens == 3


async def test_a_failing_budget_leaves_the_answer_constrained(
    engines: tuple[LlamaEngine, LlamaEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever goes wrong inside the budget, the request goes on under its grammar (now
    without the budget) and the engine serves the next one."""
    on, _ = engines
    gbnf, schema = GRAMMARS["schema"]

    def broken(*_args: object) -> None:
        raise RuntimeError("a bug in the budget")

    monkeypatch.setattr(AnswerBudget, "check", broken)
    text, done = await run(on, gbnf, greedy(400))
    assert done.finish_reason == "stop"
    check(text, schema)
    monkeypatch.undo()
    text, done = await run(on, gbnf, greedy(12))
    assert done.finish_reason == "stop" and done.usage.completion_tokens <= 12
    check(text, schema)


async def test_a_fitted_answer_needs_room_for_the_shortest_valid_one() -> None:
    """A request that fits its length to the context still needs room for the grammar's
    shortest answer: with less, CONTEXT_OVERFLOW before anything is generated."""
    async with running_engine(LlamaEngine(make_settings(n_ctx=128).engine_config())) as eng:
        gbnf = GRAMMARS["schema"][0]
        grammar = await eng.compile_grammar(gbnf)
        prompt_tokens = 128 - grammar.min_tokens + 1
        words = Prompt(
            " word" * (prompt_tokens - 1), add_special=True, parse_special=False, format="plain"
        )
        params = SamplingParams(64, 0.0, 1.0, 40, None, (), fit_context=True)
        spec = GenerationSpec("f", words, params, grammar=grammar)
        events = [event async for event in eng.submit(spec).events()]
        failed = events[-1]
        assert isinstance(failed, Failed) and failed.error.code == ErrorCode.CONTEXT_OVERFLOW
        assert f"at least {grammar.min_tokens}" in failed.error.message
