"""The Python grammar walk agrees with llama.cpp's grammar sampler, token by token, on the real
vocabulary: the same tokens allowed, the end allowed at the same points."""

from __future__ import annotations

import ctypes
import json
import random
from typing import Any

import llama_cpp as lc
import numpy as np
import pytest

from gemma_worker.core.gbnf_walk import GrammarWalk
from gemma_worker.core.json_schema import (
    JSON_OBJECT_GBNF,
    ToolSpec,
    schema_to_gbnf,
    tool_call_gbnf,
)
from gemma_worker.engine.budget import completion_tokens, minimum_tokens
from gemma_worker.engine.grammar import compile_grammar
from gemma_worker.engine.llama import LlamaModel
from gemma_worker.engine.sampler import _TOKEN_DATA, _as_array

TOOL = ToolSpec(
    "read_logs",
    {
        "type": "object",
        "properties": {
            "host": {"type": "string", "maxLength": 40},
            "service": {"enum": ["nginx", "redis", "postgres"]},
            "lines": {"type": "integer"},
        },
        "required": ["host", "service"],
    },
)
SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "level": {"enum": ["low", "medium", "high"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
        "when": {"type": "string", "format": "date"},
        "note": {"type": ["string", "null"]},
    },
    "required": ["title", "level", "tags"],
}
#: (grammar, texts that follow it: the walks lean on their tokens to get somewhere)
CASES: dict[str, tuple[str, list[str]]] = {
    "schema": (
        schema_to_gbnf(SCHEMA),
        [
            json.dumps(
                {
                    "title": "\u00dcn\u00efcode \u2013 ok",
                    "level": "medium",
                    "tags": ["a b", "c\\"],
                    "note": None,
                }
            ),
            '{"title":"x","level":"low","tags":[],"when":"2026-12-02"}',
        ],
    ),
    "optional_and_patterns": (
        schema_to_gbnf(
            {
                "type": "object",
                "properties": {
                    **{f"p{i}": {"type": ["integer", "null"]} for i in range(6)},
                    "code": {"type": "string", "pattern": "^(ab|c?)*-[0-9]{2,3}$"},
                    "kind": {"anyOf": [{"const": "x"}, {"type": "array", "items": {}}]},
                },
            }
        ),
        ['{"p1": 5, "p4": null, "code": "abcab-123", "kind": [1, "x", {}]}', '{"kind": "x"}'],
    ),
    "json_object": (JSON_OBJECT_GBNF, ['{"a": [1.5e3, true, null, {"b": "日本"}], "c": -0}']),
    "tool_auto": (
        tool_call_gbnf([TOOL], required=False, parallel=True),
        [
            '[{"name": "read_logs", "arguments": {"host": "web-01", "service": "nginx"}}]',
            "The logs look fine: nothing to call. ✓",
        ],
    ),
    "tool_required": (
        tool_call_gbnf([TOOL], required=True, parallel=False),
        ['{"name": "read_logs", "arguments": {"host": "db", "service": "redis", "lines": 20}}'],
    ),
}


def allowed_by_llama(grammar: Any, tokens: list[int]) -> set[int]:
    batch = np.zeros(len(tokens), dtype=_TOKEN_DATA)
    batch["id"] = tokens
    batch["logit"] = 1.0
    lc.llama_sampler_apply(grammar, ctypes.byref(_as_array(batch)))
    return {int(t) for t in batch["id"][np.isfinite(batch["logit"])]}


def probe_tokens(model: LlamaModel, texts: list[str], rng: random.Random) -> list[int]:
    """Tokens worth checking: those of the texts, single characters (punctuation, digits,
    bytes of split characters), and random ones."""
    chars = '{}[]",: \n\t\\/-+.eE0123456789abcdefnrtuxyz日é✓' + "".join(texts)
    found = {t for text in texts for t in model.tokenize_whole(text, False, False)}
    found |= {t for c in set(chars) for t in model.tokenize_whole(c, False, False)}
    found |= {rng.randrange(model.info.n_vocab) for _ in range(150)}
    return sorted(t for t in found if not model.is_eog(t))


@pytest.mark.parametrize("case", sorted(CASES))
def test_walk_allows_what_llama_cpp_allows(model: LlamaModel, case: str) -> None:
    gbnf, texts = CASES[case]
    walk = GrammarWalk.parse(gbnf)
    rng = random.Random(case)
    probes = probe_tokens(model, texts, rng)
    eog = next(t for t in range(model.info.n_vocab) if model.is_eog(t))
    for text in texts:
        natural = model.tokenize_whole(text, False, False)
        grammar = compile_grammar(model, gbnf).take()  # constraining only
        try:
            state = walk.initial()
            for step in range(40):
                theirs = allowed_by_llama(grammar, probes)
                ours = {t for t in probes if walk.accept(state, model.special_piece(t))}
                assert ours == theirs, (case, step)
                assert bool(allowed_by_llama(grammar, [eog])) == walk.complete(state)
                if not theirs:
                    break
                # follow the text while it is allowed, else wander
                nxt = natural[step] if step < len(natural) else None
                token = nxt if nxt in theirs else rng.choice(sorted(theirs))
                lc.llama_sampler_accept(grammar, token)
                after = walk.accept(state, model.special_piece(token))
                assert after is not None
                state = after
        finally:
            lc.llama_sampler_free(grammar)


def test_the_shortest_answer_in_tokens(model: LlamaModel) -> None:
    """The minimum a grammar's answer takes is its shortest text, tokenized; that tokenization
    is exact (the tokens spell the text) and never more tokens than bytes."""
    for gbnf, _ in CASES.values():
        walk = GrammarWalk.parse(gbnf)
        text = walk.shortest(walk.initial())
        assert text is not None
        n = minimum_tokens(walk, model, 4096)
        if not text:
            assert n == 0
            continue
        tokens = completion_tokens(model, text)
        assert tokens is not None and len(tokens) == n <= len(text.encode())
    analysed = compile_grammar(model, schema_to_gbnf(SCHEMA), budget_tokens=4096)
    walk = GrammarWalk.parse(schema_to_gbnf(SCHEMA))
    assert analysed.walk is not None
    assert analysed.min_tokens == minimum_tokens(walk, model, 4096) > 0
    assert compile_grammar(model, schema_to_gbnf(SCHEMA)).walk is None  # budget off
