"""The worker beside llama.cpp's C++ ``llama-server``, side by side, in interleaved rounds.

``llama-server`` is built once (cached) from the llama.cpp that llama-cpp-python vendors, with
the same CPU flags as ``scripts/build-llama.sh`` (``scripts/build-llama-server.sh``; set
``LLAMA_SERVER=/path/to/llama-server`` to use another). Both servers get the embedded model,
the same slots (``--parallel``), 4,096 tokens of context per slot and all cores, and the same
OpenAI ``/v1/completions`` requests (greedy, streamed). Each round runs every scenario on
every server, in a rotating order; the figures are medians over rounds, and the ratios are
against llama-server in the same run (these VMs drift +-10-25% within minutes).

Scenarios: aggregate tokens/s of N closed-loop clients (2 requests each, 64 tokens); time to
first token of a ~2,000-token prompt alone; and 7 streams decoding when that prompt arrives
(their p95 token gap while it is processed, against their gap before).

    .venv/bin/python bench/compare_llama_server.py
    .venv/bin/python bench/compare_llama_server.py --rounds 5 --levels 1,8,16
    # worker variants run in the same rounds, each against the same llama-server:
    .venv/bin/python bench/compare_llama_server.py --worker fast=GEMMA_DETERMINISTIC=false
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

import httpx

from _common import embedded_model_path, free_port, server_process, worker_process
from _oai_load import (
    calibrated_long_prompt,
    closed_loop,
    complete,
    interference,
    long_prompt_ttft,
)

ROOT = Path(__file__).resolve().parent.parent


def llama_server_binary() -> str:
    """``$LLAMA_SERVER``, or the cached build of scripts/build-llama-server.sh."""
    if found := os.environ.get("LLAMA_SERVER"):
        return found
    script = ROOT / "scripts" / "build-llama-server.sh"
    out = subprocess.run(
        ["bash", str(script), sys.executable], check=True, stdout=subprocess.PIPE, text=True
    )
    return out.stdout.strip().splitlines()[-1]


def llama_server(stack: ExitStack, binary: str, parallel: int, extra: Sequence[str] = ()) -> str:
    """Start llama-server on the embedded model until ``stack`` closes: ``parallel`` slots
    of 4,096 tokens, all cores, ``extra`` flags; its base URL once it is healthy."""
    threads = str(os.cpu_count() or 1)
    port = free_port()
    argv = [
        binary, "-m", str(embedded_model_path()), "--port", str(port), "--host", "127.0.0.1",
        "-np", str(parallel), "-c", str(4096 * parallel),
        "-t", threads, "-tb", threads, "--no-webui", *extra,
    ]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    stack.enter_context(server_process(argv, f"{base}/health"))
    return base


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    """``name=KEY=VALUE,KEY=VALUE`` -> (name, env)."""
    name, _, rest = spec.partition("=")
    env = dict(item.split("=", 1) for item in rest.split(",") if item)
    return name, env


Scenario = Callable[[httpx.AsyncClient, str], Awaitable[float]]


def scenarios(args: argparse.Namespace, words: int) -> dict[str, tuple[Scenario, str]]:
    """name -> (measure, unit); a higher tok/s is better, a lower ms is better."""
    out: dict[str, tuple[Scenario, str]] = {}
    for n in args.levels if "load" in args.only else []:

        async def load(http: httpx.AsyncClient, base: str, n: int = n) -> float:
            res = await closed_loop(http, base, n, args.per_client, args.max_tokens)
            return res.aggregate_tps

        out[f"{n} client{'s' if n > 1 else ''}"] = (load, "tok/s")

    async def ttft(http: httpx.AsyncClient, base: str) -> float:
        return await long_prompt_ttft(http, base, words)

    if "ttft" in args.only:
        out[f"{args.long_tokens}-token prompt TTFT"] = (ttft, "ms")
    if args.streams and "gaps" in args.only:

        async def gaps(http: httpx.AsyncClient, base: str) -> float:
            res = await interference(http, base, args.streams, words)
            return res.ratio

        out[f"{args.streams} streams: p95 gap / normal"] = (gaps, "x")
    return out


async def run(args: argparse.Namespace, servers: dict[str, str]) -> None:
    # No keep-alive: a server may close a connection that sat idle while the others ran, and
    # a reused dead connection would fail the request.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        first = next(iter(servers.values()))
        words = await calibrated_long_prompt(http, first, args.long_tokens)
        plan = scenarios(args, words)
        for base in servers.values():  # warm-up: first-request allocations, page cache
            await complete(http, base, "Hello", 4)
        results: dict[tuple[str, str], list[float]] = defaultdict(list)
        names = list(servers)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for scenario, (measure, unit) in plan.items():
                for name in order:
                    value = await measure(http, servers[name])
                    results[scenario, name].append(value)
                    print(
                        f"  round {r + 1} {scenario:<34} {name:<20} {value:8.2f} {unit}",
                        flush=True,
                    )
        print_table(plan, names, results)


def print_table(
    plan: dict[str, tuple[Scenario, str]],
    names: list[str],
    results: dict[tuple[str, str], list[float]],
) -> None:
    base = names[0]
    print(f"\nmedians over rounds; ratio = worker's figure / {base}'s (>1 = worker ahead)")
    header = f"{'scenario':<34}" + "".join(f"{n:>18}" for n in names)
    print(header)
    for scenario, (_, unit) in plan.items():
        meds = {n: statistics.median(results[scenario, n]) for n in names}
        row = f"{scenario:<34}" + "".join(f"{meds[n]:>12.1f} {unit:<5}" for n in names)
        print(row)
        ratios = []
        for n in names[1:]:
            # tokens/s: more is better; ms and gap ratios: less is better.
            r = meds[n] / meds[base] if unit == "tok/s" else meds[base] / meds[n]
            ratios.append(f"{r:>17.2f}x")
        print(f"{'  ratio':<34}{'':>18}" + "".join(ratios))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 16]
    )
    parser.add_argument(
        "--only",
        type=lambda s: set(s.split(",")),
        default={"load", "ttft", "gaps"},
        help="scenarios to run: load (N clients), ttft (long prompt), gaps (streams + prompt)",
    )
    parser.add_argument("--per-client", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--long-tokens", type=int, default=2000)
    parser.add_argument("--streams", type=int, default=7, help="0 skips the interference test")
    parser.add_argument("--parallel", type=int, default=16, help="slots on both servers")
    parser.add_argument(
        "--worker",
        action="append",
        default=[],
        metavar="NAME=ENV=VAL,...",
        help="a worker variant (repeatable); default: one worker with default settings",
    )
    parser.add_argument("--no-llama-server", action="store_true", help="compare variants only")
    args = parser.parse_args()

    threads = str(os.cpu_count() or 1)
    variants = [parse_variant(v) for v in args.worker] or [("worker", {})]
    servers: dict[str, str] = {}
    with ExitStack() as stack:
        if not args.no_llama_server:
            servers["llama-server"] = llama_server(stack, llama_server_binary(), args.parallel)
        for name, overrides in variants:
            env = {"GEMMA_PARALLEL": str(args.parallel), "GEMMA_N_CTX": "4096", **overrides}
            servers[name] = stack.enter_context(worker_process(free_port(), env))
        print(
            f"{threads} threads, {args.parallel} slots of 4096 tokens each, "
            f"{args.rounds} interleaved rounds; servers: {', '.join(servers)}",
            flush=True,
        )
        asyncio.run(run(args, servers))


if __name__ == "__main__":
    main()
