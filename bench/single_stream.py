"""Single-stream benchmark: the worker (through /ws and /v1/execute) against raw
llama-cpp-python (``Llama.create_completion(stream=True)``) on the same model, same prompts,
same run. Prints tokens/s and time to first token for each, and the ratios.

    .venv/bin/python bench/single_stream.py [--max-tokens 128] [--rounds 3]
"""

from __future__ import annotations

import argparse
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


def raw_stream(llm: Llama, prompt: str, max_tokens: int) -> StreamTiming:
    """One streamed completion on raw llama-cpp-python, in this process."""
    llm.reset()
    t0 = time.perf_counter()
    first = last = None
    n = 0
    for _chunk in llm.create_completion(prompt, max_tokens=max_tokens, temperature=0, stream=True):
        now = time.perf_counter()
        first = first or now
        last = now
        n += 1
    assert first is not None and last is not None
    return StreamTiming((first - t0) * 1e3, n, last - first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n-ctx", type=int, default=4096)
    args = parser.parse_args()

    # Both stay loaded; the three paths take turns on each prompt so that machine drift hits
    # them alike. Only one runs at a time: the idle one does not compute.
    llm = Llama(
        str(embedded_model_path()),
        n_ctx=args.n_ctx,
        n_threads=os.cpu_count(),
        n_batch=512,
        verbose=False,
    )
    raw_runs: list[StreamTiming] = []
    ws_runs: list[StreamTiming] = []
    rest_runs: list[StreamTiming] = []
    with worker_process(free_port()) as url:
        raw_stream(llm, PROMPTS[0], 4)  # warm-up
        ws_stream(url, PROMPTS[0], 4)
        rest_stream(url, PROMPTS[0], 4)
        for _ in range(args.rounds):
            for prompt in PROMPTS:
                raw_runs.append(raw_stream(llm, prompt, args.max_tokens))
                ws_runs.append(ws_stream(url, prompt, args.max_tokens))
                rest_runs.append(rest_stream(url, prompt, args.max_tokens))
    raw_tps, raw_ttft = summarize(raw_runs)
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
    ok_tps = ws_tps >= 0.95 * raw_tps
    ok_ttft = ws_ttft <= raw_ttft + 10
    print(f"target /ws tokens/s >= 0.95 x raw: {'PASS' if ok_tps else 'FAIL'}")
    print(f"target /ws TTFT <= raw + 10 ms:    {'PASS' if ok_ttft else 'FAIL'}")


if __name__ == "__main__":
    main()
