"""Does traffic leave anything behind that slows later batches? One worker, runs of 8 and of
1 closed-loop clients alternating (8, 1, 8, 1, ...), each client sending requests back to
back over OpenAI's /v1/completions (greedy, fixed prompts). Prints every run's aggregate
tokens/s and each 8-client run's ratio to the first one; the target is every ratio within 5%.

Every request leaves its KV cache in its slot (prefix caching), so 1-client runs scatter
caches over the slots; with a KV buffer per slot (deterministic mode) llama.cpp runs the model
once per run of consecutive busy slots, so that is what this bench watches.

    .venv/bin/python bench/mixed_traffic.py [--pattern 8,1,8,1,8,1,8] [--parallel 8]
"""

from __future__ import annotations

import argparse
import asyncio

import httpx

from _common import free_port, worker_process
from _oai_load import closed_loop, complete


async def run(base: str, args: argparse.Namespace) -> None:
    async with httpx.AsyncClient(timeout=600) as http:
        await complete(http, base, "Hello", 4)  # warm-up
        first: float | None = None
        worst = 1.0
        for i, n in enumerate(args.pattern):
            res = await closed_loop(http, base, n, args.per_client, args.max_tokens)
            clients = f"{n:>2} client{'s' if n > 1 else ' '}"
            line = f"  run {i + 1:>2}: {clients} {res.aggregate_tps:7.1f} tok/s"
            if n == max(args.pattern):
                first = first or res.aggregate_tps
                ratio = res.aggregate_tps / first
                worst = min(worst, ratio)
                line += f"   {ratio:5.2f}x the first {n}-client run"
            print(line, flush=True)
        verdict = "PASS" if worst >= 0.95 else "FAIL"
        print(
            f"slowest {max(args.pattern)}-client run: {worst:.2f}x the first  [{verdict}: >= 0.95]"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pattern", type=lambda s: [int(x) for x in s.split(",")], default=[8, 1, 8, 1, 8, 1, 8]
    )
    parser.add_argument("--per-client", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--parallel", type=int, default=8, help="worker slots")
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="worker setting"
    )
    args = parser.parse_args()
    env = {"GEMMA_PARALLEL": str(args.parallel), "GEMMA_N_CTX": "4096"}
    env.update(item.split("=", 1) for item in args.env)
    print(f"worker: {env}; {args.per_client} requests per client, {args.max_tokens} tokens each")
    with worker_process(free_port(), env) as base:
        asyncio.run(run(base, args))


if __name__ == "__main__":
    main()
