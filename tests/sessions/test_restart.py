"""A session outlives its worker process: a new process on the same store continues it."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import spawn_daemon

TURNS = [
    # long enough for its cache to be saved (see KV_DISK_MIN_TOKENS)
    "Geography notes. "
    + "Capitals are the seats of government. " * 40
    + "\nQuestion: What is the capital of France?\nAnswer:",
    "\nQuestion: What is the capital of Spain?\nAnswer:",
]


def run_turn(port: int, body: dict[str, Any]) -> dict[str, Any]:
    ask = {"max_tokens": 8, "temperature": 0, "stop": ["\n"]}
    r = httpx.post(f"http://127.0.0.1:{port}/v1/execute", json={**ask, **body}, timeout=60)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def test_session_continues_after_a_restart(tmp_path: Path) -> None:
    env = {"GEMMA_DATA_DIR": str(tmp_path)}
    first, port = spawn_daemon(env, "--n-ctx", "1024", "--parallel", "1")
    try:
        one = run_turn(port, {"input": TURNS[0]})
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0
    finally:
        first.kill()
    second, port = spawn_daemon(env, "--n-ctx", "1024", "--parallel", "1")
    try:
        two = run_turn(port, {"input": TURNS[1], "session_id": one["session_id"]})
        assert two["session_id"] == one["session_id"]
        # the first process saved the idle session's KV cache when it stopped; the new one
        # loads it instead of processing the history again
        assert two["usage"]["cached_tokens"] >= one["usage"]["prompt_tokens"]
        assert two["usage"]["prompt_tokens"] > one["usage"]["prompt_tokens"]
        transcript = TURNS[0] + one["result"] + TURNS[1]
        assert run_turn(port, {"input": transcript})["result"] == two["result"]
        r = httpx.get(f"http://127.0.0.1:{port}/v1/sessions/{one['session_id']}", timeout=10)
        turns = r.json()["history"]
        assert [t["user"] for t in turns] == TURNS
        assert [t["assistant"] for t in turns] == [one["result"], two["result"]]
    finally:
        second.kill()
        second.wait()
