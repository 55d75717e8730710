"""What a worker must not give away (issue 20, item 5): keys in its logs at any level, its
conversations to other users of the machine, Python's words in an error."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gemma_worker.api.app import create_app
from tests.api.wsclient import connect, run_request, send
from tests.conftest import RunningWorker, make_settings, spawn_daemon

KEY = "leak-test-key-a-0123456789"
URL_KEY = "leak-test-key-b-9876543210"
WRONG = "leak-test-wrong-key-000000"
HISTORY = (
    "Geography notes. " + "Capitals are the seats of government. " * 40 + "\nQuestion: "
    "What is the capital of France?\nAnswer:"
)


@pytest.fixture(scope="module")
def debug_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The whole log of a daemon run at DEBUG with keys, after clients showed their keys in
    every way there is: Bearer and x-api-key headers (REST and the WebSocket handshake),
    the WebSocket auth message, a wrong key, keys in URLs."""
    folder = tmp_path_factory.mktemp("debug-daemon")
    log_file = folder / "stderr.log"
    env = {
        "GEMMA_API_KEYS": f"{KEY},{URL_KEY}",
        "LOG_LEVEL": "DEBUG",
        "GEMMA_DATA_DIR": str(folder),
    }
    proc, port = spawn_daemon(env, "--parallel", "1", "--n-ctx", "1024", log_file=log_file)
    base, ws_url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/ws"
    ask = {"input": "Hi", "max_tokens": 2}
    try:
        httpx.post(f"{base}/v1/execute", json=ask, headers={"Authorization": f"Bearer {KEY}"})
        httpx.get(f"{base}/v1/models", headers={"x-api-key": KEY})
        httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {WRONG}"})
        httpx.get(f"{base}/v1/sessions?api_key={URL_KEY}&token={URL_KEY}")

        async def websockets() -> None:
            for headers in ({"Authorization": f"Bearer {KEY}"}, {"x-api-key": KEY}):
                async with connect(ws_url, additional_headers=headers) as ws:
                    assert (await run_request(ws, ask))[-1]["type"] == "result"
            async with connect(f"{ws_url}?token={URL_KEY}") as ws:
                await send(ws, {"type": "auth", "token": URL_KEY})
                assert (await run_request(ws, ask))[-1]["type"] == "result"

        asyncio.run(websockets())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    yield log_file.read_text()


def test_a_debug_log_holds_no_key(debug_log: str) -> None:
    # The log really is verbose: the handshake dump and the access lines are there...
    assert "< GET /ws" in debug_log
    assert "WebSocket /ws?token=[redacted]" in debug_log
    assert "[redacted]" in debug_log
    # ...and no key is in it, nor the wrong one.
    for secret in (KEY, URL_KEY, WRONG):
        assert secret not in debug_log


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_conversations_are_the_owners_only(tmp_path: Path) -> None:
    """The session database, its WAL and saved KV caches are 0600 in 0700 folders, whatever
    the umask; the default data folder, left open by an older version, is closed."""
    data = tmp_path / "xdg" / "gemma-worker"  # the default: $XDG_DATA_HOME/gemma-worker
    data.mkdir(parents=True)
    os.chmod(data, 0o755)
    env = {"XDG_DATA_HOME": str(tmp_path / "xdg")}
    old_umask = os.umask(0o022)
    try:
        proc, port = spawn_daemon(env, "--parallel", "1", "--n-ctx", "1024")
    finally:
        os.umask(old_umask)
    try:
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/execute",
            json={"input": HISTORY, "max_tokens": 4, "temperature": 0},
            timeout=60,
        )
        assert r.status_code == 200
        db = data / "sessions.db"
        assert mode(data) == 0o700
        for name in ("sessions.db", "sessions.db-wal", "sessions.db-shm"):
            assert mode(data / name) == 0o600, name
    finally:
        proc.send_signal(signal.SIGTERM)  # the idle session's KV cache is saved now
        assert proc.wait(timeout=60) == 0
    kv = data / "kv"
    saved = list(kv.glob("*.kv"))
    assert saved, "the stopping worker saved the session's KV cache"
    assert mode(kv) == 0o700
    assert all(mode(f) == 0o600 for f in saved)
    assert mode(db) == 0o600


def test_a_configured_data_folder_keeps_its_mode_but_not_its_files(tmp_path: Path) -> None:
    shared = tmp_path / "srv"
    shared.mkdir()
    os.chmod(shared, 0o755)
    fresh = tmp_path / "new" / "data"
    for folder in (shared, fresh):
        settings = make_settings(data_dir=folder)
        app = create_app(settings)
        app.state.worker.sessions.store.close()
        assert mode(folder / "sessions.db") == 0o600
    assert mode(shared) == 0o755  # someone else's folder is left as it was
    assert mode(fresh) == 0o700  # one the worker made is its own


def test_schema_errors_are_in_our_words(worker: RunningWorker) -> None:
    """A schema holding NaN (Python's JSON parser lets it through) is refused without the
    words of Python's exception ('Out of range float values are not JSON compliant')."""
    body = (
        '{"model": "gemma", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}], '
        '"response_format": {"type": "json_schema", "json_schema": {"name": "n", '
        '"schema": {"type": "number", "enum": [NaN]}}}}'
    )
    r = httpx.post(
        f"{worker.http}/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert "NaN" in message or "not JSON data" in message, message
    for python in ("Out of range", "compliant", "Error:", "Traceback"):
        assert python not in message
    assert json.dumps(r.json())  # a plain JSON error body
