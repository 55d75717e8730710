"""The plain ASGI JSON routes: FastAPI's content-type rule, errors through the app's handlers,
an answer that stands, and their OpenAPI entries."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
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
