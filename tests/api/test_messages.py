"""Anthropic's Messages API driven by the official ``anthropic`` SDK against a live worker on
the embedded model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest
from pydantic import BaseModel

from gemma_worker.api.anthropic.errors import anthropic_error_body, anthropic_status
from gemma_worker.core.errors import ErrorCode, WorkerError
from tests.conftest import PARIS_PROMPT, RunningWorker, make_settings, start_worker

USER = [{"role": "user", "content": PARIS_PROMPT}]
GREEDY = {"temperature": 0}  # the 2.x SDK no longer has the parameter; raw clients send it
ADD = {
    "name": "add",
    "description": "Add two integers",
    "input_schema": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
}


@pytest.fixture(scope="module")
def ac(worker: RunningWorker) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=worker.http, api_key="unused", max_retries=0) as c:
        yield c


def test_create_answers_paris(ac: anthropic.Anthropic) -> None:
    m = ac.messages.create(model="gemma3:270m", max_tokens=8, messages=USER, extra_body=GREEDY)  # type: ignore[arg-type]
    assert m.id.startswith("msg_") and m.type == "message" and m.role == "assistant"
    assert m.model == "gemma-3-270m-q4_k_m"
    assert [b.type for b in m.content] == ["text"]
    assert m.content[0].text.strip()  # type: ignore[union-attr]  (a base model: chat is weak)
    assert m.stop_reason in ("end_turn", "max_tokens") and m.usage.output_tokens > 0
    assert m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0) > 5


def test_stream_text_joins_to_the_whole_answer(ac: anthropic.Anthropic) -> None:
    args: dict[str, Any] = {"model": "m", "max_tokens": 40, "messages": USER, "extra_body": GREEDY}
    whole = ac.messages.create(**args)
    events: list[str] = []
    with ac.messages.stream(**args) as s:
        for event in s:
            events.append(event.type)
        final = s.get_final_message()
    streamed = "".join(b.text for b in final.content if b.type == "text")
    assert streamed == whole.content[0].text  # type: ignore[union-attr]
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens
    raw = [e for e in events if e not in ("text",)]  # the SDK adds "text" helper events
    assert raw[0] == "message_start" and raw[-1] == "message_stop"
    assert {"content_block_start", "content_block_delta", "content_block_stop"} <= set(raw)
    assert raw[-2] == "message_delta"


def test_raw_stream_has_anthropics_named_events(worker: RunningWorker) -> None:
    body = {"model": "m", "max_tokens": 5, "messages": USER, "stream": True, **GREEDY}
    with httpx.stream("POST", f"{worker.http}/v1/messages", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    names = [line[len("event: ") :] for line in text.splitlines() if line.startswith("event: ")]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    datas = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    assert [d["type"] for d in datas] == names
    assert datas[0]["message"]["usage"]["input_tokens"] > 0
    assert datas[-2]["delta"]["stop_reason"] == "max_tokens"
    assert datas[-2]["usage"]["output_tokens"] == 5


def test_stop_sequences_report_which_one(ac: anthropic.Anthropic) -> None:
    m = ac.messages.create(
        model="m",
        max_tokens=40,
        messages=[{"role": "user", "content": "Count: 1, 2, 3, 4, 5, 6, 7, 8"}],
        stop_sequences=["5", "7"],
        extra_body=GREEDY,
    )
    if m.stop_reason == "stop_sequence":
        assert m.stop_sequence in ("5", "7")
        assert m.stop_sequence not in m.content[0].text  # type: ignore[union-attr]
    else:  # the base model wandered off without writing either: a length or an end of turn
        assert m.stop_sequence is None


class City(BaseModel):
    name: str
    country: str


def test_parse_returns_a_pydantic_object(ac: anthropic.Anthropic) -> None:
    m = ac.messages.parse(
        model="m",
        max_tokens=80,
        messages=[{"role": "user", "content": "Name the capital of France as JSON."}],
        output_format=City,
        extra_body=GREEDY,
    )
    assert isinstance(m.parsed_output, City)
    jsonschema.validate(json.loads(m.content[0].text), City.model_json_schema())  # type: ignore[union-attr]


def test_tool_use_round_trip_with_a_tool_result(ac: anthropic.Anthropic) -> None:
    question = {"role": "user", "content": "Add 2 and 3."}
    first = ac.messages.create(
        model="m",
        max_tokens=100,
        messages=[question],  # type: ignore[list-item]
        tools=[ADD],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "add"},
        extra_body=GREEDY,
    )
    assert first.stop_reason == "tool_use"
    calls = [b for b in first.content if b.type == "tool_use"]
    assert len(calls) == 1 and calls[0].id.startswith("toolu_") and calls[0].name == "add"
    jsonschema.validate(calls[0].input, ADD["input_schema"])
    follow = ac.messages.create(
        model="m",
        max_tokens=30,
        messages=[
            question,  # type: ignore[list-item]
            {"role": "assistant", "content": [c.model_dump() for c in first.content]},  # type: ignore[misc]
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": calls[0].id, "content": "5"}],
            },
        ],
        tools=[ADD],  # type: ignore[list-item]
        tool_choice={"type": "none"},
        extra_body=GREEDY,
    )
    assert follow.stop_reason in ("end_turn", "max_tokens")
    assert [b.type for b in follow.content] == ["text"]


def test_streamed_tool_use_sends_input_json_deltas(ac: anthropic.Anthropic) -> None:
    with ac.messages.stream(
        model="m",
        max_tokens=100,
        messages=[{"role": "user", "content": "Add 2 and 3."}],
        tools=[ADD],  # type: ignore[list-item]
        tool_choice={"type": "any"},
        extra_body=GREEDY,
    ) as s:
        partial = [e.partial_json for e in s if e.type == "input_json"]  # type: ignore[union-attr]
        final = s.get_final_message()
    call = next(b for b in final.content if b.type == "tool_use")
    assert partial and json.loads("".join(partial)) == call.input
    assert final.stop_reason == "tool_use"


def test_count_tokens_equals_the_input_of_the_answer() -> None:
    w = start_worker(make_settings())  # its own worker: no earlier prompt in its prefix cache
    try:
        with anthropic.Anthropic(base_url=w.http, api_key="unused", max_retries=0) as c:
            args: dict[str, Any] = {
                "model": "m",
                "system": "You answer in one word.",
                "messages": [{"role": "user", "content": "Add 2 and 3."}],
                "tools": [ADD],
            }
            counted = c.messages.count_tokens(**args).input_tokens
            m = c.messages.create(max_tokens=20, extra_body=GREEDY, **args)
            assert counted == m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0)
            assert m.usage.cache_read_input_tokens == 0 and counted > 30
    finally:
        w.stop()


def test_missing_max_tokens_is_a_bad_request(ac: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        ac.post(
            "/v1/messages", cast_to=anthropic.types.Message, body={"model": "m", "messages": USER}
        )
    assert caught.value.status_code == 400
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "max_tokens" in caught.value.body["error"]["message"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"messages": []}, "messages"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
            "messages[0].content[0]",
        ),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
        ({"tool_choice": {"type": "tool", "name": "nope"}, "tools": [ADD]}, "tool_choice.name"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"tool_choice": {"type": "any"}}, "tool_choice"),
        ({"messages": [*USER, {"role": "assistant", "content": "Paris"}]}, "messages[1]"),
    ],
)
def test_bad_requests_are_400_in_anthropics_shape(
    worker: RunningWorker, body: dict[str, Any], named: str
) -> None:
    r = httpx.post(
        f"{worker.http}/v1/messages",
        json={"model": "m", "max_tokens": 5, "messages": USER, **body},
        timeout=30,
    )
    assert r.status_code == 400, r.text
    out = r.json()
    assert out["type"] == "error" and out["error"]["type"] == "invalid_request_error"
    assert named in out["error"]["message"] and "Traceback" not in r.text


def test_wrong_key_is_an_authentication_error() -> None:
    w = start_worker(make_settings(api_keys=["right-key-0123456789abcdef"]))
    try:
        with (
            anthropic.Anthropic(base_url=w.http, api_key="wrong", max_retries=0) as c,
            pytest.raises(anthropic.AuthenticationError),
        ):
            c.messages.create(model="m", max_tokens=5, messages=USER)  # type: ignore[arg-type]
        with anthropic.Anthropic(
            base_url=w.http, api_key="right-key-0123456789abcdef", max_retries=0
        ) as c:  # sent as x-api-key, with anthropic-version
            m = c.messages.create(model="m", max_tokens=3, messages=USER)  # type: ignore[arg-type]
            assert m.usage.output_tokens > 0
    finally:
        w.stop()


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("INVALID_REQUEST", 400, "invalid_request_error"),
        ("UNAUTHORIZED", 401, "authentication_error"),
        ("FORBIDDEN", 403, "permission_error"),
        ("MODEL_NOT_FOUND", 404, "not_found_error"),
        ("PAYLOAD_TOO_LARGE", 413, "request_too_large"),
        ("RATE_LIMITED", 429, "rate_limit_error"),
        ("OVERLOADED", 529, "overloaded_error"),
        ("INTERNAL_ERROR", 500, "api_error"),
    ],
)
def test_errors_take_anthropics_status_and_type(code: str, status: int, kind: str) -> None:
    """The status codes the SDK maps to its classes (529: ``OverloadedError``)."""
    exc = WorkerError(ErrorCode(code), "message")
    assert anthropic_status(exc) == status
    assert anthropic_error_body(exc) == {
        "type": "error",
        "error": {"type": kind, "message": "message"},
    }


def test_fields_the_sdk_may_send_are_accepted_and_a_resend_reads_the_cache(
    ac: anthropic.Anthropic, wait_idle: None
) -> None:
    system = [
        {"type": "text", "text": "You are a terse assistant for system administrators. " * 6},
        {"type": "text", "text": "Answer in one line.", "cache_control": {"type": "ephemeral"}},
    ]
    args: dict[str, Any] = {
        "model": "m",
        "max_tokens": 4,
        "system": system,
        "messages": USER,
        "metadata": {"user_id": "someone"},
        "service_tier": "auto",
        "extra_body": {
            **GREEDY,
            "thinking": {"type": "disabled"},
            "speed": "fast",
            "cache_control": {"type": "ephemeral"},
        },
    }
    first = ac.messages.create(**args)
    again = ac.messages.create(**args)
    assert again.content[0].text == first.content[0].text  # type: ignore[union-attr]
    assert (again.usage.cache_read_input_tokens or 0) > 32
    total = first.usage.input_tokens + (first.usage.cache_read_input_tokens or 0)
    assert again.usage.input_tokens + (again.usage.cache_read_input_tokens or 0) == total
