"""Draft policies replayed offline: how many tokens per second each would make on the bench's
greedy answers, at one client, with step costs measured on this machine.

A greedy answer does not depend on the drafts (in deterministic mode, exactly), so a drafting
policy can be judged without a server: at every step the sequence holds its next token, the
policy drafts, the draft stands while it equals the answer, and the step costs what a step of
that width costs here. This script (1) has the embedded model answer the prompts of
``bench/prompts/speculative.json`` greedily (and, with ``--more``, 14 more prompts made the
same way: logs of other lines, other one-line changes, other openings), (2) measures a step of
each width from 1 to 65 tokens on one sequence 600 tokens in, (3) replays each policy:

- ``worker``: the worker's planner (``core/speculation``: ``NgramDrafter.lookup``, one
  ``Acceptance`` per n-gram length, ``plan_drafts`` over ``StepCosts`` fed the measured
  costs);
- ``one-rate``: the same with one ``Acceptance`` for every draft (the worker before it kept
  them apart);
- ``ngram-mod``: llama.cpp's ``--spec-type ngram-mod`` rule (a hash of the last 24 tokens
  to the next, chained, a draft only when 48 or more tokens chain; up to 64).

It prints tokens/s by prompt and geometric means by workload. It replays decoding only (no
prompt processing, no HTTP), so figures are above the bench's; compare policies, not servers.

    .venv/bin/python bench/spec_replay.py
    .venv/bin/python bench/spec_replay.py --more
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import llama_cpp as lc
import numpy as np

from _common import embedded_model_path
from gemma_worker.core.speculation import Acceptance, NgramDrafter, plan_drafts
from gemma_worker.core.step_cost import StepCosts
from gemma_worker.engine.kernels import KernelChoices
from gemma_worker.engine.llama import Batch, LlamaModel

HERE = Path(__file__).resolve().parent
WORKLOADS = json.loads((HERE / "prompts" / "speculative.json").read_text())
WIDTHS = [*range(1, 17), 20, 24, 25, 28, 32, 33, 40, 48, 49, 56, 64, 65]
CONTEXT = 600


class Model:
    """The embedded model, one sequence: greedy answers and step costs."""

    def __init__(self) -> None:
        self.m = LlamaModel(
            embedded_model_path(),
            n_ctx_seq=4096,
            n_seq=1,
            n_batch=512,
            n_threads=None,
            n_gpu_layers=0,
            kernels=KernelChoices.fast(),
            n_outputs=128,
        )
        self.batch = Batch(512)
        vocab = lc.llama_model_get_vocab(self.m.model)
        self.n_vocab = int(lc.llama_vocab_n_tokens(vocab))
        self.is_eog = lambda t: bool(lc.llama_vocab_is_eog(vocab, t))

    def _feed(self, tokens: list[int], pos: int, last_logits: bool) -> None:
        for i in range(0, len(tokens), 512):
            self.batch.clear()
            chunk = tokens[i : i + 512]
            for j, t in enumerate(chunk):
                end = last_logits and i + j == len(tokens) - 1
                self.batch.add(t, pos + i + j, 0, end)
            if self.m.decode(self.batch) != 0:
                raise RuntimeError("llama_decode failed")

    def greedy(self, prompt: str, max_tokens: int) -> tuple[list[int], list[int]]:
        """The prompt's tokens and the greedy answer's."""
        lc.llama_memory_clear(self.m.memory, True)
        tokens = self.m.tokenize(prompt, add_special=True, parse_special=False)
        self._feed(tokens, 0, True)
        out: list[int] = []
        while len(out) < max_tokens:
            logits = np.ctypeslib.as_array(
                lc.llama_get_logits_ith(self.m.ctx, -1), shape=(self.n_vocab,)
            )
            token = int(logits.argmax())
            if self.is_eog(token):
                break
            out.append(token)
            self._feed([token], len(tokens) + len(out) - 1, True)
        return tokens, out

    def step_costs(self, context: list[int], rounds: int = 5) -> dict[int, float]:
        """Median seconds of a step of each of :data:`WIDTHS` tokens (all with logits)."""
        lc.llama_memory_clear(self.m.memory, True)
        self._feed(context[:CONTEXT], 0, False)
        seen: dict[int, list[float]] = defaultdict(list)
        for _ in range(rounds):
            for width in WIDTHS:
                lc.llama_memory_seq_rm(self.m.memory, 0, CONTEXT, -1)
                self.batch.clear()
                for j in range(width):
                    self.batch.add(context[j], CONTEXT + j, 0, True)
                t0 = time.perf_counter()
                if self.m.decode(self.batch) != 0:
                    raise RuntimeError("llama_decode failed")
                seen[width].append(time.perf_counter() - t0)
        return {w: statistics.median(v) for w, v in seen.items()}


def more_prompts(seed: int = 7) -> list[tuple[str, str]]:
    """14 prompts made like the bench's: logs of other lines, other changes, other openings."""
    rng = random.Random(seed)
    hosts = ["web-01", "web-02", "db-01", "lb-01", "cache-03", "app-04"]
    services = ["nginx", "sshd", "cron", "redis", "postgres", "kernel", "systemd", "dockerd"]
    logs = WORKLOADS["workloads"]["extraction"]
    messages = sorted(
        {line.split(": ", 1)[1] for p in logs for line in p.split("\n") if re.match("2026-", line)}
    )
    head = logs[0].split("Log:\n")[0] + "Log:\n"
    out = []
    for _ in range(6):
        lines = []
        for _ in range(14):
            when = (
                f"2026-{rng.randint(10, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}"
                f":{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z"
            )
            pid = rng.randint(100, 39999)
            lines.append((when, rng.choice(hosts), rng.choice(services), pid, rng.choice(messages)))
        log = "".join(f"{t} {h} {s}[{p}]: {m}\n" for t, h, s, p, m in lines)
        out.append(
            ("extraction", f'{head}{log}\nJSON lines:\n{{"time": "{lines[0][0]}", "host": "')
        )
    changes = [
        ["the server_name changed to shop.example.org", "the proxy_read_timeout raised to 120s"],
        ["the Prometheus image upgraded to prom/prometheus:v2.54.1", "Grafana bound to 0.0.0.0"],
    ]
    for source, wanted in zip(WORKLOADS["workloads"]["rewrite"], changes, strict=True):
        body, rest = source.split("\n\nThe same file with ", 1)
        start = rest.split(":\n\n", 1)[1]
        for change in wanted:
            out.append(
                ("rewrite", f"{body}\n\nThe same file with {change}. Every other line is "
                 f"unchanged:\n\n{start}")
            )  # fmt: skip
    for opening in [
        "The engineers gathered in the control room before the launch. Each of them checked "
        "the panels, read the numbers aloud, and waited. The engineers gathered in the control "
        "room",
        "Once upon a time, in a small town by the river, there lived a baker who",
        "The report begins with a summary of the incident. At 03:12 the primary database "
        "stopped answering, and",
        "Day 1. We left the harbour at dawn and sailed north along the coast. Day 2. We left "
        "the harbour",
    ]:
        out.append(("prose", opening))
    return out


class Drafting(Protocol):
    """One sequence's drafting: told each token that stands, asked for the next draft."""

    def see(self, tokens: list[int]) -> None: ...
    def draft(self) -> list[int]: ...
    def verified(self, drafted: int, accepted: int) -> None: ...


class WorkerPolicy:
    """The worker's planner for one stream; ``per_length=False``: one rate for all drafts."""

    def __init__(self, prompt: list[int], costs: StepCosts, *, per_length: bool) -> None:
        self.drafter = NgramDrafter(prompt)
        self.costs = costs
        self.per_length = per_length
        self.rates: defaultdict[int, Acceptance] = defaultdict(Acceptance)
        self.last: Acceptance | None = None

    def see(self, tokens: list[int]) -> None:
        self.drafter.extend(tokens)

    def draft(self, max_draft: int = 48) -> list[int]:
        match, want = self.drafter.lookup(max_draft)
        self.last = None
        if not want:
            return []
        rate = self.rates[match if self.per_length else 0]
        n = plan_drafts({0: len(want)}, {0: rate.rate}, self.costs, room=512).get(0, 0)
        if n == 0:
            rate.rest()
            return []
        self.last = rate
        return want[:n]

    def verified(self, drafted: int, accepted: int) -> None:
        if self.last is not None:
            self.last.observe(drafted, accepted)


class NgramMod:
    """llama.cpp's ngram-mod for one stream (its table is fresh for each prompt here)."""

    N_MATCH, N_MIN, N_MAX = 24, 48, 64

    def __init__(self, prompt: list[int]) -> None:
        self.tokens = list(prompt)
        self.table: dict[tuple[int, ...], int] = {}
        self.indexed = 0
        self._index()

    def _index(self) -> None:
        n = self.N_MATCH
        for i in range(self.indexed, len(self.tokens) - n):
            self.table[tuple(self.tokens[i : i + n])] = self.tokens[i + n]
        self.indexed = max(len(self.tokens) - n, 0)

    def see(self, tokens: list[int]) -> None:
        self.tokens.extend(tokens)

    def draft(self) -> list[int]:
        if len(self.tokens) < self.N_MATCH:
            return []
        if self.indexed + 32 < len(self.tokens):  # as llama.cpp adds n-grams: in chunks
            self._index()
        context = self.tokens[-self.N_MATCH :]
        out: list[int] = []
        for i in range(self.N_MAX):
            token = self.table.get(tuple(context[-self.N_MATCH :]))
            if token is None:
                if i < self.N_MIN:
                    return []
                break
            out.append(token)
            context.append(token)
        return out

    def verified(self, drafted: int, accepted: int) -> None:
        pass


def replay(answer: list[int], policy: Drafting, cost: Callable[[int], float]) -> float:
    """Tokens per second of ``policy`` decoding ``answer``."""
    t, seconds = 0, 0.0
    while t < len(answer):
        policy.see([answer[t]])  # the next token, sampled: the draft follows it
        draft = policy.draft()
        stood = 0
        while stood < len(draft) and t + 1 + stood < len(answer):
            if draft[stood] != answer[t + 1 + stood]:
                break
            stood += 1
        seconds += cost(1 + len(draft))
        policy.verified(len(draft), stood)
        policy.see(answer[t + 1 : t + 1 + stood])
        t += 1 + stood
    return len(answer) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--more", action="store_true", help="14 more prompts made alike")
    args = parser.parse_args()
    model = Model()
    prompts = [(w, p) for w, ps in WORKLOADS["workloads"].items() for p in ps]
    prompts += more_prompts() if args.more else []
    cases = []
    for workload, prompt in prompts:
        tokens, answer = model.greedy(prompt, WORKLOADS["max_tokens"][workload])
        cases.append((workload, tokens, answer))
    table = model.step_costs(cases[0][1])
    print("step ms by width: " + ", ".join(f"{w}: {s * 1e3:.1f}" for w, s in table.items()))

    def cost(width: int) -> float:
        return table.get(width) or table[min(w for w in table if w >= width)]

    def fitted() -> StepCosts:
        costs = StepCosts()
        for width, seconds in table.items():
            costs.observe(width, seconds)
        return costs

    policies: dict[str, Callable[[list[int]], Drafting]] = {
        "worker": lambda p: WorkerPolicy(p, fitted(), per_length=True),
        "one-rate": lambda p: WorkerPolicy(p, fitted(), per_length=False),
        "ngram-mod": NgramMod,
    }
    rates: dict[str, dict[str, list[float]]] = {n: defaultdict(list) for n in policies}
    print(f"\n{'prompt':<14}{'tokens':>7}{'no drafts':>11}" + "".join(f"{n:>11}" for n in policies))
    for i, (workload, tokens, answer) in enumerate(cases):
        plain = len(answer) / (cost(1) * len(answer))
        row = f"{workload}{i:<4}".ljust(14) + f"{len(answer):>7}{plain:>11.1f}"
        for name, make in policies.items():
            value = replay(answer, make(tokens), cost)
            rates[name][workload].append(value)
            row += f"{value:>11.1f}"
        print(row)
    print("\ngeometric means, tokens/s")
    for workload in dict.fromkeys(w for w, _, _ in cases):
        print(
            f"{workload:<14}"
            + "".join(f"{n} {statistics.geometric_mean(rates[n][workload]):7.1f}   " for n in rates)
        )


if __name__ == "__main__":
    main()
