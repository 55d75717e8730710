"""Session benchmark: a 10-turn conversation whose history grows to about 1,500 tokens.

Each turn is timed (time to first token, from the client) two ways, interleaved in the same
run against the same worker:

- session: the turn is sent with the session's ``session_id``; the worker builds the prompt
  from the stored history and reuses the session's KV cache, so only the new input is processed;
- stateless: the whole transcript so far is sent as one input without a session, the way an
  OpenAI-style server is used; every token of the history is processed again.

Both see the same prompt text (the stateless transcript is built from the session's answers).
Prints both curves and the turn-10 ratios. Target: session turn 10 <= 1.5 x session turn 1.

Then the worker is restarted twice and one more turn is sent to two identical sessions: once
with the KV caches the first worker saved to disk when it stopped, once with the disk cache
off (the history is processed again), and both times to first token are printed.

    .venv/bin/python bench/sessions.py [--rounds 3] [--turns 10]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from dataclasses import dataclass
from typing import Any

from websockets.sync.client import ClientConnection, connect

from _common import EventClock, free_port, worker_process

TOPICS = [
    "lighthouse",
    "glacier",
    "violin",
    "volcano",
    "library",
    "orchard",
    "satellite",
    "harbour",
    "desert",
    "cathedral",
    "river delta",
    "observatory",
]
ANSWER_TOKENS = 40


def user_input(turn: int) -> str:
    """About 125 tokens of new input per turn."""
    topic = TOPICS[turn % len(TOPICS)]
    facts = " ".join(
        f"Fact {turn}.{j}: the {topic} is linked to the number {turn * 37 + j * 11}."
        for j in range(6)
    )
    lead = "" if turn == 0 else "\n\n"
    question = f"Question {turn}: What is the {topic} known for?"
    return f"{lead}Notes on the {topic}. {facts}\n{question}\nAnswer:"


@dataclass
class Turn:
    ttft_ms: float
    prompt_tokens: int
    cached_tokens: int
    content: str
    session_id: str


def run(ws: ClientConnection, body: dict[str, Any]) -> Turn:
    """Send one request over the WebSocket and time it up to its result."""
    clock = EventClock()
    ws.send(json.dumps(body))
    while not clock.see(json.loads(ws.recv())):
        pass
    final = clock.final
    usage = final["usage"]
    return Turn(
        clock.timing().ttft_ms,
        usage["prompt_tokens"],
        usage["cached_tokens"],
        final["content"],
        final["session_id"],
    )


def one_round(ws: ClientConnection, n_turns: int) -> tuple[list[Turn], list[Turn]]:
    """One conversation: each session turn, then the same prompt sent statelessly."""
    ask = {"max_tokens": ANSWER_TOKENS, "temperature": 0}
    session_id: str | None = None
    transcript = ""
    with_session: list[Turn] = []
    stateless: list[Turn] = []
    for turn in range(n_turns):
        text = user_input(turn)
        # One connection runs every round: each round starts its own session.
        body = {"input": text, **ask} | (
            {"session_id": session_id} if session_id else {"new_session": True}
        )
        result = run(ws, body)
        session_id = result.session_id
        with_session.append(result)
        stateless.append(run(ws, {"input": transcript + text, **ask, "stateless": True}))
        transcript += text + result.content
    return with_session, stateless


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="conversations to run (median)")
    parser.add_argument("--turns", type=int, default=10)
    args = parser.parse_args()
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="gemma-bench-")
    env = {"GEMMA_N_CTX": "4096", "GEMMA_PARALLEL": "8", "GEMMA_DATA_DIR": data_dir}
    rounds: list[tuple[list[Turn], list[Turn]]] = []
    with (
        worker_process(port, env) as base,
        connect(base.replace("http", "ws", 1) + "/ws", max_size=None) as ws,
    ):
        run(ws, {"input": "Warm-up.", "max_tokens": 4, "stateless": True})
        for _ in range(args.rounds):
            rounds.append(one_round(ws, args.turns))

    def med(kind: int, turn: int, field: str) -> float:
        return statistics.median(getattr(r[kind][turn], field) for r in rounds)

    print(
        f"{args.rounds} conversations of {args.turns} turns, {ANSWER_TOKENS}-token answers; "
        "median time to first token per turn (ms)"
    )
    header = ("turn", "prompt tok", "cached", "session", "stateless", "ratio")
    print("{:>4} {:>10} {:>7} {:>9} {:>10} {:>6}".format(*header))
    for t in range(args.turns):
        s, b = med(0, t, "ttft_ms"), med(1, t, "ttft_ms")
        print(
            f"{t + 1:>4} {med(0, t, 'prompt_tokens'):>10.0f} {med(0, t, 'cached_tokens'):>7.0f} "
            f"{s:>9.1f} {b:>10.1f} {b / s:>5.2f}x"
        )
    last = args.turns - 1
    growth = med(0, last, "ttft_ms") / med(0, 0, "ttft_ms")
    base_growth = med(1, last, "ttft_ms") / med(1, 0, "ttft_ms")
    verdict = "PASS" if growth <= 1.5 else "FAIL"
    print(f"session   turn {args.turns} / turn 1 TTFT: {growth:.2f}x  (target <= 1.5x: {verdict})")
    print(f"stateless turn {args.turns} / turn 1 TTFT: {base_growth:.2f}x")
    print(
        f"turn {args.turns}: stateless / session TTFT: "
        f"{med(1, last, 'ttft_ms') / med(0, last, 'ttft_ms'):.2f}x"
    )
    if len(rounds) >= 2:
        sessions = [r[0][0].session_id for r in rounds]
        saved = resume(env, sessions[0], args.turns, disk=True)
        rebuilt = resume(env, sessions[1], args.turns, disk=False)
        print(
            f"resume after a restart (turn {args.turns + 1}, {saved.prompt_tokens} prompt "
            f"tokens): saved cache {saved.ttft_ms:.1f} ms ({saved.cached_tokens} tokens "
            f"loaded), history processed again {rebuilt.ttft_ms:.1f} ms "
            f"({rebuilt.cached_tokens} loaded): {rebuilt.ttft_ms / saved.ttft_ms:.1f}x faster"
        )
    shutil.rmtree(data_dir, ignore_errors=True)


def resume(env: dict[str, str], session_id: str, turn: int, *, disk: bool) -> Turn:
    """One more turn of ``session_id`` on a freshly started worker."""
    env = {**env, "GEMMA_KV_DISK_CACHE_MB": "2048" if disk else "0"}
    with (
        worker_process(free_port(), env) as base,
        connect(base.replace("http", "ws", 1) + "/ws", max_size=None) as ws,
    ):
        body = {"input": user_input(turn), "session_id": session_id}
        return run(ws, {**body, "max_tokens": ANSWER_TOKENS, "temperature": 0})


if __name__ == "__main__":
    main()
