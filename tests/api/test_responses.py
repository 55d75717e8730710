"""OpenAI's Responses API driven by the official ``openai`` SDK and the OpenAI Agents SDK
against a live worker on the embedded model."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel

from tests.conftest import PARIS_PROMPT, RunningWorker, make_settings, start_worker

ADD = {
    "type": "function",
    "name": "add",
    "description": "Add two integers",
    "parameters": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
}
#: Long enough (over 32 tokens) that a second turn's prompt reuses the first's cache.
LONG_QUESTION = (
    "You are a geography assistant for travellers who plan trips around Europe and need short, "
    "precise answers about capitals, rivers and borders. " * 2 + PARIS_PROMPT
)


@pytest.fixture(scope="module")
def oa(worker: RunningWorker) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{worker.http}/v1", api_key="unused", max_retries=0) as c:
        yield c


def test_create_gives_openais_response_object(oa: openai.OpenAI) -> None:
    r = oa.responses.create(model="m", input=PARIS_PROMPT, max_output_tokens=6, temperature=0)
    assert r.id.startswith("resp_") and r.object == "response"
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    message = r.output[0]
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "output_text"  # type: ignore[union-attr]
    assert r.output_text == message.content[0].text and r.output_text  # type: ignore[union-attr]
    assert r.usage is not None and r.usage.output_tokens == 6
    assert r.usage.total_tokens == r.usage.input_tokens + 6
    assert r.model == "gemma-3-270m-q4_k_m" and r.store is True


def test_streamed_events_come_in_the_documented_order(oa: openai.OpenAI) -> None:
    events = list(
        oa.responses.create(model="m", input=PARIS_PROMPT, max_output_tokens=5, stream=True)
    )
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert events[-4].text == text  # type: ignore[union-attr]
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == text and final.usage.output_tokens == 5


def test_previous_response_id_continues_with_the_cached_prefix(
    oa: openai.OpenAI, wait_idle: None
) -> None:
    first = oa.responses.create(model="m", input=LONG_QUESTION, max_output_tokens=8, temperature=0)
    second = oa.responses.create(
        model="m",
        input="And the capital of Italy?",
        previous_response_id=first.id,
        max_output_tokens=8,
        temperature=0,
    )
    assert second.previous_response_id == first.id
    assert second.usage is not None and first.usage is not None
    # the first turn's input and answer are in the second's prompt without being resent
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert second.usage.input_tokens_details.cached_tokens > 0
    counted = oa.responses.input_tokens.count(
        model="m", input="And the capital of Italy?", previous_response_id=first.id
    )
    assert counted.input_tokens == second.usage.input_tokens


def test_retrieve_and_delete(oa: openai.OpenAI) -> None:
    r = oa.responses.create(model="m", input=PARIS_PROMPT, max_output_tokens=3, temperature=0)
    again = oa.responses.retrieve(r.id)
    assert again.id == r.id and again.output_text == r.output_text
    oa.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        oa.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        oa.responses.delete(r.id)
    with pytest.raises(openai.BadRequestError):  # a later turn cannot continue it either
        oa.responses.create(model="m", input="more", previous_response_id=r.id)
    unstored = oa.responses.create(model="m", input=PARIS_PROMPT, max_output_tokens=2, store=False)
    with pytest.raises(openai.NotFoundError):
        oa.responses.retrieve(unstored.id)


class City(BaseModel):
    name: str
    country: str


def test_parse_returns_a_pydantic_object(oa: openai.OpenAI) -> None:
    r = oa.responses.parse(
        model="m",
        input="Name the capital of France as JSON.",
        text_format=City,
        max_output_tokens=80,
        temperature=0,
    )
    assert r.status == "completed" and isinstance(r.output_parsed, City)
    jsonschema.validate(json.loads(r.output_text), City.model_json_schema())


def test_function_call_round_trip(oa: openai.OpenAI) -> None:
    first = oa.responses.create(
        model="m",
        input="Add 2 and 3.",
        tools=[ADD],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
    )
    assert first.status == "completed"
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "add" and calls[0].call_id.startswith("call_")
    jsonschema.validate(json.loads(calls[0].arguments), ADD["parameters"])
    follow = oa.responses.create(
        model="m",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "5"}],
        tools=[ADD],  # type: ignore[list-item]
        tool_choice="none",
        max_output_tokens=10,
        temperature=0,
    )
    assert [o.type for o in follow.output] == ["message"] and follow.output_text


def test_streamed_function_call_arguments(oa: openai.OpenAI) -> None:
    events = list(
        oa.responses.create(
            model="m",
            input="Add 2 and 3.",
            tools=[ADD],  # type: ignore[list-item]
            tool_choice={"type": "function", "name": "add"},
            stream=True,
            temperature=0,
        )
    )
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]  # type: ignore[union-attr]
    assert "".join(deltas) == done.arguments  # type: ignore[union-attr]
    item = events[-1].response.output[0]  # type: ignore[union-attr]
    assert item.type == "function_call" and json.loads(item.arguments) == json.loads(done.arguments)  # type: ignore[union-attr]


def test_cancel_stops_a_running_response(worker: RunningWorker, oa: openai.OpenAI) -> None:
    seen: list[str] = []

    def run() -> None:
        for e in oa.responses.create(
            model="m", input="Once upon a time", max_output_tokens=600, stream=True
        ):
            seen.append(e.type)
            if e.type == "response.created":
                seen.append(e.response.id)  # type: ignore[union-attr]

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 30
    while "response.output_text.delta" not in seen and time.monotonic() < deadline:
        time.sleep(0.05)
    rid = seen[1]
    assert oa.responses.retrieve(rid).status == "in_progress"
    cancelled = oa.responses.cancel(rid)
    assert cancelled.status == "cancelled"
    t.join(30)
    assert seen[-1] == "response.incomplete"
    assert oa.responses.retrieve(rid).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        oa.responses.cancel(rid)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        (
            {"input": [{"type": "message", "role": "user", "content": [{"type": "input_image"}]}]},
            "input[0].content[0]",
        ),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
        ({"input": [{"type": []}]}, "input[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": {}, "text": "x"}]}]},
            "input[0].content[0]",
        ),
        ({"previous_response_id": "../../etc/passwd"}, "previous_response_id"),
        ({"previous_response_id": "resp_0000"}, "previous_response_id"),
        ({"tool_choice": {"type": "function", "name": "nope"}, "tools": [ADD]}, "tool_choice.name"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"tool_choice": "required"}, "tool_choice"),
    ],
)
def test_bad_requests_are_400s_naming_the_field(
    worker: RunningWorker, body: dict[str, Any], param: str
) -> None:
    r = httpx.post(
        f"{worker.http}/v1/responses", json={"model": "m", "input": "hi", **body}, timeout=30
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert "Traceback" not in r.text and "/etc" not in error["message"]


def test_responses_are_owned_by_their_api_key() -> None:
    alice, bob = "alice-key-0123456789abcdef", "bob-key-0123456789abcdefgh"
    w = start_worker(make_settings(api_keys=[alice, bob]))
    try:
        with (
            openai.OpenAI(base_url=f"{w.http}/v1", api_key=alice, max_retries=0) as a,
            openai.OpenAI(base_url=f"{w.http}/v1", api_key=bob, max_retries=0) as b,
        ):
            r = a.responses.create(model="m", input=PARIS_PROMPT, max_output_tokens=2)
            assert a.responses.retrieve(r.id).id == r.id
            with pytest.raises(openai.NotFoundError):
                b.responses.retrieve(r.id)
            with pytest.raises(openai.BadRequestError):
                b.responses.create(model="m", input="x", previous_response_id=r.id)
        with (
            openai.OpenAI(base_url=f"{w.http}/v1", api_key="wrong", max_retries=0) as wrong,
            pytest.raises(openai.AuthenticationError),
        ):
            wrong.responses.create(model="m", input="x")
    finally:
        w.stop()


def test_an_agents_sdk_agent_runs_a_function_tool_to_its_final_output(
    worker: RunningWorker,
) -> None:
    agents = pytest.importorskip("agents")
    agents.set_tracing_disabled(True)
    calls: list[tuple[int, int]] = []

    @agents.function_tool
    def add(a: int, b: int) -> str:
        """Add two integers."""
        calls.append((a, b))
        return f"The sum is {a + b}."

    client = openai.AsyncOpenAI(base_url=f"{worker.http}/v1", api_key="unused", max_retries=0)
    agent = agents.Agent(
        name="Adder",
        instructions="Use the add tool to answer.",
        tools=[add],
        model=agents.OpenAIResponsesModel(model="gemma3:270m", openai_client=client),
        model_settings=agents.ModelSettings(
            tool_choice="required", parallel_tool_calls=False, temperature=0
        ),
        tool_use_behavior="stop_on_first_tool",
    )

    async def run() -> Any:
        async with client:
            return await agents.Runner.run(agent, "What is 2 plus 3?", max_turns=3)

    result = asyncio.run(run())
    assert len(calls) == 1
    assert result.final_output == f"The sum is {sum(calls[0])}."


def test_text_format_json_object_answers_one_object(oa: openai.OpenAI) -> None:
    r = oa.responses.create(
        model="m",
        input="Describe Paris as JSON.",
        text={"format": {"type": "json_object"}},
        max_output_tokens=120,
        temperature=0,
    )
    assert r.status == "completed", r.status
    assert isinstance(json.loads(r.output_text), dict)
    assert r.text is not None and r.text.format.type == "json_object"  # type: ignore[union-attr]
