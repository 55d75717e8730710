"""API keys on every route, over REST and WebSocket, against a real worker."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from starlette.routing import Route, WebSocketRoute
from websockets.exceptions import ConnectionClosed

from gemma_worker.api.app import create_app
from gemma_worker.core.auth import KeyConfigError
from tests.api.wsclient import connect, recv_event, run_request, send
from tests.conftest import PARIS_PROMPT, RunningWorker, make_settings, start_worker

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-fedcba9876543210"
KEY_HASHED = "key-c-hashed-in-the-file-000"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningWorker]:
    key_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    digest = hashlib.sha256(KEY_HASHED.encode()).hexdigest()
    key_file.write_text(f"# worker keys\n{KEY_B}\n\nsha256:{digest}\n")
    w = start_worker(
        make_settings(
            parallel=2, api_keys=[KEY_A], api_key_file=key_file, ws_auth_timeout_seconds=1.0
        )
    )
    yield w
    w.stop()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def call(worker: RunningWorker, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, f"{worker.http}{path}", timeout=60, **kw)


def concrete(path: str) -> str:
    return (
        path.replace("{session_id}", "no-such-session")
        .replace("{model_id:path}", "no-such-model")
        .replace("{response_id}", "resp_nosuchresponse")
    )


#: A valid body for each POST route (the house request for the rest).
BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
    "/v1/completions": {"prompt": PARIS_PROMPT, "max_tokens": 2},
    "/tokenize": {"content": "Hi"},
    "/detokenize": {"tokens": [2, 3]},
    "/api/generate": {"prompt": PARIS_PROMPT, "options": {"num_predict": 2}, "stream": False},
    "/api/chat": {"messages": [{"role": "user", "content": "Hi"}], "options": {"num_predict": 2}},
    "/api/show": {"model": "gemma3"},
    "/v1/messages": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
    "/v1/messages/count_tokens": {"messages": [{"role": "user", "content": "Hi"}]},
    "/v1/responses": {"input": "Hi", "max_output_tokens": 2},
    "/v1/responses/input_tokens": {"input": "Hi"},
    "/models/load": {"model": "gemma3:270m"},
    "/models/unload": {"model": "gemma3:270m"},
}
#: Routes an inference key may not use (they need an admin key).
ADMIN_ONLY = {"/models/load", "/models/unload"}


def error_code(response: httpx.Response) -> str:
    """The code of a house, OpenAI, Anthropic or Ollama error body (Ollama's has only a
    message, Anthropic's a type)."""
    body = response.json()
    if body.get("type") == "error":
        kind = body["error"]["type"]
        return "UNAUTHORIZED" if kind == "authentication_error" else str(kind)
    if isinstance(body.get("error"), str) and "code" not in body:
        return "UNAUTHORIZED" if "API key" in body["error"] else body["error"]
    code = body["error"]["code"] if isinstance(body.get("error"), dict) else body["code"]
    return str(code)


def every_http_route(worker: RunningWorker) -> list[tuple[str, str]]:
    """(method, path) of every HTTP route the app serves, included routers flattened."""
    found: list[tuple[str, str]] = []

    def walk(routes: list[Any]) -> None:
        for route in routes:
            if hasattr(route, "original_router"):  # FastAPI's wrapper of an included router
                walk(route.original_router.routes)
            elif isinstance(route, APIRoute | Route) and not isinstance(route, WebSocketRoute):
                found.extend((m, route.path) for m in sorted(route.methods or ()) if m != "HEAD")

    walk(worker.server.config.app.routes)  # type: ignore[attr-defined]
    return found


def test_every_route_but_health_ready_and_the_page_needs_a_key(keyed: RunningWorker) -> None:
    routes = every_http_route(keyed)
    paths = {p for _, p in routes}
    # the list really comes from the app: docs, schema, metrics and sessions are in it
    assert {"/docs", "/openapi.json", "/metrics", "/v1/execute", "/v1/sessions"} <= paths
    house = {"input": PARIS_PROMPT, "max_tokens": 2}
    for method, path in routes:
        kw: dict[str, Any] = {"json": BODIES.get(path, house)} if method == "POST" else {}
        anonymous = call(keyed, method, concrete(path), **kw)
        if path in {"/health", "/ready"}:
            assert anonymous.status_code == 200, path
            continue
        if path.startswith("/ui"):  # the chat page's static files: it asks for the key
            assert anonymous.status_code in {200, 308, 404}, path
            continue
        assert anonymous.status_code == 401, (method, path)
        assert error_code(anonymous) in {"UNAUTHORIZED", "invalid_api_key"}
        assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = call(keyed, method, concrete(path), headers=auth("not-a-valid-key-000000"), **kw)
        assert wrong.status_code == 401, (method, path)
        wrong_x = call(
            keyed, method, concrete(path), headers={"x-api-key": "not-valid-0000000"}, **kw
        )
        assert wrong_x.status_code == 401, (method, path)
        expected = 404 if "{" in path else 403 if path in ADMIN_ONLY else 200
        for header in (auth(KEY_A), {"x-api-key": KEY_B}):  # Anthropic's header too
            allowed = call(keyed, method, concrete(path), headers=header, **kw)
            assert allowed.status_code == expected, (method, path, header, allowed.text)


def test_keys_from_the_file_plain_and_hashed(keyed: RunningWorker) -> None:
    for key in (KEY_B, KEY_HASHED):
        r = call(keyed, "GET", "/v1/sessions", headers=auth(key))
        assert r.status_code == 200
    # the digest itself is not a key
    digest = hashlib.sha256(KEY_HASHED.encode()).hexdigest()
    assert call(keyed, "GET", "/v1/sessions", headers=auth(digest)).status_code == 401


def test_a_key_in_the_url_is_not_accepted(keyed: RunningWorker) -> None:
    for query in (f"?api_key={KEY_A}", f"?token={KEY_A}", f"?key={KEY_A}"):
        assert call(keyed, "GET", f"/v1/sessions{query}").status_code == 401


def test_sessions_belong_to_their_key(keyed: RunningWorker) -> None:
    body = {"input": PARIS_PROMPT, "max_tokens": 2, "temperature": 0}
    made = call(keyed, "POST", "/v1/execute", json=body, headers=auth(KEY_A))
    session_id = made.json()["session_id"]
    other = auth(KEY_B)
    again = {**body, "session_id": session_id}
    for method, path, kw in (
        ("POST", "/v1/execute", {"json": again}),
        ("GET", f"/v1/sessions/{session_id}", {}),
        ("DELETE", f"/v1/sessions/{session_id}", {}),
    ):
        r = call(keyed, method, path, headers=other, **kw)
        assert r.status_code == 404, (method, path)
        assert r.json()["code"] == "SESSION_NOT_FOUND"
    listed = call(keyed, "GET", "/v1/sessions", headers=other).json()["sessions"]
    assert session_id not in [s["id"] for s in listed]
    # the owner still has it, untouched
    mine = call(keyed, "GET", f"/v1/sessions/{session_id}", headers=auth(KEY_A))
    assert mine.status_code == 200 and mine.json()["turns"] == 1


async def test_websocket_with_the_header(keyed: RunningWorker) -> None:
    async with connect(keyed.ws, additional_headers=auth(KEY_A)) as ws:
        events = await run_request(ws, {"input": PARIS_PROMPT, "max_tokens": 2})
    assert events[-1]["type"] == "result"


async def test_websocket_with_the_x_api_key_header(keyed: RunningWorker) -> None:
    async with connect(keyed.ws, additional_headers={"x-api-key": KEY_B}) as ws:
        events = await run_request(ws, {"input": PARIS_PROMPT, "max_tokens": 2})
    assert events[-1]["type"] == "result"
    async with connect(keyed.ws, additional_headers={"x-api-key": "not-valid-0000000"}) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await recv_event(ws, wait_s=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def test_the_default_worker_id_goes_only_to_callers_with_a_key(keyed: RunningWorker) -> None:
    """It is the machine's host name and port: not for a 401, nor a keyless /health probe."""
    name = keyed.settings.replica_name
    assert call(keyed, "GET", "/health").status_code == 200
    for r in (
        call(keyed, "GET", "/health"),
        call(keyed, "GET", "/ready"),
        call(keyed, "GET", "/v1/models"),
        call(keyed, "GET", "/v1/models", headers=auth("not-a-valid-key-000000")),
        call(keyed, "GET", "/ui/"),
    ):
        assert "X-Worker-Id" not in r.headers, r.url
    for r in (
        call(keyed, "GET", "/health", headers=auth(KEY_A)),
        call(keyed, "GET", "/v1/models", headers={"x-api-key": KEY_B}),
    ):
        assert r.headers["X-Worker-Id"] == name


def test_a_configured_worker_id_is_public() -> None:
    w = start_worker(make_settings(parallel=1, api_keys=[KEY_A], worker_id="replica-7"))
    try:
        for r in (call(w, "GET", "/health"), call(w, "GET", "/v1/models")):
            assert r.headers["X-Worker-Id"] == "replica-7"
    finally:
        w.stop()


async def test_websocket_with_an_auth_message(keyed: RunningWorker) -> None:
    async with connect(keyed.ws) as ws:
        await send(ws, {"type": "auth", "token": KEY_B})
        events = await run_request(ws, {"input": PARIS_PROMPT, "max_tokens": 2})
    assert events[-1]["type"] == "result"


@pytest.mark.parametrize(
    "first",
    [
        None,  # says nothing: closed when the auth timeout passes
        {"type": "auth", "token": "wrong-key-0000000000"},
        {"input": PARIS_PROMPT},  # a request before authenticating
        "not json",
    ],
)
async def test_websocket_without_auth_is_closed_1008(
    keyed: RunningWorker, first: dict[str, str] | str | None
) -> None:
    async with connect(keyed.ws) as ws:
        if first is not None:
            await send(ws, first if isinstance(first, str) else json.dumps(first))
        with pytest.raises(ConnectionClosed) as closed:
            await recv_event(ws, wait_s=5)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008


async def test_websocket_with_a_wrong_header_is_closed_1008(keyed: RunningWorker) -> None:
    async with connect(keyed.ws, additional_headers=auth("wrong-key-0000000000")) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await recv_event(ws, wait_s=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_keys_never_reach_the_logs(
    keyed: RunningWorker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    call(keyed, "GET", "/v1/sessions", headers=auth("wrong-key-0000000000"))
    call(keyed, "POST", "/v1/execute", json={"input": "Hi", "max_tokens": 2}, headers=auth(KEY_A))
    async with connect(keyed.ws) as ws:
        await send(ws, {"type": "auth", "token": KEY_B})
        await run_request(ws, {"input": "Hi", "max_tokens": 2})
    await asyncio.sleep(0.2)
    server_side = [r for r in caplog.records if not r.name.startswith("websockets.client")]
    text = "".join(f"{r.getMessage()} {r.__dict__}" for r in server_side)
    assert server_side  # the requests were logged, at DEBUG level even...
    for secret in (KEY_A, KEY_B, "wrong-key-0000000000"):
        assert secret not in text  # ...without any key


def test_keys_must_be_long_enough(tmp_path: Path) -> None:
    with pytest.raises(KeyConfigError) as info:
        create_app(make_settings(api_keys=["short"]))
    assert "short" not in str(info.value)


async def test_a_token_that_is_not_valid_unicode_is_closed_1008(keyed: RunningWorker) -> None:
    async with connect(keyed.ws) as ws:
        await send(ws, '{"type": "auth", "token": "\\ud800abcdefghijklmnopq"}')
        with pytest.raises(ConnectionClosed) as closed:
            await recv_event(ws, wait_s=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [("https://evil.example", False), ("http://localhost:5173", True), (None, True)],
)
async def test_browser_origins_on_the_websocket(
    worker: RunningWorker, origin: str | None, allowed: bool
) -> None:
    async with connect(worker.ws, origin=origin) as ws:  # type: ignore[arg-type]
        if allowed:
            assert (await run_request(ws, {"input": "Hi", "max_tokens": 1}))[-1]["type"] == "result"
        else:
            with pytest.raises(ConnectionClosed) as closed:
                await recv_event(ws, wait_s=5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_clients_still_authenticating_cannot_crowd_out_others(
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "keys.txt"
    key_file.write_text("\ufeff" + KEY_A + "\n", encoding="utf-8")  # a BOM, as some editors write
    w = start_worker(
        make_settings(
            parallel=1, api_key_file=key_file, max_connections=2, ws_auth_timeout_seconds=3
        )
    )
    try:
        async with connect(w.ws) as p1, connect(w.ws), connect(w.ws) as p3:
            # two wait for their auth message; a third waiting one is over the cap
            with pytest.raises(ConnectionClosed) as closed:
                await recv_event(p3, wait_s=5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
            # an authenticated client still gets in, and the waiting ones can still log in
            async with connect(w.ws, additional_headers=auth(KEY_A)) as ws:
                events = await run_request(ws, {"input": "Hi", "max_tokens": 1})
                assert events[-1]["type"] == "result"
            await send(p1, {"type": "auth", "token": KEY_A})
            assert (await run_request(p1, {"input": "Hi", "max_tokens": 1}))[-1]["type"] == "result"
    finally:
        w.stop()
