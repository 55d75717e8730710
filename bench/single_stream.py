"""Single-stream benchmark: the worker (through /ws and /v1/execute) against raw
llama-cpp-python (``Llama.create_completion(stream=True)``) on the same model, same prompts,
same run. Prints tokens/s and time to first token for each, and the ratios.

    .venv/bin/python bench/single_stream.py [--max-tokens 128] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gc
import os
import time

from llama_cpp import Llama

from _common import (
    PROMPTS,
    StreamTiming,
    embedded_model_path,
    free_port,
    rest_stream,
    summarize,
    worker_process,
    ws_stream,
)


def raw_llama(max_tokens: int, rounds: int, n_ctx: int) -> list[StreamTiming]:
    """Raw llama-cpp-python, in this process, with the worker's threads and context."""
    llm = Llama(
        str(embedded_model_path()),
        n_ctx=n_ctx,
        n_threads=os.cpu_count(),
        n_batch=512,
        verbose=False,
    )
    out = []
    llm.create_completion(PROMPTS[0], max_tokens=4, temperature=0)  # warm-up
    for _ in range(rounds):
        for prompt in PROMPTS:
            llm.reset()
            t0 = time.perf_counter()
            first = last = None
            n = 0
            for _chunk in llm.create_completion(
                prompt, max_tokens=max_tokens, temperature=0, stream=True
            ):
                now = time.perf_counter()
                first = first or now
                last = now
                n += 1
            assert first is not None and last is not None
            out.append(StreamTiming((first - t0) * 1e3, n, last - first))
    del llm
    gc.collect()
    return out


def worker_runs(max_tokens: int, rounds: int) -> tuple[list[StreamTiming], list[StreamTiming]]:
    with worker_process(free_port()) as url:
        ws_stream(url, PROMPTS[0], 4)  # warm-up
        ws_runs, rest_runs = [], []
        for _ in range(rounds):
            for prompt in PROMPTS:
                ws_runs.append(ws_stream(url, prompt, max_tokens))
                rest_runs.append(rest_stream(url, prompt, max_tokens))
    return ws_runs, rest_runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n-ctx", type=int, default=4096)
    args = parser.parse_args()

    raw_a = raw_llama(args.max_tokens, args.rounds, args.n_ctx)
    ws_runs, rest_runs = worker_runs(args.max_tokens, args.rounds)
    raw_b = raw_llama(args.max_tokens, args.rounds, args.n_ctx)  # before and after: drift shows
    raw_tps, raw_ttft = summarize(raw_a + raw_b)
    ws_tps, ws_ttft = summarize(ws_runs)
    rest_tps, rest_ttft = summarize(rest_runs)

    print(f"single stream, {args.max_tokens} tokens, {len(PROMPTS)} prompts x {args.rounds}")
    print(f"{'path':<28}{'tokens/s':>10}{'TTFT ms':>10}{'tps ratio':>11}{'TTFT diff':>11}")
    print(f"{'raw llama-cpp-python':<28}{raw_tps:>10.1f}{raw_ttft:>10.1f}{1.0:>11.3f}{0.0:>11.1f}")
    for name, tps, ttft in (
        ("worker /ws", ws_tps, ws_ttft),
        ("worker /v1/execute stream", rest_tps, rest_ttft),
    ):
        print(f"{name:<28}{tps:>10.1f}{ttft:>10.1f}{tps / raw_tps:>11.3f}{ttft - raw_ttft:>+11.1f}")
    print(
        f"raw before/after worker: {summarize(raw_a)[0]:.1f} / {summarize(raw_b)[0]:.1f} tokens/s"
    )
    ok_tps = ws_tps >= 0.95 * raw_tps
    ok_ttft = ws_ttft <= raw_ttft + 10
    print(f"target /ws tokens/s >= 0.95 x raw: {'PASS' if ok_tps else 'FAIL'}")
    print(f"target /ws TTFT <= raw + 10 ms:    {'PASS' if ok_ttft else 'FAIL'}")


if __name__ == "__main__":
    main()
