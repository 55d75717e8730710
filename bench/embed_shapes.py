"""How a short embedding batch is best decoded on the CPU: the thresholds of
:func:`gemma_worker.engine.llama_embed.decode_plan`, measured.

ggml's CPU flash attention runs a tiled kernel from 64 query rows (a batch's tokens) and a
scalar one below, which costs more than the batch's matmuls. llama-server decodes every
batch with flash attention (``-fa auto`` turns it on for the CPU). The worker picks per
batch, between:

- ``flash``: flash attention as it is (llama-server's way);
- ``plain``: the model's second, small context without flash attention (one input only);
- ``padded``: flash attention on the batch filled up to 64 tokens with a throwaway sequence.

For each shape (inputs x tokens each) this times each way on the built-in all-MiniLM-L6-v2
(or ``--model``, a GGUF embedding model without a KV cache), interleaved call by call, and
prints the median decode in ms, the plan :func:`decode_plan` picks and its time as a ratio
to ``flash``'s (below 1.0 is faster): whether the thresholds hold for that model and CPU.

    .venv/bin/python bench/embed_shapes.py
    .venv/bin/python bench/embed_shapes.py --calls 400 --model ~/models/bge-small-en.gguf
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from embeddings import SENTENCES
from gemma_worker.engine.kernels import KernelChoices
from gemma_worker.engine.llama_embed import (
    FA_TILE_ROWS,
    PAD_FROM,
    DecodePlan,
    EmbeddingModel,
    decode_plan,
)
from gemma_worker.engine.minilm import minilm_path

SHAPES = [(1, n) for n in (8, 16, 24, 32, 40, 47, 48, 56, 63, 64)] + [
    (2, 10), (2, 20), (3, 12), (2, 28), (3, 18), (4, 20),
]  # fmt: skip


WAYS = ("flash", "plain", "padded")


def way_of(plan: DecodePlan) -> str:
    """The column of ``plan``."""
    if not plan.flash:
        return "plain"
    return "padded" if plan.filler else "flash"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=200, help="calls of each way per shape")
    parser.add_argument("--model", type=Path, help="a GGUF (default: the built-in MiniLM)")
    args = parser.parse_args()
    threads = os.cpu_count() or 1
    model = EmbeddingModel(
        args.model or minilm_path(),
        pooling=None,
        max_input_tokens=512,
        n_batch=512,
        n_threads=threads,
        n_gpu_layers=0,
        kernels=KernelChoices.fast(),
    )
    if not model.shaped:
        raise SystemExit("this model gets no plans (a KV cache, a GPU build or too small)")
    words = [t for s in SENTENCES for t in model.tokenize(s)[1:-1]]
    print(f"{model.info.name}, {threads} threads; PAD_FROM={PAD_FROM}, FA_TILE_ROWS={FA_TILE_ROWS}")
    print(f"{'shape':>7} {'flash':>8} {'plain':>8} {'padded':>8}   plan chosen     vs flash")
    for n_inputs, n_each in SHAPES:
        inputs = [words[i * n_each : (i + 1) * n_each] for i in range(n_inputs)]
        total = n_inputs * n_each
        ways = {"flash": DecodePlan(flash=True, filler=0)}
        if n_inputs == 1 and total < PAD_FROM:
            ways["plain"] = DecodePlan(flash=False, filler=0)
        if total < FA_TILE_ROWS:
            ways["padded"] = DecodePlan(flash=True, filler=FA_TILE_ROWS - total)
        times: dict[str, list[float]] = {w: [] for w in ways}
        for _ in range(args.calls):
            for way, plan in ways.items():
                start = time.perf_counter()
                model.embed(inputs, plan)
                times[way].append(time.perf_counter() - start)
        med = {w: statistics.median(t) * 1e3 for w, t in times.items()}
        chosen = decode_plan(n_inputs, total)
        cells = " ".join(f"{med[w]:8.3f}" if w in med else f"{'-':>8}" for w in WAYS)
        way = way_of(chosen)
        label = f"{way} +{chosen.filler}" if chosen.filler else way
        ratio = med[way] / med["flash"]
        print(f"{n_inputs:>3}x{n_each:<3} {cells}   {label:<14} {ratio:6.3f}x", flush=True)
    model.close()


if __name__ == "__main__":
    main()
