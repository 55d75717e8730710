"""Sessions over ``/ws`` and ``/v1/execute`` against the real model."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import httpx
import pytest

from gemma_worker.engine.job import GenerationSpec
from gemma_worker.engine.kv_cache import KV_DISK_MIN_TOKENS
from tests.api.wsclient import connect, recv_event, run_request, send
from tests.conftest import RunningWorker, make_settings, start_worker
from tests.fake_engine import DEFAULT_ANSWER, FakeEngine

pytestmark = pytest.mark.usefixtures("wait_idle")

TURNS = [
    "Question: What is the capital of France?\nAnswer:",
    "\nQuestion: What is the capital of Germany?\nAnswer:",
    "\nQuestion: What is the capital of Italy?\nAnswer:",
]
ASK = {"max_tokens": 12, "temperature": 0, "stop": ["\n"]}
STORY_PROMPT = "Once upon a time, in a small village by the sea,"
LONG_PREAMBLE = "Geography notes. " + "Capitals are the seats of government. " * 40 + "\n"


def get(worker: RunningWorker, path: str) -> httpx.Response:
    return httpx.get(f"{worker.http}{path}", timeout=10)


def delete(worker: RunningWorker, path: str) -> httpx.Response:
    return httpx.delete(f"{worker.http}{path}", timeout=10)


def history(worker: RunningWorker, session_id: str) -> dict[str, Any]:
    r = get(worker, f"/v1/sessions/{session_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def execute(worker: RunningWorker, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{worker.http}/v1/execute", json=body, timeout=60)


async def test_three_turns_over_websocket(worker: RunningWorker) -> None:
    results = []
    session_id = None
    async with connect(worker.ws) as ws:
        for i, text in enumerate(TURNS):
            msg = {"input": text, **ASK} | ({"session_id": session_id} if session_id else {})
            events = await run_request(ws, msg)
            opening, result = events[0], events[-1]
            assert result["type"] == "result", result
            assert (opening["new"], opening["turns"]) == (i == 0, i)
            session_id = session_id or opening["session_id"]
            assert opening["session_id"] == result["session_id"] == session_id
            results.append(result)
    assert "Paris" in results[0]["content"]
    # each turn's prompt holds the previous ones; from turn 2 on, that part is reused
    prompts = [r["usage"]["prompt_tokens"] for r in results]
    cached = [r["usage"]["cached_tokens"] for r in results]
    assert prompts[0] < prompts[1] < prompts[2]
    assert cached[0] < prompts[0]  # at most another request's prefix: no session cache yet
    for i in (1, 2):
        previous = results[i - 1]["usage"]
        assert cached[i] >= previous["prompt_tokens"]
        assert cached[i] <= previous["prompt_tokens"] + previous["completion_tokens"]
    body = history(worker, session_id)
    assert body["turns"] == 3
    assert body["format"] == "plain"
    assert [t["user"] for t in body["history"]] == TURNS
    assert [t["assistant"] for t in body["history"]] == [r["content"] for r in results]
    assert body["tokens"] == prompts[2] + results[2]["usage"]["completion_tokens"]


async def test_three_turns_over_rest_sync_and_streamed(worker: RunningWorker) -> None:
    first = execute(worker, {"input": TURNS[0], **ASK})
    assert first.status_code == 200, first.text
    session_id = first.json()["session_id"]
    second = execute(worker, {"input": TURNS[1], "session_id": session_id, **ASK})
    assert second.status_code == 200
    assert second.json()["session_id"] == session_id
    assert second.json()["usage"]["cached_tokens"] > 0
    body = {"input": TURNS[2], "session_id": session_id, "stream": True, **ASK}
    async with (
        httpx.AsyncClient(timeout=60) as client,
        client.stream("POST", f"{worker.http}/v1/execute", json=body) as r,
    ):
        assert r.status_code == 200
        events = [json.loads(line) async for line in r.aiter_lines() if line]
    assert events[0]["type"] == "session"
    assert (events[0]["session_id"], events[0]["turns"]) == (session_id, 2)
    assert events[-1]["type"] == "result"
    turns = history(worker, session_id)["history"]
    assert [t["assistant"] for t in turns] == [
        first.json()["result"],
        second.json()["result"],
        events[-1]["content"],
    ]


async def test_reused_cache_gives_the_same_answer_as_the_full_prompt(
    worker: RunningWorker,
) -> None:
    # Greedy decoding over the session's cached KV must equal decoding the whole transcript
    # on a worker that has no cache to reuse (prefix caching would reuse the session's here).
    first = execute(worker, {"input": TURNS[0], **ASK}).json()
    ask = {**ASK, "max_tokens": 24}
    second = execute(worker, {"input": TURNS[1], "session_id": first["session_id"], **ask}).json()
    assert second["usage"]["cached_tokens"] > 0
    transcript = TURNS[0] + first["result"] + TURNS[1]
    cold = start_worker(make_settings(parallel=1))
    try:
        stateless = execute(cold, {"input": transcript, **ask}).json()
    finally:
        cold.stop()
    assert stateless["usage"]["cached_tokens"] == 0
    assert stateless["usage"]["prompt_tokens"] == second["usage"]["prompt_tokens"]
    assert stateless["result"] == second["result"]


async def test_chat_format_session_reuses_the_cache(worker: RunningWorker) -> None:
    ask = {"max_tokens": 8, "temperature": 0, "prompt_format": "chat"}
    first = execute(worker, {"input": "Hello!", "system": "Answer briefly.", **ask}).json()
    session_id = first["session_id"]
    second = execute(worker, {"input": "And again?", "session_id": session_id, **ask}).json()
    assert second["usage"]["cached_tokens"] >= first["usage"]["prompt_tokens"]
    body = history(worker, session_id)
    assert (body["format"], body["system"], body["turns"]) == ("chat", "Answer briefly.", 2)
    # a session's format and system prompt are fixed by its first request
    for change in ({"prompt_format": "plain"}, {"system": "Be verbose."}):
        r = execute(worker, {"input": "x", "session_id": session_id, "max_tokens": 2, **change})
        assert r.status_code == 422
        assert r.json()["code"] == "INVALID_REQUEST"


async def test_delete_then_use_is_session_not_found(worker: RunningWorker) -> None:
    session_id = execute(worker, {"input": TURNS[0], **ASK}).json()["session_id"]
    listed = get(worker, "/v1/sessions").json()["sessions"]
    assert session_id in [s["id"] for s in listed]
    entry = next(s for s in listed if s["id"] == session_id)
    assert entry["turns"] == 1 and entry["tokens"] > 0 and entry["created"] <= entry["updated"]
    r = delete(worker, f"/v1/sessions/{session_id}")
    assert r.status_code == 200
    for response in (
        execute(worker, {"input": TURNS[1], "session_id": session_id}),
        get(worker, f"/v1/sessions/{session_id}"),
        delete(worker, f"/v1/sessions/{session_id}"),
    ):
        assert response.status_code == 404
        assert response.json()["code"] == "SESSION_NOT_FOUND"
    async with connect(worker.ws) as ws:
        events = await run_request(ws, {"input": "x", "session_id": session_id})
        assert [e["type"] for e in events] == ["error"]
        assert events[0]["code"] == "SESSION_NOT_FOUND"
        # the connection is still usable
        assert (await run_request(ws, {"input": "Hi", "max_tokens": 2}))[-1]["type"] == "result"


async def test_overflow_drops_the_oldest_turns_and_says_so(worker: RunningWorker) -> None:
    filler = "The quick brown fox jumps over the lazy dog. " * 30  # ~300 tokens a turn
    session_id = None
    async with connect(worker.ws) as ws:
        for i in range(4):
            msg = {"input": f"{filler}\nQuestion {i}:", "max_tokens": 16, "temperature": 0}
            events = await run_request(ws, msg | ({"session_id": session_id} if session_id else {}))
            session_id = events[0]["session_id"]
            assert events[-1]["type"] == "result", events[-1]
            notes = [e for e in events if e["type"] == "reasoning" and e["stage"] == "context"]
            if i < 3:  # up to ~900 tokens of history fit n_ctx=1024
                assert notes == []
            else:
                assert len(notes) == 1
                assert notes[0]["dropped_turns"] >= 1
                assert notes[0]["dropped_turns"] + notes[0]["kept_turns"] == 3
                assert str(notes[0]["dropped_turns"]) in notes[0]["content"]
                assert events[-1]["usage"]["prompt_tokens"] + 16 <= 1024
    # the stored history keeps every turn
    assert history(worker, session_id)["turns"] == 4


async def test_concurrent_requests_on_one_session_are_not_interleaved(
    worker: RunningWorker,
) -> None:
    session_id = execute(worker, {"input": TURNS[0], **ASK}).json()["session_id"]
    body = {"session_id": session_id, "max_tokens": 40, "temperature": 0}
    async with connect(worker.ws) as a, connect(worker.ws) as b:
        outcomes = await asyncio.gather(
            run_request(a, {"input": TURNS[1], **body}),
            run_request(b, {"input": TURNS[2], **body}),
        )
    finals = sorted((events[-1] for events in outcomes), key=lambda e: e["type"])
    assert [e["type"] for e in finals] == ["error", "result"]
    assert finals[0]["code"] == "SESSION_BUSY"
    # REST says the same with 409 and Retry-After while a turn runs
    async with connect(worker.ws) as ws:
        await send(ws, {"input": TURNS[1], **body})
        assert (await recv_event(ws))["type"] == "session"
        busy = execute(worker, {"input": TURNS[2], **body})
        assert busy.status_code == 409
        assert busy.json()["code"] == "SESSION_BUSY"
        assert busy.headers["Retry-After"] == "1"
        while (await recv_event(ws))["type"] != "result":
            pass
    turns = history(worker, session_id)["history"]
    assert len(turns) == 3
    assert turns[0]["user"] == TURNS[0]
    assert turns[1]["assistant"] == finals[1]["content"]
    assert turns[2]["user"] == TURNS[1]


def test_idle_sessions_expire() -> None:
    worker = start_worker(
        make_settings(parallel=1, session_ttl_seconds=1.0, session_sweep_seconds=0.2)
    )
    try:
        session_id = execute(worker, {"input": TURNS[0], **ASK}).json()["session_id"]
        assert get(worker, f"/v1/sessions/{session_id}").status_code == 200
        time.sleep(2.0)
        gone = execute(worker, {"input": TURNS[1], "session_id": session_id})
        assert gone.status_code == 404
        assert gone.json()["code"] == "SESSION_NOT_FOUND"
        assert get(worker, "/v1/sessions").json()["sessions"] == []
    finally:
        worker.stop()


def test_max_sessions_evicts_the_least_recently_used() -> None:
    worker = start_worker(make_settings(parallel=1, max_sessions=2))
    try:
        ids = [execute(worker, {"input": t, **ASK}).json()["session_id"] for t in TURNS]
        listed = [s["id"] for s in get(worker, "/v1/sessions").json()["sessions"]]
        assert listed == [ids[2], ids[1]]
    finally:
        worker.stop()


def test_an_evicted_session_is_rebuilt_from_its_history() -> None:
    # One slot: another session's turn (sharing no prefix) takes it, so the first session's
    # cache is gone (and not kept on disk either).
    worker = start_worker(make_settings(parallel=1, kv_disk_cache_mb=0))
    try:
        a1 = execute(worker, {"input": TURNS[0], **ASK}).json()
        b1 = execute(worker, {"input": STORY_PROMPT, **ASK}).json()
        assert b1["session_id"] != a1["session_id"]
        a2 = execute(worker, {"input": TURNS[1], "session_id": a1["session_id"], **ASK}).json()
        assert a2["usage"]["cached_tokens"] == 0  # processed again from the stored turns
        # the next turn is warm again
        a3 = execute(worker, {"input": TURNS[2], "session_id": a1["session_id"], **ASK}).json()
        assert a3["usage"]["cached_tokens"] >= a2["usage"]["prompt_tokens"]
        # the rebuilt turn saw exactly what a client resending the transcript would send
        transcript = TURNS[0] + a1["result"] + TURNS[1]
        stateless = execute(worker, {"input": transcript, **ASK}).json()
        assert a2["usage"]["prompt_tokens"] == stateless["usage"]["prompt_tokens"]
        assert a2["result"] == stateless["result"]
    finally:
        worker.stop()


def test_an_evicted_session_resumes_from_its_cache_on_disk() -> None:
    settings = make_settings(parallel=1)
    kv_dir = settings.data_dir / "kv"
    worker = start_worker(settings)
    try:
        # long enough to be worth saving (short caches are cheaper to process again)
        first = LONG_PREAMBLE + TURNS[0]
        a1 = execute(worker, {"input": first, **ASK}).json()
        assert a1["usage"]["prompt_tokens"] >= KV_DISK_MIN_TOKENS
        b1 = execute(worker, {"input": TURNS[1].lstrip(), **ASK}).json()
        assert len(list(kv_dir.glob("*.kv"))) == 1  # A's cache went to disk when B took the slot
        a2 = execute(worker, {"input": TURNS[1], "session_id": a1["session_id"], **ASK}).json()
        # loaded back instead of processed again: only the new input was processed
        assert a2["usage"]["cached_tokens"] >= a1["usage"]["prompt_tokens"]
        transcript = first + a1["result"] + TURNS[1]
        stateless = execute(worker, {"input": transcript, **ASK}).json()
        assert a2["result"] == stateless["result"]
        # deleting the sessions deletes their saved caches
        for sid in (a1["session_id"], b1["session_id"], stateless["session_id"]):
            assert delete(worker, f"/v1/sessions/{sid}").status_code == 200
        time.sleep(0.2)
        assert list(kv_dir.glob("*.kv")) == []
    finally:
        worker.stop()


def _long_story(spec: GenerationSpec, prompt: str) -> list[str]:
    return [" and then"] * 200 if STORY_PROMPT in prompt else list(DEFAULT_ANSWER)


async def test_a_queued_streamed_request_whose_client_left_frees_its_session() -> None:
    # The fake engine (one slot, a slow story): this is the transport's and the queue's logic.
    worker = start_worker(
        make_settings(), FakeEngine(slots=1, token_delay=0.05, script=_long_story)
    )
    try:
        session_id = execute(worker, {"input": TURNS[0], **ASK})
        session_id = session_id.json()["session_id"]
        async with connect(worker.ws) as busy:
            # the only slot is taken; the session's next turn, streamed, has to wait
            await send(busy, {"input": STORY_PROMPT, "max_tokens": 200, "temperature": 0})
            assert (await recv_event(busy))["type"] == "session"
            body = {"input": TURNS[1], "session_id": session_id, "stream": True, **ASK}
            payload = json.dumps(body).encode()
            with socket.create_connection(("127.0.0.1", worker.settings.port)) as s:
                s.sendall(
                    b"POST /v1/execute HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    + b"Content-Type: application/json"
                    + f"\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                await asyncio.sleep(0.5)
                assert get(worker, "/ready").json()["queued"] == 1
            # the client left while queued: the queue and the session are free again
            deadline = time.monotonic() + 5
            while get(worker, "/ready").json()["queued"] != 0:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            await send(busy, {"type": "cancel"})
        again = execute(worker, {"input": TURNS[1], "session_id": session_id, **ASK})
        assert again.status_code == 200, again.text
        assert len(history(worker, session_id)["history"]) == 2
    finally:
        worker.stop()
