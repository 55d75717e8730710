"""Several models: the worker's model folder beside llama-server's router mode, same run.

Both servers get the same folder of two models (the embedded Gemma 3 270M Q4_K_M and the same
model requantized to Q8_0, a different file of about twice the size) and at most two loaded
(``GEMMA_MAX_LOADED_MODELS=2``, ``--models-max 2``), 4 slots of 4,096 tokens, all cores. In
each round, in a rotating order, every server runs:

- **cold TTFT**: the Q8_0 model is unloaded (``POST /models/unload``, both servers speak it),
  then one streamed completion names it: time from the request to its first token, the load
  included (the file is in the page cache after the first round, as on a busy host);
- **warm TTFT**: the same request again, the model loaded (the median of 5);
- **stream during a load**: a stream decodes on the Q4_K_M model while the Q8_0 one is loaded
  cold; the stream's p95 token gap during the load against its median gap before.

Figures are medians over rounds; ratios are against llama-server in the same run.

    .venv/bin/python bench/model_load.py
    .venv/bin/python bench/model_load.py --rounds 7
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path

import httpx

from _common import PROMPTS, embedded_model_path, free_port, p95, server_process, worker_process
from _oai_load import Completion, complete
from compare_llama_server import llama_server_binary

QUESTION = "Question: What is the capital of France?\nAnswer:"


def make_folder(root: Path) -> Path:
    """The two models: the embedded file and its Q8_0 requantization (in a subprocess, whose
    llama.cpp log stays out of the figures)."""
    folder = root / "models"
    folder.mkdir()
    src = embedded_model_path()
    try:
        os.link(src, folder / "gemma-q4.gguf")
    except OSError:  # another file system
        shutil.copyfile(src, folder / "gemma-q4.gguf")
    code = (
        "import ctypes, sys, llama_cpp\n"
        "p = llama_cpp.llama_model_quantize_default_params()\n"
        "p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0\n"
        "p.allow_requantize = True\n"
        "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), "
        "ctypes.byref(p)))\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(src), str(folder / "gemma-q8.gguf")],
        check=True,
        capture_output=True,
    )
    return folder


async def model_ids(http: httpx.AsyncClient, base: str) -> dict[str, str]:
    """``q4``/``q8`` -> the id each server gives the file."""
    r = await http.get(f"{base}/models")
    r.raise_for_status()
    ids = [m["id"] for m in r.json()["data"]]
    return {kind: next(i for i in ids if f"gemma-{kind}" in i) for kind in ("q4", "q8")}


async def status(http: httpx.AsyncClient, base: str, model: str) -> str:
    r = await http.get(f"{base}/models")
    for card in r.json()["data"]:
        if card["id"] == model:
            value = card.get("status", {}).get("value", "unknown")
            return str(value)
    return "missing"


async def unload(http: httpx.AsyncClient, base: str, model: str) -> None:
    """Unload ``model`` and wait until the server says it is unloaded."""
    if await status(http, base, model) != "loaded":
        return
    r = await http.post(f"{base}/models/unload", json={"model": model})
    r.raise_for_status()
    deadline = time.monotonic() + 60
    while await status(http, base, model) != "unloaded":
        if time.monotonic() > deadline:
            raise RuntimeError(f"{base}: {model} did not unload")
        await asyncio.sleep(0.05)


async def cold_ttft(http: httpx.AsyncClient, base: str, ids: dict[str, str]) -> float:
    await unload(http, base, ids["q8"])
    done = await complete(http, base, QUESTION, 2, model=ids["q8"])
    return done.ttft_s * 1e3


async def warm_ttft(http: httpx.AsyncClient, base: str, ids: dict[str, str]) -> float:
    await complete(http, base, QUESTION, 1, model=ids["q8"])
    times = [(await complete(http, base, QUESTION, 2, model=ids["q8"])).ttft_s for _ in range(5)]
    return statistics.median(times) * 1e3


async def stream_during_load(http: httpx.AsyncClient, base: str, ids: dict[str, str]) -> float:
    await unload(http, base, ids["q8"])
    await complete(http, base, QUESTION, 1, model=ids["q4"])  # loaded, warm
    running = Completion(sent=0.0)
    stream = asyncio.create_task(
        complete(http, base, PROMPTS[3], 2000, into=running, model=ids["q4"])
    )
    await asyncio.sleep(2.0)
    cold = await complete(http, base, QUESTION, 2, model=ids["q8"])
    t_send, t_first = cold.sent, cold.arrivals[0]
    await asyncio.sleep(0.2)
    stream.cancel()
    await asyncio.gather(stream, return_exceptions=True)
    before = running.gaps(end=t_send - 0.2)[5:]
    during = running.gaps(t_send, t_first)
    if len(before) < 5 or len(during) < 3:
        raise RuntimeError(f"{base}: the stream ended too soon ({len(before)}, {len(during)})")
    return p95(during) / statistics.median(before)


Scenario = Callable[[httpx.AsyncClient, str, dict[str, str]], Awaitable[float]]
PLAN: dict[str, tuple[Scenario, str]] = {
    "cold-model TTFT (load included)": (cold_ttft, "ms"),
    "warm-model TTFT": (warm_ttft, "ms"),
    "stream p95 gap during a load": (stream_during_load, "x"),
}


async def run(rounds: int, servers: dict[str, str]) -> None:
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        ids = {name: await model_ids(http, base) for name, base in servers.items()}
        for name, base in servers.items():  # warm-up: page cache, first allocations
            for model in ids[name].values():
                await complete(http, base, QUESTION, 1, model=model)
        results: dict[tuple[str, str], list[float]] = defaultdict(list)
        names = list(servers)
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for scenario, (measure, unit) in PLAN.items():
                for name in order:
                    value = await measure(http, servers[name], ids[name])
                    results[scenario, name].append(value)
                    print(
                        f"  round {r + 1} {scenario:<34} {name:<14} {value:8.2f} {unit}", flush=True
                    )
    base = names[0]
    print(f"\nmedians over {rounds} rounds; ratio = worker's figure / {base}'s (>1 = worker ahead)")
    print(f"{'scenario':<34}" + "".join(f"{n:>18}" for n in names) + f"{'ratio':>10}")
    for scenario, (_, unit) in PLAN.items():
        meds = {n: statistics.median(results[scenario, n]) for n in names}
        ratio = meds[base] / meds[names[1]]  # all three: less is better
        cells = "".join(f"{meds[n]:>12.1f} {unit:<5}" for n in names)
        print(f"{scenario:<34}{cells}{ratio:>9.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    binary = llama_server_binary()
    cores = str(os.cpu_count() or 2)
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp, ExitStack() as stack:
        folder = make_folder(Path(tmp))
        port = free_port()
        stack.enter_context(
            server_process(
                [binary, "--models-dir", str(folder), "--models-max", "2", "--parallel", "4",
                 "-c", "16384", "-t", cores, "--host", "127.0.0.1", "--port", str(port)],
                f"http://127.0.0.1:{port}/health",
            )
        )  # fmt: skip
        llama = f"http://127.0.0.1:{port}"
        worker = stack.enter_context(
            worker_process(
                free_port(),
                {
                    "GEMMA_MODEL_PATH": str(folder / "gemma-q4.gguf"),
                    "GEMMA_MODELS_DIR": str(folder),
                    "GEMMA_MAX_LOADED_MODELS": "2",
                    "GEMMA_KEEP_ALIVE": "-1",
                    "GEMMA_PARALLEL": "4",
                    "GEMMA_N_CTX": "4096",
                    "GEMMA_DATA_DIR": str(Path(tmp) / "data"),
                },
            )
        )
        asyncio.run(run(args.rounds, {"llama-server": llama, "worker": worker}))


if __name__ == "__main__":
    main()
