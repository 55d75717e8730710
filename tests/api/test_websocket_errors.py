"""Bad input on ``/ws``: a clear error event, and the connection stays usable."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.api.wsclient import connect, recv_event, run_request, send
from tests.conftest import PARIS_PROMPT, RunningWorker

pytestmark = pytest.mark.usefixtures("wait_idle")

BAD_MESSAGES: list[tuple[str, Any, str]] = [
    ("not json", "this is not json", "INVALID_JSON"),
    ("json array", [1, 2, 3], "INVALID_JSON"),
    ("json string", '"just a string"', "INVALID_JSON"),
    ("missing input", {"max_tokens": 5}, "INVALID_REQUEST"),
    ("empty input", {"input": ""}, "INVALID_REQUEST"),
    ("input wrong type", {"input": 42}, "INVALID_REQUEST"),
    ("max_tokens zero", {"input": "x", "max_tokens": 0}, "INVALID_REQUEST"),
    ("max_tokens negative", {"input": "x", "max_tokens": -5}, "INVALID_REQUEST"),
    ("max_tokens over cap", {"input": "x", "max_tokens": 10_000_000}, "INVALID_REQUEST"),
    ("max_tokens string", {"input": "x", "max_tokens": "5"}, "INVALID_REQUEST"),
    ("temperature negative", {"input": "x", "temperature": -1}, "INVALID_REQUEST"),
    ("temperature NaN", '{"input": "x", "temperature": NaN}', "INVALID_JSON"),
    ("temperature string", {"input": "x", "temperature": "hot"}, "INVALID_REQUEST"),
    ("top_p zero", {"input": "x", "top_p": 0}, "INVALID_REQUEST"),
    ("top_p above one", {"input": "x", "top_p": 1.01}, "INVALID_REQUEST"),
    ("stop not a list", {"input": "x", "stop": "END"}, "INVALID_REQUEST"),
    ("stop not strings", {"input": "x", "stop": [1, 2]}, "INVALID_REQUEST"),
    ("input over max_input_chars", {"input": "a" * 300_000}, "INVALID_REQUEST"),
    ("unknown type", {"type": "launch_missiles", "request_id": "u1"}, "INVALID_REQUEST"),
    ("cancel unknown id", {"type": "cancel", "request_id": "nope"}, "INVALID_REQUEST"),
    ("unknown session", {"input": "x", "session_id": "s-42"}, "SESSION_NOT_FOUND"),
    ("blank system", {"input": "x", "system": ""}, "INVALID_REQUEST"),
]


def _leaks(text: str) -> bool:
    return any(s in text for s in ("Traceback", "/work/", "site-packages", ".py", " at 0x"))


async def test_bad_messages_get_errors_and_connection_survives(worker: RunningWorker) -> None:
    async with connect(worker.ws, max_size=None) as ws:
        for name, message, code in BAD_MESSAGES:
            await send(ws, message if isinstance(message, str) else json.dumps(message))
            event = await recv_event(ws)
            assert event["type"] == "error", name
            assert event["code"] == code, (name, event)
            assert event["error"], name
            assert not _leaks(json.dumps(event)), (name, event)
        events = await run_request(ws, {"input": PARIS_PROMPT, "max_tokens": 8, "temperature": 0})
        assert events[-1]["type"] == "result"
        assert "Paris" in events[-1]["content"]


async def test_error_echoes_request_id(worker: RunningWorker) -> None:
    async with connect(worker.ws) as ws:
        await send(ws, {"input": "", "request_id": "mine"})
        event = await recv_event(ws)
    assert event == {**event, "type": "error", "request_id": "mine"}


async def test_prompt_longer_than_context_is_context_overflow(worker: RunningWorker) -> None:
    n_ctx = worker.settings.n_ctx
    async with connect(worker.ws) as ws:
        events = await run_request(ws, {"input": "word " * (n_ctx + 50), "max_tokens": 16})
        error = events[-1]
        assert error["type"] == "error"
        assert error["code"] == "CONTEXT_OVERFLOW"
        assert error["n_ctx"] == n_ctx
        assert error["n_prompt_tokens"] > n_ctx
        # prompt fits, prompt + max_tokens does not
        events = await run_request(ws, {"input": "word " * (n_ctx - 100), "max_tokens": 200})
        assert events[-1]["code"] == "CONTEXT_OVERFLOW"
        events = await run_request(ws, {"input": PARIS_PROMPT, "max_tokens": 2})
        assert events[-1]["type"] == "result"


async def test_bad_input_does_not_disturb_another_client(worker: RunningWorker) -> None:
    async with connect(worker.ws) as good, connect(worker.ws) as bad:
        await send(good, {"input": PARIS_PROMPT, "max_tokens": 30, "request_id": "good"})
        for _ in range(5):
            await send(bad, "{{{{")
            assert (await recv_event(bad))["code"] == "INVALID_JSON"
        while True:
            event = await recv_event(good)
            if event["type"] in {"result", "error"}:
                break
        assert event["type"] == "result"
        assert event["usage"]["completion_tokens"] == 30
