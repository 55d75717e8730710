"""Grammar-constrained sampling on the real model: the batched search for allowed tokens picks
exactly what filtering the whole vocabulary picks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from gemma_worker.core.json_schema import schema_to_gbnf
from gemma_worker.core.sampling import SamplingParams
from gemma_worker.engine import sampler
from gemma_worker.engine.job import GenerationSpec
from gemma_worker.engine.llama_engine import LlamaEngine
from gemma_worker.engine.messages import Finished
from gemma_worker.engine.prompt import Prompt
from tests.conftest import make_settings
from tests.engine.test_llama_engine import collect

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "year": {"type": "integer"},
    },
    "required": ["title", "tags", "year"],
}
PROMPT = Prompt("A book described as JSON:", add_special=True, parse_special=False, format="plain")


@pytest.fixture
async def engine() -> AsyncIterator[LlamaEngine]:
    eng = LlamaEngine(make_settings(parallel=2).engine_config())
    await eng.start()
    yield eng
    await eng.close()


async def generate(eng: LlamaEngine, params: SamplingParams) -> tuple[str, Finished]:
    grammar = await eng.compile_grammar(schema_to_gbnf(SCHEMA))
    return await collect(eng.submit(GenerationSpec("s", PROMPT, params, grammar=grammar)))


@pytest.mark.parametrize("temperature", [0.0, 0.9])
async def test_batched_grammar_search_equals_the_full_filter(
    engine: LlamaEngine, monkeypatch: pytest.MonkeyPatch, temperature: float
) -> None:
    seeds = range(4) if temperature else range(1)
    for seed in seeds:
        params = SamplingParams(120, temperature, 0.95, 64, seed, (), frequency_penalty=0.5)
        batched, done = await generate(engine, params)
        with monkeypatch.context() as m:
            m.setattr(sampler, "_GRAMMAR_BATCHES", (10**9,))  # whole vocabulary every time
            full, _ = await generate(engine, params)
        assert batched == full
        if done.finish_reason == "stop":
            json.loads(batched)
