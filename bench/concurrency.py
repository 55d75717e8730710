"""Concurrency benchmark: N clients, each sending requests back to back (fixed prompts,
fixed max_tokens, temperature 0), at N = 1, 4, 8, 16, through the worker's /ws and
/v1/execute (ND-JSON stream), and the same load against ``python -m llama_cpp.server`` on the
same model (same threads and per-request context) in the same run. Prints aggregate tokens/s,
time to first token p50/p95, per-stream tokens/s, and the ratios.

    .venv/bin/python bench/concurrency.py                 # the load test
    .venv/bin/python bench/concurrency.py --idle 1000     # RSS per idle WebSocket connection

llama_cpp.server needs its extras: ``pip install sse-starlette 'starlette-context<0.4'``
(``make bench`` installs them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
from websockets.asyncio.client import connect

from _common import (
    PROMPTS,
    EventClock,
    StreamTiming,
    embedded_model_path,
    execute_body,
    free_port,
    p95,
    server_process,
    worker_process,
)

Client = Callable[[int, int], Awaitable[StreamTiming]]


def ws_client(base: str) -> Client:
    url = base.replace("http", "ws", 1) + "/ws"

    async def one(index: int, max_tokens: int) -> StreamTiming:
        async with connect(url, max_size=None) as ws:
            clock = EventClock()
            await ws.send(json.dumps(execute_body(PROMPTS[index % len(PROMPTS)], max_tokens)))
            while not clock.see(json.loads(await ws.recv())):
                pass
        return clock.timing()

    return one


def rest_client(base: str, http: httpx.AsyncClient) -> Client:
    async def one(index: int, max_tokens: int) -> StreamTiming:
        body = execute_body(PROMPTS[index % len(PROMPTS)], max_tokens, stream=True)
        clock = EventClock()
        async with http.stream("POST", f"{base}/v1/execute", json=body) as r:
            async for line in r.aiter_lines():
                if line:
                    clock.see(json.loads(line))
        return clock.timing()

    return one


def llama_server_client(base: str, http: httpx.AsyncClient) -> Client:
    async def one(index: int, max_tokens: int) -> StreamTiming:
        body = {
            "prompt": PROMPTS[index % len(PROMPTS)],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
        }
        clock = EventClock()
        n = 0
        async with http.stream("POST", f"{base}/v1/completions", json=body) as r:
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                if json.loads(line[6:])["choices"][0]["finish_reason"] is None:
                    n += 1
                    clock.token()
        return clock.timing(n)

    return one


@dataclass
class LoadResult:
    n_clients: int
    aggregate_tps: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    stream_tps: float


async def run_load(
    client: Client, n_clients: int, per_client: int, max_tokens: int, ramp_s: float
) -> LoadResult:
    samples: list[StreamTiming] = []

    async def loop(c: int) -> None:
        # Clients join one by one (ramp-up), as real clients do; otherwise all N arrive in
        # the same millisecond on every round and measure a lock-step artefact.
        await asyncio.sleep(c * ramp_s)
        for r in range(per_client):
            samples.append(await client(c + r, max_tokens))

    t0 = time.perf_counter()
    await asyncio.gather(*(loop(c) for c in range(n_clients)))
    wall = time.perf_counter() - t0
    ttfts = [s.ttft_ms for s in samples]
    return LoadResult(
        n_clients=n_clients,
        aggregate_tps=sum(s.n_tokens for s in samples) / wall,
        ttft_p50_ms=statistics.median(ttfts),
        ttft_p95_ms=p95(ttfts),
        stream_tps=statistics.median(s.tokens_per_second for s in samples if s.decode_s > 0),
    )


async def sweep(  # noqa: PLR0917 - a benchmark's knobs
    name: str,
    client: Client,
    levels: list[int],
    per_client: int,
    max_tokens: int,
    ramp_s: float,
) -> dict[int, LoadResult]:
    await client(0, 4)  # warm-up
    results = {}
    for n in levels:
        res = await run_load(client, n, per_client, max_tokens, ramp_s)
        results[n] = res
        print(
            f"  {name:<18} N={n:<3} aggregate {res.aggregate_tps:7.1f} tok/s   "
            f"TTFT p50 {res.ttft_p50_ms:7.0f} ms  p95 {res.ttft_p95_ms:7.0f} ms   "
            f"per-stream {res.stream_tps:6.1f} tok/s",
            flush=True,
        )
    return results


async def load_mode(args: argparse.Namespace) -> None:
    levels = [int(x) for x in args.levels.split(",")]
    threads = str(os.cpu_count() or 1)
    all_results: dict[str, dict[int, LoadResult]] = {}
    print(
        f"{args.per_client} requests per client, {args.max_tokens} tokens each, "
        f"greedy, {threads} threads, clients start {args.ramp * 1e3:.0f} ms apart",
        flush=True,
    )
    env = {"GEMMA_N_CTX": str(args.n_ctx), "GEMMA_PARALLEL": str(args.parallel)}
    with worker_process(free_port(), env) as base:
        async with httpx.AsyncClient(timeout=600) as http:
            all_results["worker /ws"] = await sweep(
                "worker /ws", ws_client(base), levels, args.per_client, args.max_tokens, args.ramp
            )
            all_results["worker /v1/execute"] = await sweep(
                "worker /v1/execute",
                rest_client(base, http),
                levels,
                args.per_client,
                args.max_tokens,
                args.ramp,
            )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(embedded_model_path()),
        "--port",
        str(port),
        "--n_ctx",
        str(args.n_ctx),
        "--n_threads",
        threads,
        "--n_threads_batch",
        threads,
        # its default interrupts a running stream when another request arrives; queue instead
        "--interrupt_requests",
        "False",
    ]
    with server_process(argv, f"{base}/v1/models"):
        async with httpx.AsyncClient(timeout=600) as http:
            all_results["llama_cpp.server"] = await sweep(
                "llama_cpp.server",
                llama_server_client(base, http),
                levels,
                args.per_client,
                args.max_tokens,
                args.ramp,
            )

    base_res = all_results["llama_cpp.server"]
    print("\nratios (aggregate tokens/s)")
    for name in ("worker /ws", "worker /v1/execute"):
        ours = all_results[name]
        one = ours[levels[0]].aggregate_tps
        for n in levels:
            vs_server = ours[n].aggregate_tps / base_res[n].aggregate_tps
            vs_own = ours[n].aggregate_tps / one
            print(
                f"  {name:<18} N={n:<3} vs llama_cpp.server {vs_server:5.2f}x"
                f"   vs own N={levels[0]} {vs_own:5.2f}x"
            )
    if 8 in levels and 1 in levels:
        ws = all_results["worker /ws"]
        checks = {
            "N=8 aggregate >= 3 x llama_cpp.server": ws[8].aggregate_tps
            >= 3 * base_res[8].aggregate_tps,
            "N=8 aggregate >= 2.2 x own N=1": ws[8].aggregate_tps >= 2.2 * ws[1].aggregate_tps,
            "N=8 TTFT p95 < 500 ms": ws[8].ttft_p95_ms < 500,
        }
        print("\ntargets (/ws)")
        for label, ok in checks.items():
            print(f"  {label:<42} {'PASS' if ok else 'FAIL'}")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def idle_mode(n: int) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "gemma_worker", "--mode", "daemon", "--port", str(port)]
    with server_process(argv, f"{base}/ready") as proc:
        # one request first so that lazily allocated buffers are in the baseline
        await ws_client(base)(0, 4)
        await asyncio.sleep(1)
        before = rss_kib(proc.pid)
        conns = [await connect(base.replace("http", "ws", 1) + "/ws") for _ in range(n)]
        await asyncio.sleep(2)
        after = rss_kib(proc.pid)
        # the idle connections still work
        await conns[-1].send(json.dumps(execute_body(PROMPTS[0], 2)))
        while json.loads(await conns[-1].recv())["type"] not in {"result", "error"}:
            pass
        for c in conns:
            await c.close()
    per = (after - before) / n
    print(
        f"{n} idle WebSocket connections: server RSS {before / 1024:.1f} MiB -> "
        f"{after / 1024:.1f} MiB, {per:.1f} KiB per connection"
    )
    print(f"target < 100 KB per connection: {'PASS' if per * 1024 < 100_000 else 'FAIL'}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", default="1,4,8,16", help="client counts")
    parser.add_argument("--per-client", type=int, default=3, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--ramp", type=float, default=0.1, help="seconds between client starts (ramp-up)"
    )
    parser.add_argument("--n-ctx", type=int, default=4096, help="context per request")
    parser.add_argument("--parallel", type=int, default=8, help="worker slots")
    parser.add_argument("--idle", type=int, default=0, help="idle-connection mode: how many")
    args = parser.parse_args()
    if args.idle:
        asyncio.run(idle_mode(args.idle))
    else:
        asyncio.run(load_mode(args))


if __name__ == "__main__":
    main()
