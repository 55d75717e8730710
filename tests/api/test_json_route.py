"""The plain ASGI JSON routes: FastAPI's content-type rule, errors through the app's handlers,
an answer that stands, and their OpenAPI entries."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from gemma_worker.api.errors import install_error_handlers
from gemma_worker.api.json_route import Call, Handler, JsonRoute, is_json_type, mount
from gemma_worker.core.errors import ErrorCode, WorkerError


@pytest.mark.parametrize(
    ("content_type", "json"),
    [
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        ("application/vnd.api+json", True),
        ("application/x-www-form-urlencoded", False),
        ("text/plain", False),
        ("text/json", False),
        ("multipart/form-data; boundary=x", False),
        ("", False),
        (None, False),
    ],
)
def test_json_content_types(content_type: str | None, json: bool) -> None:
    assert is_json_type(content_type) is json


class _Body(BaseModel):
    text: str


def _app(handler: Handler[_Body]) -> FastAPI:
    app = FastAPI()
    app.state.worker = None  # the handlers below do not use it
    install_error_handlers(app)
    mount(app, [JsonRoute("/v1/embeddings", _Body, handler, summary="Echo", tag="test")])
    return app


async def test_an_answer_stands_when_the_handler_fails_after_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(call: Call[_Body]) -> None:
        await call.answer({"echo": call.body.text})
        raise RuntimeError("accounting broke")

    transport = httpx.ASGITransport(app=_app(handler))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        r = await client.post("/v1/embeddings", json={"text": "hi"})
    assert r.status_code == 200 and r.json() == {"echo": "hi"}
    assert "failed after answering" in caplog.text


async def test_errors_before_the_answer_go_to_the_apps_handlers() -> None:
    async def handler(call: Call[_Body]) -> None:
        raise WorkerError(ErrorCode.INVALID_REQUEST, "text: no", param="text")

    transport = httpx.ASGITransport(app=_app(handler))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        refused = await client.post("/v1/embeddings", json={"text": "hi"})
        invalid = await client.post("/v1/embeddings", json={"text": 3})
        wrong_method = await client.get("/v1/embeddings")
        schema = (await client.get("/openapi.json")).json()
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "text"
    assert invalid.status_code == 400 and invalid.json()["error"]["param"] == "text"
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
    operation = schema["paths"]["/v1/embeddings"]["post"]
    assert operation["summary"] == "Echo"
    assert operation["requestBody"]["content"]["application/json"]["schema"]["required"] == ["text"]


class _Seen:
    """A middleware that records the paths it saw (the app's own, around every route)."""

    def __init__(self, app: Any, seen: list[str]) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.seen.append(f"{scope['method']} {scope['path']}")
        await self.app(scope, receive, send)


async def test_a_post_runs_through_the_apps_middlewares_but_not_fastapis_router() -> None:
    scopes: list[dict[str, Any]] = []

    async def handler(call: Call[_Body]) -> None:
        scopes.append(dict(call.scope))
        await call.answer({"echo": call.body.text})

    seen: list[str] = []
    app = FastAPI()
    app.state.worker = None
    app.add_middleware(_Seen, seen=seen)
    install_error_handlers(app)
    mount(app, [JsonRoute("/v1/embeddings", _Body, handler, summary="Echo", tag="test")])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        r = await client.post("/v1/embeddings", json={"text": "hi"})
        wrong_method = await client.put("/v1/embeddings", json={"text": "hi"})
    assert r.status_code == 200 and r.json() == {"echo": "hi"}
    assert wrong_method.status_code == 405
    assert seen == ["POST /v1/embeddings", "PUT /v1/embeddings"]
    # The route is named for the metrics; FastAPI's router never saw the request.
    assert all(s["route"].path == "/v1/embeddings" for s in scopes)
    assert all("router" not in s for s in scopes)


async def test_a_request_under_a_root_path_takes_the_full_stack() -> None:
    scopes: list[dict[str, Any]] = []

    async def handler(call: Call[_Body]) -> None:
        scopes.append(dict(call.scope))
        await call.answer({"echo": call.body.text})

    app = _app(handler)
    transport = httpx.ASGITransport(app=app, root_path="/proxy")
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        r = await client.post("/proxy/v1/embeddings", json={"text": "hi"})
    assert r.status_code == 200 and r.json() == {"echo": "hi"}
    assert "router" in scopes[0]  # matched by the app's router, which knows root paths


async def test_unexpected_and_http_errors_are_answered_in_the_dialect() -> None:
    async def broken(call: Call[_Body]) -> None:
        if call.body.text == "http":
            raise HTTPException(status_code=409, detail="busy here")
        raise RuntimeError("/secret/path/model.gguf exploded")

    transport = httpx.ASGITransport(app=_app(broken), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        crashed = await client.post("/v1/embeddings", json={"text": "boom"})
        http = await client.post("/v1/embeddings", json={"text": "http"})
    assert crashed.status_code == 500
    assert crashed.json()["error"]["code"] == "internal_error"
    assert "secret" not in crashed.text
    assert http.status_code == 409 and http.json()["error"]["message"] == "busy here"

    # The unexpected one is raised on to the server too (which logs it), as Starlette does.
    transport = httpx.ASGITransport(app=_app(broken))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        with pytest.raises(RuntimeError, match="exploded"):
            await client.post("/v1/embeddings", json={"text": "boom"})


async def test_routes_are_mounted_before_the_first_request() -> None:
    app = _app(lambda call: call.answer({}))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        await client.get("/openapi.json")
    with pytest.raises(RuntimeError, match="before the app's first request"):
        mount(app, [JsonRoute("/late", _Body, lambda call: call.answer({}), summary="", tag="")])


class _Refuse:
    """A middleware that answers 401 itself on ``/v1/embeddings`` (as the key check does), or
    breaks (a bug in a middleware)."""

    def __init__(self, app: Any, seen_routes: list[Any], broken: bool = False) -> None:
        self.app = app
        self.seen_routes = seen_routes
        self.broken = broken

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.broken:
            raise RuntimeError("/secret/middleware bug")
        await send({"type": "http.response.start", "status": 401, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        self.seen_routes.append(scope.get("route"))


async def test_a_refused_request_is_not_labelled_with_the_route() -> None:
    routes: list[Any] = []
    app = _app(lambda call: call.answer({}))
    app.add_middleware(_Refuse, seen_routes=routes)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        r = await client.post("/v1/embeddings", json={"text": "hi"})
    assert r.status_code == 401
    assert routes == [None]  # the HTTP metrics call it "unmatched", as for any other path


async def test_a_broken_middleware_gets_the_apps_500_in_the_dialect() -> None:
    app = _app(lambda call: call.answer({}))
    app.add_middleware(_Refuse, seen_routes=[], broken=True)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        r = await client.post("/v1/embeddings", json={"text": "hi"})
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert "secret" not in r.text
