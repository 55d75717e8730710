"""Speculative decoding: the worker with and without it beside llama-server with its default
and with each of its n-gram speculation types, on answers that repeat their input.

Workloads (fixed prompts, ``bench/prompts/speculative.json``), greedy, on the embedded model:
``extraction`` (JSON lines quoting fields of a ~400-token log), ``rewrite`` (a ~60-line
config file returned with one change), ``prose`` (free continuation). At 1 client, the
client sends each prompt of the workload in turn; at 8, each client sends one (prompts
shared round-robin), all at once. All requests are streamed ``/v1/completions``. The figure
at 1 client is decode tokens/s: completion tokens over the time from the first streamed text
to the last (the prompt's processing, which speculation does not touch, is left out); at 8,
all completion tokens over the wall time from the first request to the last text (prompts
included: the servers schedule prompt processing beside decoding differently; each round's
prompts at several clients start with a line naming the round, so no server serves a round
from an earlier round's caches: llama-server keeps prompt caches in RAM, ``--cache-ram``, the
worker only in its slots). Every server
gets the same slots (8), context and threads; every round runs every point on every server,
who goes first rotating; figures are medians over rounds, ratios against llama-server's
default in the same run.

Servers: llama-server with its defaults and with each ``--spec-type`` n-gram mode; the
worker in its default fast mode with speculation and without; the worker in deterministic
mode (``GEMMA_DETERMINISTIC=true``) with and without. Outputs: in deterministic mode the
worker's outputs with speculation must equal those without on every prompt at every point
(a difference is printed and fails the run); in fast mode, rounding depends on the batch's
shape (``docs/PERFORMANCE.md``), so the prompts whose outputs differ, and from which
character, are reported.

    .venv/bin/python bench/speculative.py
    .venv/bin/python bench/speculative.py --quick        # 1 round, 1 client: a smoke run
    .venv/bin/python bench/speculative.py --rounds 3 --clients 1,8 --types ngram-mod,ngram-simple
    .venv/bin/python bench/speculative.py --clients 8 --unique   # no two prompts share a head

At several clients the prompts are shared round-robin, so requests sent together share their
prompt heads; the worker computes a shared head once (in-flight prefix sharing, docs/API.md),
llama-server in every slot. ``--unique`` takes that out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from _common import free_port, worker_process
from _oai_load import Completion, complete
from compare_llama_server import llama_server, llama_server_binary

HERE = Path(__file__).resolve().parent
WORKLOADS: dict[str, Any] = json.loads((HERE / "prompts" / "speculative.json").read_text())
TYPES = ["ngram-simple", "ngram-map-k", "ngram-map-k4v", "ngram-mod", "ngram-cache"]
SPEC, PLAIN = "worker", "worker no-spec"
DET_SPEC, DET_PLAIN = "worker det", "worker det no-spec"
#: Pairs whose outputs are compared: (with, without, must be identical).
PAIRS = [(DET_SPEC, DET_PLAIN, True), (SPEC, PLAIN, False)]


async def point(
    http: httpx.AsyncClient,
    base: str,
    workload: str,
    n_clients: int,
    *,
    round_no: int,
    unique: bool = False,
) -> tuple[float, list[str]]:
    """Decode tokens/s of ``n_clients`` clients running the workload's prompts; the texts
    (by prompt at 1 client, by client at several). Several clients' prompts start with a
    line naming the round, so no server serves a later round's prompts from a cache of an
    earlier one (llama-server keeps prompt caches in RAM beyond its slots, `--cache-ram`;
    the worker only what its slots hold). ``unique``: that line also names the client, so
    that no two requests share a prompt head."""
    prompts = WORKLOADS["workloads"][workload]
    max_tokens = WORKLOADS["max_tokens"][workload]
    done: list[tuple[int, Completion]] = []

    async def client(c: int) -> None:
        if n_clients == 1:
            for k, prompt in enumerate(prompts):
                done.append((k, await complete(http, base, prompt, max_tokens)))
            return
        head = f"Round {round_no}" + (f", request {c + 1} of {n_clients}" if unique else "")
        prompt = f"{head}.\n{prompts[c % len(prompts)]}"
        done.append((c, await complete(http, base, prompt, max_tokens)))

    await asyncio.gather(*(client(c) for c in range(n_clients)))
    texts = [""] * (len(prompts) if n_clients == 1 else n_clients)
    for k, comp in done:
        texts[k] = comp.text
    if n_clients == 1:
        rates = [
            (c.completion_tokens - 1) / (c.arrivals[-1] - c.arrivals[0])
            for _, c in done
            if len(c.arrivals) > 1
        ]
        return statistics.mean(rates), texts
    # Several clients: tokens over the wall time, prompts included (servers schedule prompt
    # processing beside decoding differently, so a decode-only window would not compare).
    first = min(c.sent for _, c in done)
    last = max(c.arrivals[-1] for _, c in done)
    return sum(c.completion_tokens for _, c in done) / (last - first), texts


async def run(args: argparse.Namespace, servers: dict[str, str]) -> int:
    limits = httpx.Limits(max_keepalive_connections=0)
    failures = 0
    results: dict[tuple[str, str], list[float]] = defaultdict(list)
    differs: dict[str, list[str]] = defaultdict(list)
    async with httpx.AsyncClient(timeout=900, limits=limits) as http:
        for base in servers.values():  # warm-up
            await complete(http, base, "Hello", 4)
        names = list(servers)
        points = [(w, n) for w in args.workloads for n in args.clients]
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for workload, n in points:
                texts: dict[str, list[str]] = {}
                for name in order:
                    value, texts[name] = await point(
                        http, servers[name], workload, n, round_no=r + 1, unique=args.unique
                    )
                    label = f"{workload} x{n}" + ("u" if args.unique and n > 1 else "")
                    results[label, name].append(value)
                    print(f"  round {r + 1} {workload:<10} x{n:<2} {name:<24} {value:8.1f} tok/s")
                for with_, without, strict in PAIRS:
                    if with_ not in texts or without not in texts:
                        continue
                    for i, (a, b) in enumerate(zip(texts[without], texts[with_], strict=True)):
                        if a == b:
                            continue
                        at = next(
                            (j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                            len(a),
                        )
                        what = "prompt" if n == 1 else "client"
                        differs[with_].append(f"{workload} x{n} {what} {i} from char {at}")
                        if strict:
                            failures += 1
                            print(f"  OUTPUT DIFFERS ({with_}): {workload} x{n} #{i}:")
                            print(f"    {a!r}\n    {b!r}")
    print_table(names, results)
    for with_, without, strict in PAIRS:
        if with_ in servers and without in servers:
            found = differs[with_]
            print(
                f"\noutputs of {with_!r} == {without!r}: "
                + ("yes, every prompt" if not found else f"NO: {'; '.join(found)}")
                + ("" if strict else " (fast mode: rounding depends on the batch's shape)")
            )
    return failures


def print_table(names: list[str], results: dict[tuple[str, str], list[float]]) -> None:
    base = names[0]
    print(f"\ntokens/s (x1: decode; x8: wall), medians over rounds; ratio = figure / {base}'s")
    print(f"{'point':<16}" + "".join(f"{n:>24}" for n in names))
    for point_name in dict.fromkeys(p for p, _ in results):
        meds = {n: statistics.median(results[point_name, n]) for n in names}
        print(f"{point_name:<16}" + "".join(f"{meds[n]:>24.1f}" for n in names))
        print(f"{'  ratio':<16}" + "".join(f"{meds[n] / meds[base]:>23.2f}x" for n in names))
        best = max(v for n, v in meds.items() if n.startswith("llama-server"))
        for with_, without, _ in PAIRS:
            if with_ in meds and without in meds:
                print(
                    f"{'':<16}{with_} / without: {meds[with_] / meds[without]:.2f}x; "
                    f"/ best llama-server: {meds[with_] / best:.2f}x"
                )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8])
    parser.add_argument(
        "--workloads",
        type=lambda s: s.split(","),
        default=list(WORKLOADS["workloads"]),
    )
    parser.add_argument("--types", type=lambda s: s.split(","), default=TYPES)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument(
        "--workers",
        type=lambda s: s.split(","),
        default=[SPEC, PLAIN, DET_SPEC, DET_PLAIN],
        help="worker variants (comma-separated names as printed)",
    )
    parser.add_argument(
        "--unique",
        action="store_true",
        help="several clients: each prompt starts with a line of its own (no shared heads; "
        "points are labelled x8u)",
    )
    parser.add_argument("--quick", action="store_true", help="1 round, 1 client")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.clients = 1, [1]
    threads = str(os.cpu_count() or 1)
    binary = llama_server_binary()
    servers: dict[str, str] = {}
    with ExitStack() as stack:
        for kind in ["default", *args.types]:
            extra = [] if kind == "default" else ["--spec-type", kind]
            servers[f"llama-server {kind}"] = llama_server(stack, binary, args.parallel, extra)
        env = {"GEMMA_PARALLEL": str(args.parallel), "GEMMA_N_CTX": "4096"}
        off = {"GEMMA_SPECULATION": "false"}
        det = {"GEMMA_DETERMINISTIC": "true"}
        variants = {SPEC: {}, PLAIN: off, DET_SPEC: det, DET_PLAIN: {**det, **off}}
        for name, extra in variants.items():
            if name in args.workers:
                servers[name] = stack.enter_context(worker_process(free_port(), {**env, **extra}))
        print(
            f"{threads} threads, {args.parallel} slots of 4096 tokens, {args.rounds} rounds; "
            f"servers: {', '.join(servers)}",
            flush=True,
        )
        failures = asyncio.run(run(args, servers))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
