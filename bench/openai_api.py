"""The OpenAI-compatible API against the house protocol, on one worker, in interleaved rounds.

1. Streaming ``/v1/chat/completions`` against ``/ws`` (same chat prompt, greedy, same length) at
   1 and 8 clients: aggregate tokens/s and the ratio (goal: >= 0.95).
2. A ``json_schema`` stream against an unconstrained one, one client: tokens/s (goal: >= 0.8).
3. 8 streams of which one is constrained: the other seven's tokens/s against all eight
   unconstrained (goal: >= 0.95).
4. Prefix caching: a second turn that resends the first, time to first token with the first
   turn's cache in a slot against the same request after the cache was evicted.
5. The token budget of constrained answers (issue 22): ``json_schema`` streams on a
   deterministic worker against a second one with ``GEMMA_GRAMMAR_BUDGET=false`` (how they ran
   before it; deterministic, so both write the same answer), 1 and 8 streams, an answer that
   fits and one steered to close at the budget: tokens/s and the ratio (goal: >= 0.95);
   then, in this process on the real vocabulary, what the budget costs per
   token: following the grammar (every constrained token), the exact check near the end
   (tokenizing the shortest completion), and a steered pick.

Usage: ``python bench/openai_api.py [--rounds 3] [--tokens 64]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
from websockets.sync.client import connect

from _common import EventClock, embedded_model_path, free_port, worker_process
from gemma_worker.core.gbnf_walk import GrammarWalk
from gemma_worker.core.json_schema import schema_to_gbnf
from gemma_worker.core.sampling import SamplingParams
from gemma_worker.engine.budget import AnswerBudget
from gemma_worker.engine.grammar import compile_grammar
from gemma_worker.engine.kernels import KernelChoices
from gemma_worker.engine.llama import LlamaModel
from gemma_worker.engine.sampler import Sampler

QUESTION = "Write a long story about a lighthouse keeper and the sea."
SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "chapters": {"type": "array", "items": {"type": "string"}},
        "words": {"type": "integer"},
    },
    "required": ["title", "chapters", "words"],
    "additionalProperties": False,
}
# Long enough that processing it again shows (about 1,000 tokens).
SYSTEM = " ".join(
    f"Rule {i}: answer politely, cite sources, keep to the topic of lighthouses." for i in range(60)
)


def ws_chat(base: str, max_tokens: int) -> tuple[int, float]:
    """One greedy chat request over ``/ws``: (completion tokens, decode seconds)."""
    body = {
        "input": QUESTION,
        "prompt_format": "chat",
        "max_tokens": max_tokens,
        "temperature": 0,
        "stateless": True,
    }
    with connect(base.replace("http", "ws", 1) + "/ws", max_size=None) as ws:
        clock = EventClock()
        ws.send(json.dumps(body))
        while not clock.see(json.loads(ws.recv())):
            pass
    t = clock.timing()
    return t.n_tokens, t.decode_s


def sse_chat(base: str, body: dict[str, Any]) -> tuple[int, float, float]:
    """One streamed chat completion: (completion tokens, decode seconds, TTFT ms)."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first = last = None
    usage: dict[str, Any] = {}
    with (
        httpx.Client(timeout=300) as client,
        client.stream("POST", f"{base}/v1/chat/completions", json=body) as r,
    ):
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            if chunk.get("usage"):
                usage = chunk["usage"]
            delta = chunk["choices"][0]["delta"] if chunk["choices"] else {}
            if delta.get("content") or delta.get("tool_calls"):
                last = time.perf_counter()
                first = first or last
    if first is None or last is None:
        raise RuntimeError("no token received")
    return usage["completion_tokens"], last - first, (first - t0) * 1e3


def chat_body(max_tokens: int, **extra: Any) -> dict[str, Any]:
    return {
        "model": "bench",
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": max_tokens,
        "temperature": 0,
        **extra,
    }


def run_clients(n: int, one: Callable[[int], tuple[int, float]]) -> list[tuple[int, float]]:
    """``n`` clients at once; each result is (tokens, decode seconds)."""
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def aggregate(results: list[tuple[int, float]], wall: float) -> float:
    return sum(n for n, _ in results) / wall


def rate(result: tuple[int, float]) -> float:
    n, span = result
    return (n - 1) / span if span > 0 else 0.0


def protocol_rounds(base: str, rounds: int, tokens: int) -> None:
    print("\n1. streaming chat: /v1/chat/completions vs /ws (aggregate tokens/s)")
    runners: dict[str, Callable[[int], tuple[int, float]]] = {
        "ws": lambda _i: ws_chat(base, tokens),
        "openai": lambda _i: sse_chat(base, chat_body(tokens))[:2],
    }
    for clients in (1, 8):
        ratios = []
        for r in range(rounds):
            figures = {}
            # the two take turns going first, so drift hits both alike
            for name in ("ws", "openai") if r % 2 == 0 else ("openai", "ws"):
                t0 = time.perf_counter()
                results = run_clients(clients, runners[name])
                figures[name] = aggregate(results, time.perf_counter() - t0)
            ratios.append(figures["openai"] / figures["ws"])
            print(
                f"  {clients} client(s): /ws {figures['ws']:6.1f} tok/s, "
                f"openai {figures['openai']:6.1f} tok/s, ratio {ratios[-1]:.3f}"
            )
        print(f"  {clients} client(s): median ratio openai / ws = {statistics.median(ratios):.3f}")


def grammar_rounds(base: str, rounds: int, tokens: int) -> None:
    constrained = chat_body(
        tokens,
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}},
        frequency_penalty=0.6,
        temperature=0.7,
        seed=1,
    )
    free = chat_body(tokens, frequency_penalty=0.6, temperature=0.7, seed=1)
    print("\n2. one stream: json_schema vs unconstrained (tokens/s)")
    ratios = []
    for r in range(rounds):
        if r % 2:
            schema = rate(sse_chat(base, constrained)[:2])
            plain = rate(sse_chat(base, free)[:2])
        else:
            plain = rate(sse_chat(base, free)[:2])
            schema = rate(sse_chat(base, constrained)[:2])
        ratios.append(schema / plain)
        print(f"  unconstrained {plain:5.1f}, json_schema {schema:5.1f}, ratio {ratios[-1]:.3f}")
    print(f"  median ratio json_schema / unconstrained = {statistics.median(ratios):.3f}")

    print("\n3. eight streams, one constrained: the other seven's tokens/s")
    ratios = []
    for r in range(rounds):
        runs = {
            "free": lambda _i: sse_chat(base, free)[:2],
            "mixed": lambda i: sse_chat(base, constrained if i == 0 else free)[:2],
        }
        results = {n: run_clients(8, runs[n]) for n in (("free", "mixed")[:: 1 - 2 * (r % 2)])}
        all_free, mixed = results["free"], results["mixed"]
        free_rate = statistics.median(rate(r) for r in all_free[1:])
        mixed_rate = statistics.median(rate(r) for r in mixed[1:])
        ratios.append(mixed_rate / free_rate)
        print(
            f"  all unconstrained {free_rate:5.1f}, beside a constrained one "
            f"{mixed_rate:5.1f} tok/s per stream, ratio {ratios[-1]:.3f}"
        )
    print(f"  median ratio = {statistics.median(ratios):.3f}")


def evict(base: str, n_slots: int) -> None:
    """Replace every slot's cache with an unrelated short prompt."""
    for i in range(n_slots):
        body = {"prompt": f"{i} unrelated filler text number {i}", "max_tokens": 1}
        httpx.post(f"{base}/v1/completions", json=body, timeout=60).raise_for_status()


def prefix_rounds(base: str, rounds: int, n_slots: int) -> None:
    print("\n4. prefix caching: second turn resending the first (TTFT ms)")
    first_turn = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    warm_ms, cold_ms = [], []
    for _ in range(rounds):
        evict(base, n_slots)
        answer = httpx.post(
            f"{base}/v1/chat/completions",
            json={"messages": first_turn, "max_tokens": 16, "temperature": 0},
            timeout=120,
        ).json()["choices"][0]["message"]["content"]
        second = {
            "messages": [
                *first_turn,
                {"role": "assistant", "content": answer},
                {"role": "user", "content": "Make it shorter."},
            ],
            "max_tokens": 4,
            "temperature": 0,
        }
        warm_ms.append(sse_chat(base, second)[2])
        evict(base, n_slots)
        cold_ms.append(sse_chat(base, second)[2])
        print(f"  with the cache {warm_ms[-1]:7.1f} ms, cache evicted {cold_ms[-1]:7.1f} ms")
    warm, cold = statistics.median(warm_ms), statistics.median(cold_ms)
    print(f"  median: {warm:.1f} ms with the cache, {cold:.1f} ms without ({cold / warm:.1f}x)")


def budget_rounds(on: str, off: str, rounds: int) -> None:
    print("\n5. the token budget: json_schema streams, budget on vs off (tokens/s)")
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}}
    # Deterministic workers, so both write the same answer: seed 1 ends by itself (~180
    # tokens), seed 8 would go on past 400 (on: steered to close there; off: cut).
    cases = {"fits": 1, "steered": 8}
    for label, seed in cases.items():
        body = chat_body(400, response_format=fmt, temperature=0.8, seed=seed)
        for clients in (1, 8):
            ratios = []
            lengths: dict[str, int] = {}
            for r in range(rounds):
                figures = {}
                for name in ("on", "off") if r % 2 == 0 else ("off", "on"):
                    base = on if name == "on" else off
                    results = run_clients(clients, lambda _i, b=base, j=body: sse_chat(b, j)[:2])
                    figures[name] = statistics.median(rate(x) for x in results)
                    lengths[name] = results[0][0]
                ratios.append(figures["on"] / figures["off"])
            print(
                f"  {label} ({lengths['on']} / {lengths['off']} tokens), {clients} stream(s): on "
                f"{figures['on']:5.1f}, off {figures['off']:5.1f} tok/s per stream (last round); "
                f"median ratio on / off = {statistics.median(ratios):.3f}"
            )
    budget_costs()


def budget_costs() -> None:
    """The budget's own work per token, measured on the real vocabulary in this process."""

    model = LlamaModel(
        embedded_model_path(),
        n_ctx_seq=64,
        n_seq=1,
        n_batch=64,
        n_threads=1,
        n_gpu_layers=0,
        kernels=KernelChoices.fast(),
    )
    gbnf = schema_to_gbnf(SCHEMA)
    answer = json.dumps(
        {
            "title": "The keeper",
            "chapters": [f"Chapter {i}: the sea" for i in range(12)],
            "words": 9,
        }
    )
    tokens = model.tokenize_whole(answer, False, False)
    walk = GrammarWalk.parse(gbnf)
    print(f"\n  per-token cost of the budget ({len(tokens)}-token answer, median of 5 runs):")
    for label, tight in (("following the grammar (room to spare)", False), ("near the end", True)):
        runs = []
        for _ in range(5):
            budget = AnswerBudget(walk, model)
            t0 = time.perf_counter()
            for i, token in enumerate(tokens):
                room = len(tokens) - i if tight else 1 << 20
                step = budget.check(token, room)
                assert step is not None, "the recorded answer must stay within its budget"
                budget.take(step, room, steered=False)
            runs.append((time.perf_counter() - t0) / len(tokens) * 1e6)
        print(f"    {label}: {statistics.median(runs):7.1f} us/token")
    rng = np.random.default_rng(0)
    params = SamplingParams(64, 0.8, 0.95, 40, 1, ())
    times = []
    for _ in range(20):
        sampler = Sampler(
            params,
            model.info.n_vocab,
            grammar=compile_grammar(model, gbnf, budget_tokens=64),
            vocab=model,
        )
        assert sampler.budget is not None
        for token in tokens[:-8]:  # 8 tokens before the end of a 12-chapter answer
            step = sampler.budget.check(token, 1 << 20)
            assert step is not None
            sampler.budget.take(step, 1 << 20, steered=False)
        logits = rng.normal(0, 3, model.info.n_vocab).astype(np.float32)
        t0 = time.perf_counter()
        sampler._choose_within(logits, 6)  # a token that would not fit: pick one that does
        times.append((time.perf_counter() - t0) * 1e3)
        sampler.free()
    print(
        f"    a steered pick (the sampled token would not fit): {statistics.median(times):.2f} ms"
    )
    model.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    slots = 8
    env = {"GEMMA_PARALLEL": str(slots), "GEMMA_N_CTX": "4096"}
    with worker_process(free_port(), env) as base:
        run_clients(8, lambda _i: sse_chat(base, chat_body(args.tokens)))  # warm-up
        protocol_rounds(base, args.rounds, args.tokens)
        grammar_rounds(base, args.rounds, args.tokens)
        prefix_rounds(base, args.rounds, slots)
    same = {**env, "GEMMA_DETERMINISTIC": "true"}
    off_env = {**same, "GEMMA_GRAMMAR_BUDGET": "false"}
    with worker_process(free_port(), same) as on, worker_process(free_port(), off_env) as off:
        for base in (on, off):
            run_clients(8, lambda _i, b=base: sse_chat(b, chat_body(args.tokens)))  # warm-up
        budget_rounds(on, off, args.rounds)


if __name__ == "__main__":
    main()
