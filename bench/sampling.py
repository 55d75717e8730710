"""What sampling costs per decode step at 8 sequences: greedy (temperature 0) against the
default sampled chain (temperature 0.7, top-k 64, top-p 0.95), on real logits.

In one process: the model decodes 8 sequences together, step after step; on every step's
logits the worker's own ``Sampler`` picks a token for each sequence, once greedy and once
sampled, and each is timed beside the step's ``llama_decode``. Prints milliseconds per step
and sampling's share of a step (decode + sampling of all 8).

    .venv/bin/python bench/sampling.py [--steps 64] [--top-k 64] [--fast]
"""

from __future__ import annotations

import argparse
import statistics
import time

from _common import PROMPTS, embedded_model_path
from gemma_worker.core.sampling import SamplingParams
from gemma_worker.engine.kernels import KernelChoices
from gemma_worker.engine.llama import Batch, LlamaModel
from gemma_worker.engine.sampler import Sampler

N_SEQ = 8


def params(temperature: float, top_k: int, top_p: float) -> SamplingParams:
    return SamplingParams(
        max_tokens=4096, temperature=temperature, top_p=top_p, top_k=top_k, seed=1, stop=()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--fast", action="store_true", help="fast-mode kernels (a faster step)")
    args = parser.parse_args()

    model = LlamaModel(
        embedded_model_path(),
        n_ctx_seq=1024,
        n_seq=N_SEQ,
        n_batch=512,
        n_threads=None,
        n_gpu_layers=0,
        kernels=KernelChoices.for_mode(not args.fast),
    )
    n_vocab = model.info.n_vocab
    kinds = {
        "greedy (temperature 0)": params(0.0, args.top_k, args.top_p),
        f"temperature 0.7, top-k {args.top_k}, top-p {args.top_p}": params(
            0.7, args.top_k, args.top_p
        ),
    }
    samplers = {k: [Sampler(p, n_vocab) for _ in range(N_SEQ)] for k, p in kinds.items()}
    batch = Batch(512)
    outputs: list[int] = []
    n_past: list[int] = []
    for s in range(N_SEQ):
        tokens = model.tokenize(PROMPTS[s % len(PROMPTS)], add_special=True, parse_special=False)
        for i, t in enumerate(tokens):
            idx = batch.add(t, i, s, i == len(tokens) - 1)
        outputs.append(idx)
        n_past.append(len(tokens))
    assert model.decode(batch) == 0

    decode_ms: list[float] = []
    sample_ms: dict[str, list[float]] = {k: [] for k in kinds}
    for step in range(args.steps):
        picks: dict[str, list[int]] = {}
        # alternate which kind goes first, so neither always finds the logits in cache
        for kind in list(kinds)[:: 1 if step % 2 == 0 else -1]:
            t0 = time.perf_counter()
            picks[kind] = [samplers[kind][s].sample(model.ctx, outputs[s]) for s in range(N_SEQ)]
            sample_ms[kind].append((time.perf_counter() - t0) * 1e3)
        chosen = picks[next(iter(kinds))]  # the greedy picks drive the sequences
        batch.clear()
        outputs = []
        for s in range(N_SEQ):
            outputs.append(batch.add(chosen[s], n_past[s], s, True))
            n_past[s] += 1
        t0 = time.perf_counter()
        assert model.decode(batch) == 0
        decode_ms.append((time.perf_counter() - t0) * 1e3)

    decode = statistics.median(decode_ms)
    mode = "fast" if args.fast else "deterministic"
    print(f"{N_SEQ} sequences, {args.steps} steps, {n_vocab} tokens of vocabulary, {mode} mode")
    print(f"  llama_decode of the step        {decode:7.2f} ms")
    for kind, ms in sample_ms.items():
        m = statistics.median(ms)
        print(
            f"  sampling all {N_SEQ}, {kind:<40} {m:7.2f} ms  "
            f"= {100 * m / (decode + m):5.1f}% of the step"
        )
    model.close()


if __name__ == "__main__":
    main()
