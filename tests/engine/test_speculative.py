"""Speculative decoding on the real model: outputs are the same with it and without it
(greedy, seeded sampling, grammars, stop strings, logprobs, batched, prefix-cache reuse), and
answers that repeat their input get most of their tokens from accepted drafts.

Deterministic kernels (the suite's mode): a token's logits do not depend on how many tokens
of its sequence share the step, so the outputs must be identical, not merely close."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from gemma_worker.core.conversation import Conversation
from gemma_worker.core.request import ExecuteRequest
from gemma_worker.engine.job import GenerationSpec
from gemma_worker.engine.llama_engine import LlamaEngine
from gemma_worker.engine.messages import Finished, Text
from gemma_worker.settings import Settings
from tests.conftest import make_settings
from tests.engine.test_llama_engine import running_engine

WORKLOADS: dict[str, Any] = json.loads(
    (Path(__file__).parents[2] / "bench" / "prompts" / "speculative.json").read_text()
)
REWRITE = WORKLOADS["workloads"]["rewrite"][0]
EXTRACTION = WORKLOADS["workloads"]["extraction"][0]
PROSE = WORKLOADS["workloads"]["prose"][0]


class Run:
    """One engine, with or without speculation, and the settings its requests resolve with."""

    def __init__(self, engine: LlamaEngine, settings: Settings) -> None:
        self.engine, self.settings = engine, settings

    def spec(self, text: str, max_tokens: int, **fields: Any) -> GenerationSpec:
        extra = {k: fields.pop(k) for k in ("grammar", "top_logprobs", "session") if k in fields}
        req = ExecuteRequest(input=text, max_tokens=max_tokens, **fields)
        params = self.settings.request_limits().resolve(
            req.sampling(), n_ctx=self.engine.n_ctx, n_vocab=262_144
        )
        return GenerationSpec(f"s-{text[:6]}", Conversation(text, "plain"), params, **extra)

    async def run(self, spec: GenerationSpec) -> tuple[str, Finished, list[Text]]:
        texts: list[Text] = []
        async for event in self.engine.submit(spec).events():
            if isinstance(event, Text):
                texts.append(event)
            elif isinstance(event, Finished):
                return "".join(t.text for t in texts), event, texts
        raise AssertionError("no Finished event")

    async def text(self, text: str, max_tokens: int, **fields: Any) -> tuple[str, Finished]:
        out, finished, _ = await self.run(self.spec(text, max_tokens, **fields))
        return out, finished


async def _engine(speculation: bool) -> AsyncIterator[Run]:
    settings = make_settings(speculation=speculation, n_ctx=2048)
    async with running_engine(LlamaEngine(settings.engine_config())) as engine:
        yield Run(engine, settings)


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def plain() -> AsyncIterator[Run]:
    async for run in _engine(False):
        yield run


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def spec() -> AsyncIterator[Run]:
    async for run in _engine(True):
        yield run


@pytest.mark.parametrize("workload", ["rewrite", "extraction", "prose"])
async def test_greedy_outputs_are_identical_on_the_bench_prompts(
    plain: Run, spec: Run, workload: str
) -> None:
    n = WORKLOADS["max_tokens"][workload]
    for prompt in WORKLOADS["workloads"][workload]:
        expected, base = await plain.text(prompt, n, temperature=0.0)
        got, fin = await spec.text(prompt, n, temperature=0.0)
        assert got == expected
        assert fin.usage == base.usage and fin.finish_reason == base.finish_reason
        assert base.timings.draft_tokens == 0
        assert 0 <= fin.timings.accepted_tokens <= fin.timings.draft_tokens


async def test_a_rewritten_file_comes_mostly_from_accepted_drafts(spec: Run) -> None:
    _, fin = await spec.text(REWRITE, 200, temperature=0.0)
    assert fin.usage.completion_tokens == 200
    # most tokens copy the file above: each verified draft token that stood saved a step
    assert fin.timings.accepted_tokens >= 100, fin.timings
    assert fin.timings.accepted_tokens <= fin.timings.draft_tokens


async def test_seeded_sampling_draws_the_same_tokens(plain: Run, spec: Run) -> None:
    for seed in (1, 7, 42):
        fields = {"temperature": 0.9, "top_k": 40, "top_p": 0.95, "seed": seed}
        expected, _ = await plain.text(REWRITE, 96, **fields)
        got, fin = await spec.text(REWRITE, 96, **fields)
        assert got == expected, seed
        assert fin.timings.draft_tokens > 0


async def test_stops_penalties_and_exact_lengths_are_kept(plain: Run, spec: Run) -> None:
    cases: list[dict[str, Any]] = [
        {"stop": ["[cache]"]},
        {"stop": ["debug"], "repeat_penalty": 1.3},
        {"frequency_penalty": 0.5},
    ]
    for fields in cases:
        expected, base = await plain.text(REWRITE, 160, temperature=0.0, **fields)
        got, fin = await spec.text(REWRITE, 160, temperature=0.0, **fields)
        assert (got, fin.finish_reason, fin.stop_sequence) == (
            expected,
            base.finish_reason,
            base.stop_sequence,
        ), fields
        assert fin.usage.completion_tokens == base.usage.completion_tokens
    for n in (1, 2, 9, 33):  # drafts never carry an answer past max_tokens
        expected, base = await plain.text(REWRITE, n, temperature=0.0)
        got, fin = await spec.text(REWRITE, n, temperature=0.0)
        assert got == expected and fin.usage.completion_tokens == n


async def test_a_grammar_checks_the_drafts_too(plain: Run, spec: Run) -> None:
    # the answer may only be config lines of lowercase keys: a draft token it rejects falls
    gbnf = 'root ::= line+\nline ::= [a-z_]+ " = " [a-z0-9/._]+ "\\n"'
    outs = []
    for run in (plain, spec):
        grammar = await run.engine.compile_grammar(gbnf)
        out, fin, _ = await run.run(run.spec(REWRITE, 120, temperature=0.0, grammar=grammar))
        outs.append((out, fin.usage.completion_tokens))
    assert outs[0] == outs[1]
    assert outs[1][0].count(" = ") >= 3


async def test_logprobs_are_those_of_the_plain_decode(plain: Run, spec: Run) -> None:
    texts = []
    for run in (plain, spec):
        _, _, events = await run.run(run.spec(REWRITE, 48, temperature=0.0, top_logprobs=3))
        texts.append([lp for t in events for lp in t.logprobs])
    assert len(texts[0]) == 48
    assert [(lp.token, lp.logprob, [t.token for t in lp.top]) for lp in texts[1]] == [
        (lp.token, lp.logprob, [t.token for t in lp.top]) for lp in texts[0]
    ]


async def test_batched_speculating_streams_match_the_plain_decode(plain: Run, spec: Run) -> None:
    prompts = [REWRITE, EXTRACTION, PROSE, WORKLOADS["workloads"]["rewrite"][1]]
    expected = [await plain.text(p, 96, temperature=0.0) for p in prompts]
    together = await asyncio.gather(*(spec.text(p, 96, temperature=0.0) for p in prompts))
    assert [t for t, _ in together] == [t for t, _ in expected]


async def test_the_kv_cache_a_speculating_run_leaves_holds_only_accepted_tokens(
    plain: Run, spec: Run
) -> None:
    # a follow-up continuing prompt + answer reuses the cache the first run left; had a
    # rejected draft's cells stayed in it, the continuation would differ from a fresh decode
    first, _ = await spec.text(REWRITE, 120, temperature=0.0)
    follow = REWRITE + first
    got, fin = await spec.text(follow, 64, temperature=0.0)
    assert fin.usage.cached_tokens > 100
    expected, _ = await plain.text(follow, 64, temperature=0.0)
    assert got == expected
