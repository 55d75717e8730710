"""The floor of one-input embedding requests in Python: llama-server, the worker, and a bare
ASGI app around the worker's own embedding engine, one request at a time.

``bench/embeddings.py``'s point "1 client x 1 input" is a round trip per request: the client,
the HTTP server, the request's path through the server and one ``llama_decode`` of ~20
tokens. This bench asks how much of the gap to llama-server the worker's layers make: the
bare app (``--serve-bare``) is uvicorn (httptools, uvloop, as the worker runs it) calling the
worker's :class:`~gemma_worker.engine.embedding_engine.EmbeddingEngine` directly: no FastAPI,
no middleware (host check, keys, CORS, body limit, metrics), no pipeline (admission, limits,
rate limits, model registry, logging), orjson in and out. It is not a server to use, only
the least a Python server around this engine can cost.

All three get the same GGUF (the built-in all-MiniLM-L6-v2) and all cores; llama-server runs
as in ``bench/embeddings.py``. Each round sends ``--requests`` sequential requests of one
sentence to each server on a keep-alive connection (who goes first rotates) and prints the
median latency; the summary gives each server's requests/s as a ratio to llama-server's,
median over rounds, then each server's latency distribution over every request.

    .venv/bin/python bench/embed_floor.py
    .venv/bin/python bench/embed_floor.py --rounds 9 --requests 500
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from typing import Any

import httpx
import orjson
import uvicorn

from _common import free_port, server_process, worker_process
from embeddings import MODEL, SENTENCES, start_llama_server
from gemma_worker.engine.compute_gate import ComputeGate
from gemma_worker.engine.embed_job import EmbeddingSpec
from gemma_worker.engine.embedding_engine import EmbeddingConfig, EmbeddingEngine
from gemma_worker.engine.kernels import KernelChoices
from gemma_worker.engine.minilm import minilm_path


def bare_app(threads: int) -> Any:
    """An ASGI app: ``GET /ready`` once the engine is loaded, ``POST /v1/embeddings`` with
    OpenAI's body (``input``: a list of strings) straight to the engine."""
    engine = EmbeddingEngine(
        EmbeddingConfig(
            name=MODEL,
            locate=minilm_path,
            pooling=None,
            max_input_tokens=512,
            batch_tokens=512,
            max_pending=64,
            n_threads=threads,
            n_gpu_layers=0,
            kernels=KernelChoices.fast(),
            gate=ComputeGate(),
        )
    )
    count = 0

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal count
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await engine.start()
                await send({"type": "lifespan.startup.complete"})
            await engine.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        out = b'{"status":"ready"}'
        if scope["method"] == "POST":
            tokens = await engine.tokenize_inputs(orjson.loads(body)["input"])
            count += 1
            spec = EmbeddingSpec(str(count), tuple(tuple(t) for t in tokens))
            result = await engine.embed(spec).result()
            data = [
                {"object": "embedding", "index": i, "embedding": row}
                for i, row in enumerate(result.vectors)
            ]
            usage = {"prompt_tokens": result.n_tokens, "total_tokens": result.n_tokens}
            answer = {"object": "list", "data": data, "model": MODEL, "usage": usage}
            out = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": out})

    return app


async def latency(http: httpx.AsyncClient, base: str, n: int) -> list[float]:
    """The seconds of ``n`` sequential one-sentence requests."""
    times: list[float] = []
    for i in range(n):
        body = {"input": [SENTENCES[i % len(SENTENCES)]], "model": MODEL}
        t0 = time.perf_counter()
        r = await http.post(f"{base}/v1/embeddings", json=body)
        times.append(time.perf_counter() - t0)
        if r.status_code != 200:
            raise RuntimeError(f"{base}: HTTP {r.status_code}: {r.text[:200]!r}")
        r.json()  # the client parses the answer, as bench/embeddings.py's does
    return times


async def run(args: argparse.Namespace, servers: dict[str, str]) -> None:
    names = list(servers)
    medians: dict[str, list[float]] = {n: [] for n in names}
    every: dict[str, list[float]] = {n: [] for n in names}
    async with httpx.AsyncClient(timeout=60) as http:
        for base in servers.values():
            await latency(http, base, 50)  # warm-up
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                times = await latency(http, servers[name], args.requests)
                medians[name].append(statistics.median(times))
                every[name].extend(times)
            print(
                f"  round {r + 1}: "
                + "  ".join(f"{n} {medians[n][-1] * 1e3:.3f} ms" for n in names),
                flush=True,
            )
    base = names[0]
    print(f"\nmedian latency over {args.rounds} rounds; ratio = requests/s / {base}'s")
    for name in names:
        ratios = [b / x for b, x in zip(medians[base], medians[name], strict=True)]
        print(
            f"{name:<14}{statistics.median(medians[name]) * 1e3:8.3f} ms"
            f"{statistics.median(ratios):8.3f}x   in each round: "
            + " ".join(f"{x:.2f}" for x in ratios)
        )
    print("\nevery request of every round: mean, percentiles, and the share of the time spent")
    print("in requests slower than twice the median (the tail a throughput figure pays for)")
    for name in names:
        t = sorted(every[name])
        median = statistics.median(t)
        slow = sum(x for x in t if x > 2 * median) / sum(t)
        p90, p99 = (t[min(len(t) - 1, int(q * len(t)))] for q in (0.9, 0.99))
        print(
            f"{name:<14}mean {statistics.fmean(t) * 1e3:.3f}  p50 {median * 1e3:.3f}  "
            f"p90 {p90 * 1e3:.3f}  p99 {p99 * 1e3:.3f} ms  slow share {slow * 100:.1f}%"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=300, help="requests per round")
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    threads = os.cpu_count() or 1
    if args.serve_bare:
        uvicorn.run(bare_app(threads), host="127.0.0.1", port=args.serve_bare, log_level="error")
        return
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp, ExitStack() as stack:
        llama = start_llama_server(stack, str(threads))
        env = {"GEMMA_N_THREADS": str(threads), "GEMMA_DATA_DIR": f"{tmp}/data"}
        worker = stack.enter_context(worker_process(free_port(), env))
        port = free_port()
        bare = f"http://127.0.0.1:{port}"
        script = [sys.executable, __file__, "--serve-bare", str(port)]
        stack.enter_context(server_process(script, f"{bare}/ready"))
        print(f"{args.rounds} rounds of {args.requests} one-sentence requests each", flush=True)
        asyncio.run(run(args, {"llama-server": llama, "worker": worker, "bare app": bare}))


if __name__ == "__main__":
    main()
