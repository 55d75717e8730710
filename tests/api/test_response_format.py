"""``response_format`` on the house protocol (``/v1/execute`` and ``/ws``), real model."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema

from tests.api.wsclient import connect, run_request
from tests.conftest import RunningWorker

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "country": {"type": "string", "enum": ["France", "Italy", "Spain"]},
        "population_millions": {"type": "number"},
    },
    "required": ["city", "country", "population_millions"],
    "additionalProperties": False,
}
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}}
PROMPT = "The capital of France as JSON:"
JSON_PROMPT = (
    'Question: What is the capital of France? Reply with JSON like {"capital": "..."}\nAnswer:'
)


def execute_json(worker: RunningWorker, response_format: dict[str, Any]) -> httpx.Response:
    body = {
        "input": JSON_PROMPT,
        "max_tokens": 120,
        "temperature": 0,
        "response_format": response_format,
    }
    return httpx.post(f"{worker.http}/v1/execute", json=body, timeout=60)


def test_rest_json_schema_answer_validates(worker: RunningWorker) -> None:
    r = execute_json(worker, SCHEMA_FORMAT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["finish_reason"] == "stop"
    jsonschema.validate(json.loads(body["result"]), SCHEMA)


def test_rest_json_object(worker: RunningWorker) -> None:
    r = execute_json(worker, {"type": "json_object"})
    assert r.status_code == 200, r.text
    assert r.json()["finish_reason"] == "stop"
    assert isinstance(json.loads(r.json()["result"]), dict)


def test_rest_unenforceable_schema_is_422_naming_the_keyword(worker: RunningWorker) -> None:
    bad = {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "object", "not": {}}},
    }
    r = httpx.post(
        f"{worker.http}/v1/execute",
        json={"input": PROMPT, "response_format": bad},
        timeout=60,
    )
    assert r.status_code == 422
    assert r.json()["code"] == "INVALID_REQUEST"
    assert "'not'" in r.json()["error"]


async def test_ws_json_schema_stream_and_a_bad_format_on_one_connection(
    worker: RunningWorker,
) -> None:
    async with connect(worker.ws) as ws:
        bad = await run_request(
            ws, {"input": PROMPT, "response_format": {"type": "yaml"}, "request_id": "bad"}
        )
        assert bad[-1]["type"] == "error" and bad[-1]["code"] == "INVALID_REQUEST"
        assert "response_format" in bad[-1]["error"]
        events = await run_request(
            ws,
            {
                "input": PROMPT,
                "max_tokens": 120,
                "temperature": 0.7,
                "seed": 3,
                "response_format": SCHEMA_FORMAT,
            },
        )
    result = events[-1]
    assert result["type"] == "result", result
    tokens = "".join(e["content"] for e in events if e["type"] == "token")
    assert tokens == result["content"]
    jsonschema.validate(json.loads(result["content"]), SCHEMA)
