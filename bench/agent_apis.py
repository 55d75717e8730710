"""The Responses and Messages APIs against Chat Completions, on one worker, interleaved rounds.

Streaming ``/v1/responses`` and ``/v1/messages`` against streaming ``/v1/chat/completions``:
the same chat prompt, greedy, the same length, at 1 and 8 clients; aggregate tokens/s and the
ratios (goal: >= 0.95). The three take turns going first, so drift hits them alike.

Usage: ``python bench/agent_apis.py [--rounds 5] [--tokens 64]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import httpx

from _common import free_port, worker_process
from openai_api import QUESTION, aggregate, chat_body, run_clients, sse_chat


def _stream(
    base: str,
    path: str,
    body: dict[str, Any],
    usage_of: Callable[[dict[str, Any]], int | None],
    is_token: Callable[[dict[str, Any]], bool],
) -> tuple[int, float]:
    """One streamed request: (completion tokens from its usage, seconds first to last token)."""
    first = last = None
    tokens: int | None = None
    with (
        httpx.Client(timeout=300) as client,
        client.stream("POST", f"{base}{path}", json=body) as r,
    ):
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event.get("type") in ("error", "response.failed"):
                raise RuntimeError(event)
            if is_token(event):
                last = time.perf_counter()
                first = first or last
            tokens = usage_of(event) or tokens
    if first is None or last is None or tokens is None:
        raise RuntimeError("no token received")
    return tokens, last - first


def responses_stream(base: str, max_tokens: int) -> tuple[int, float]:
    body = {"model": "bench", "input": QUESTION, "max_output_tokens": max_tokens,
            "temperature": 0, "stream": True, "store": False}  # fmt: skip

    def usage(e: dict[str, Any]) -> int | None:
        done = e.get("type") in ("response.completed", "response.incomplete")
        return e["response"]["usage"]["output_tokens"] if done else None

    return _stream(base, "/v1/responses", body, usage,
                   lambda e: e.get("type") == "response.output_text.delta")  # fmt: skip


def messages_stream(base: str, max_tokens: int) -> tuple[int, float]:
    body = {"model": "bench", "messages": [{"role": "user", "content": QUESTION}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True}  # fmt: skip

    def usage(e: dict[str, Any]) -> int | None:
        return e["usage"]["output_tokens"] if e.get("type") == "message_delta" else None

    return _stream(base, "/v1/messages", body, usage,
                   lambda e: e.get("type") == "content_block_delta")  # fmt: skip


def rounds(base: str, n_rounds: int, tokens: int) -> None:
    runners: dict[str, Callable[[int], tuple[int, float]]] = {
        "chat": lambda _i: sse_chat(base, chat_body(tokens))[:2],
        "responses": lambda _i: responses_stream(base, tokens),
        "messages": lambda _i: messages_stream(base, tokens),
    }
    names = list(runners)
    for clients in (1, 8):
        ratios: dict[str, list[float]] = {"responses": [], "messages": []}
        for r in range(n_rounds):
            order = names[r % 3 :] + names[: r % 3]
            figures = {}
            for name in order:
                t0 = time.perf_counter()
                results = run_clients(clients, runners[name])
                figures[name] = aggregate(results, time.perf_counter() - t0)
            for name, values in ratios.items():
                values.append(figures[name] / figures["chat"])
            print(
                f"  {clients} client(s) round {r + 1}: chat {figures['chat']:6.1f} tok/s, "
                f"responses {figures['responses']:6.1f}, messages {figures['messages']:6.1f}",
                flush=True,
            )
        for name, values in ratios.items():
            each = " ".join(f"{v:.3f}" for v in values)
            print(
                f"  {clients} client(s): median ratio {name} / chat = "
                f"{statistics.median(values):.3f}  ({each})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    env = {"GEMMA_PARALLEL": "8", "GEMMA_N_CTX": "4096"}
    with worker_process(free_port(), env) as base:
        run_clients(8, lambda _i: sse_chat(base, chat_body(args.tokens)))  # warm-up
        run_clients(8, lambda _i: responses_stream(base, args.tokens))
        run_clients(8, lambda _i: messages_stream(base, args.tokens))
        print(f"streaming, {args.tokens} tokens a request, greedy, the same chat prompt")
        rounds(base, args.rounds, args.tokens)


if __name__ == "__main__":
    main()
