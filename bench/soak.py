"""Soak: two replicas sharing Redis behind nginx (the shipped config), under 8 clients for
10 minutes, with random cancels, disconnects and session turns.

Prints requests ok / failed, each replica's RSS every minute (growth after the first minute
must stay under 5%), each replica's slots and queue at the end (must be empty), and time to
first token through nginx against direct to a replica (must be within +5 ms), measured in
interleaved rounds after the load.

    .venv/bin/python bench/soak.py [--minutes 10] [--clients 8]

nginx and redis-server come from the OS packages (scripts/test-deps.sh installs them).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from websockets.sync.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.deploy.cluster import Cluster, Replica
from tests.programs import RedisServer

PROMPTS = [
    "Question: What is the capital of France?\nAnswer:",
    "The history of the Roman Empire begins",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea,",
    "Count from 1 to 100: 1, 2, 3, 4,",
]


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.examples: list[str] = []

    def add(self, kind: str, good: bool, detail: str = "") -> None:
        with self.lock:
            (self.ok if good else self.failed)[kind] += 1
            if not good and len(self.examples) < 10:
                self.examples.append(f"{kind}: {detail[:300]}")


def rss_mb(replica: Replica) -> float:
    assert replica.proc is not None
    for line in Path(f"/proc/{replica.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def client(cluster: Cluster, seed: int, stop: float, tally: Tally) -> None:
    rng = random.Random(seed)
    http = httpx.Client(base_url=cluster.http, timeout=120)
    session: str | None = None
    while time.monotonic() < stop:
        action = rng.choices(
            ["turn", "stream_disconnect", "ws", "ws_cancel", "openai"], [4, 1, 2, 1, 2]
        )[0]
        prompt = rng.choice(PROMPTS)
        max_tokens = rng.randint(8, 48)
        try:
            if action == "turn":
                headers = {"X-Session-Id": session} if session else {}
                r = http.post(
                    "/v1/execute", json={"input": prompt, "max_tokens": max_tokens}, headers=headers
                )
                good = r.status_code == 200
                tally.add(action, good, r.text)
                if good:
                    session = r.json()["session_id"]
                    if rng.random() < 0.1:
                        session = None  # start over now and then
            elif action == "stream_disconnect":
                with http.stream(
                    "POST",
                    "/v1/execute",
                    json={"input": prompt, "max_tokens": 64, "stream": True},
                ) as r:
                    good = r.status_code == 200
                    for n, _ in enumerate(r.iter_lines()):
                        if n >= 4:
                            break  # leave mid-stream: the worker must cancel and free the slot
                tally.add(action, good, str(r.status_code))
            elif action in {"ws", "ws_cancel"}:
                with connect(cluster.ws, open_timeout=30) as ws:
                    ws.send(
                        json.dumps({"input": prompt, "max_tokens": max_tokens, "stateless": True})
                    )
                    tokens = 0
                    while True:
                        event = json.loads(ws.recv(timeout=120))
                        if event["type"] == "token":
                            tokens += 1
                            if action == "ws_cancel" and tokens == 3:
                                ws.send(json.dumps({"type": "cancel"}))
                        if event["type"] in {"result", "error"}:
                            break
                good = event["type"] == "result"
                tally.add(action, good, json.dumps(event))
            else:
                r = http.post(
                    "/v1/chat/completions",
                    json={
                        "model": "gemma",
                        "messages": [{"role": "user", "content": prompt}],
                        "max_tokens": max_tokens,
                    },
                )
                tally.add(action, r.status_code == 200, r.text)
        except Exception as exc:  # a transport failure is a failed request
            tally.add(action, False, repr(exc))


def stacks(replica: Replica) -> str:
    """Every thread's stack of a replica that stopped answering (py-spy, when installed)."""
    assert replica.proc is not None
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        return "(py-spy is not installed)"
    done = subprocess.run(
        [str(spy), "dump", "--pid", str(replica.proc.pid)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return done.stdout + done.stderr


def ttft_ms(url: str) -> float:
    body = {"input": "Question: What is 2 + 2?\nAnswer:", "max_tokens": 2, "stream": True,
            "temperature": 0}  # fmt: skip
    t0 = time.perf_counter()
    with httpx.stream("POST", f"{url}/v1/execute", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if json.loads(line)["type"] == "token":
                return (time.perf_counter() - t0) * 1e3
    raise RuntimeError("no token")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--ttft-rounds", type=int, default=30)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="gemma-soak-"))
    redis = RedisServer.start(work)
    cluster = Cluster.start(work, redis, {"GEMMA_PARALLEL": "4", "GEMMA_TEMPERATURE": "0.7"})
    try:
        print(f"soak: {args.clients} clients for {args.minutes} min through nginx, 2 replicas")
        tally = Tally()
        stop = time.monotonic() + args.minutes * 60
        threads = [
            threading.Thread(target=client, args=(cluster, i, stop, tally), daemon=True)
            for i in range(args.clients)
        ]
        for t in threads:
            t.start()
        rss: dict[str, list[float]] = {r.name: [rss_mb(r)] for r in cluster.replicas}
        print("  minute 0: RSS " + ", ".join(f"{n} {v[0]:.0f} MB" for n, v in rss.items()))
        minute = 0
        while any(t.is_alive() for t in threads):
            time.sleep(min(60.0, max(0.1, stop - time.monotonic() + 0.5)))
            if time.monotonic() >= stop and minute >= args.minutes:
                break
            minute += 1
            for r in cluster.replicas:
                rss[r.name].append(rss_mb(r))
            print(
                f"  minute {minute}: RSS "
                + ", ".join(f"{n} {v[-1]:.0f} MB" for n, v in rss.items())
                + f"; ok {sum(tally.ok.values())}, failed {sum(tally.failed.values())}",
                flush=True,
            )
        for t in threads:
            t.join(180)

        ok, failed = sum(tally.ok.values()), sum(tally.failed.values())
        print(f"requests: ok {ok}, failed {failed}  ({dict(tally.ok)})")
        for example in tally.examples:
            print(f"  failure: {example}")
        verdicts = [("no failed request", failed == 0)]
        for name, values in rss.items():
            base = values[1] if len(values) > 2 else values[0]
            growth = (values[-1] - base) / base * 100
            print(f"replica {name}: RSS after warm-up {base:.0f} MB -> {values[-1]:.0f} MB "
                  f"({growth:+.1f}%)")  # fmt: skip
            later = values[2:]
            if later:
                print(f"  from minute 2 on: {min(later):.0f}-{max(later):.0f} MB")
            verdicts.append((f"replica {name} RSS growth < 5%", growth < 5.0))
        time.sleep(1.0)
        for r in cluster.replicas:
            try:
                ready = httpx.get(f"{r.http}/ready", timeout=10).json()
            except httpx.HTTPError as exc:
                print(f"replica {r.name}: /ready failed ({exc!r}); its threads:")
                print(stacks(r))
                verdicts.append((f"replica {r.name} answers at the end", False))
                continue
            print(f"replica {r.name}: active {ready['active']}, queued {ready['queued']}")
            verdicts.append(
                (f"replica {r.name} idle at the end", ready["active"] == 0 and ready["queued"] == 0)
            )

        via_nginx: list[float] = []
        direct: list[float] = []
        target = cluster.replicas[0].http
        for i in range(args.ttft_rounds):  # interleaved, alternating who goes first
            pair = [(via_nginx, cluster.http), (direct, target)]
            for bucket, url in pair if i % 2 == 0 else reversed(pair):
                bucket.append(ttft_ms(url))
        n_med, d_med = statistics.median(via_nginx), statistics.median(direct)
        print(f"time to first token: nginx {n_med:.1f} ms, direct {d_med:.1f} ms, "
              f"difference {n_med - d_med:+.1f} ms (medians of {args.ttft_rounds})")  # fmt: skip
        verdicts.append(("TTFT through nginx within +5 ms", n_med - d_med <= 5.0))
        for what, good in verdicts:
            print(f"  {'PASS' if good else 'FAIL'}  {what}")
    finally:
        cluster.stop()
        redis.stop()


if __name__ == "__main__":
    main()
