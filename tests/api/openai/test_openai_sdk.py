"""The OpenAI-compatible API driven by the official ``openai`` SDK against a live worker on the
embedded model."""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel

from tests.conftest import PARIS_PROMPT, RunningWorker, make_settings, start_worker

CHAT = [{"role": "user", "content": "Question: What is the capital of France?\nAnswer:"}]


class Counter:
    """Counts the HTTP requests an SDK client sends (to prove it did not retry)."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, _request: httpx.Request) -> None:
        self.n += 1


def client(
    worker: RunningWorker, key: str = "none", counter: Counter | None = None
) -> openai.OpenAI:
    hooks: dict[str, list[Any]] = {"request": [counter]} if counter else {}
    return openai.OpenAI(
        base_url=f"{worker.http}/v1",
        api_key=key,
        http_client=httpx.Client(event_hooks=hooks, timeout=120),
    )


@pytest.fixture(scope="module")
def oa(worker: RunningWorker) -> Iterator[openai.OpenAI]:
    with client(worker) as c:
        yield c


def test_models_list_and_retrieve(oa: openai.OpenAI) -> None:
    models = oa.models.list().data
    assert [m.id for m in models] == ["gemma-3-270m-q4_k_m", "all-minilm-l6-v2"]
    model = models[0]
    assert model.object == "model" and model.owned_by and model.created > 0
    assert oa.models.retrieve(model.id).id == model.id
    with pytest.raises(openai.NotFoundError):
        oa.models.retrieve("no-such-model")


def test_completion_answers_paris(oa: openai.OpenAI) -> None:
    out = oa.completions.create(model="anything", prompt=PARIS_PROMPT, max_tokens=4, temperature=0)
    assert out.object == "text_completion" and out.id.startswith("cmpl-")
    assert "Paris" in out.choices[0].text
    assert out.usage is not None and out.usage.completion_tokens == 4
    assert out.model == oa.models.list().data[0].id


def test_chat_stream_joins_to_the_non_streamed_answer(oa: openai.OpenAI) -> None:
    whole = oa.chat.completions.create(model="m", messages=CHAT, max_tokens=24, temperature=0)
    assert whole.id.startswith("chatcmpl-") and whole.object == "chat.completion"
    assert whole.system_fingerprint
    text = whole.choices[0].message.content
    assert text and whole.choices[0].message.role == "assistant"
    stream = oa.chat.completions.create(
        model="m",
        messages=CHAT,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert deltas == text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


class Address(BaseModel):
    city: str
    zip_code: int


class Person(BaseModel):
    name: str
    favourite: Colour
    tags: list[str]
    address: Address
    nickname: str | None


def test_parse_returns_a_pydantic_object_for_ten_seeds(oa: openai.OpenAI) -> None:
    messages = [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": "Describe a person who lives in Paris."},
    ]
    for seed in range(10):
        out = oa.chat.completions.parse(
            model="m",
            messages=messages,  # type: ignore[arg-type]
            response_format=Person,
            max_tokens=400,
            temperature=0.8,
            seed=seed,
            # the 270M base model loops in lists without it (the grammar still holds)
            frequency_penalty=0.6,
        )
        parsed = out.choices[0].message.parsed
        assert isinstance(parsed, Person), out.choices[0].message.content
        assert isinstance(parsed.address, Address) and isinstance(parsed.favourite, Colour)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city", "unit"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two integers",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            },
        },
    },
]


def test_required_tool_choice_gives_a_valid_call(oa: openai.OpenAI) -> None:
    out = oa.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=200,
        temperature=0,
    )
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].id.startswith("call_") and calls[0].type == "function"
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}  # type: ignore[index]
    fn = calls[0].function  # type: ignore[union-attr]
    jsonschema.validate(json.loads(fn.arguments), schemas[fn.name])


def test_streamed_tool_call_and_the_tool_result_turn(oa: openai.OpenAI) -> None:
    stream = oa.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "Add 2 and 3."}],
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "add"}},
        max_tokens=100,
        temperature=0,
        stream=True,
    )
    deltas = [c.choices[0].delta for c in stream if c.choices and c.choices[0].delta.tool_calls]
    first = deltas[0].tool_calls[0]  # type: ignore[index]
    assert first.id and first.type == "function" and first.function.name == "add"  # type: ignore[union-attr]
    args = "".join(d.tool_calls[0].function.arguments or "" for d in deltas)  # type: ignore[index, union-attr]
    jsonschema.validate(json.loads(args), TOOLS[1]["function"]["parameters"])  # type: ignore[index]
    follow = oa.chat.completions.create(
        model="m",
        messages=[
            {"role": "user", "content": "Add 2 and 3."},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": first.id,
                        "type": "function",
                        "function": {"name": "add", "arguments": args},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": first.id, "content": "5"},
        ],
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="none",
        max_tokens=16,
        temperature=0,
    )
    assert follow.choices[0].finish_reason in {"stop", "length"}
    assert follow.choices[0].message.tool_calls is None


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"n": 2}, "n"),
        ({"temperature": -1}, "temperature"),
        ({"response_format": {"type": "xml"}}, "response_format"),
    ],
)
def test_bad_requests_fail_once_with_400(
    worker: RunningWorker, extra: dict[str, Any], field: str
) -> None:
    counter = Counter()
    with client(worker, counter=counter) as c, pytest.raises(openai.BadRequestError) as caught:
        c.chat.completions.create(model="m", messages=CHAT, max_tokens=4, **extra)
    assert counter.n == 1
    assert field in str(caught.value.body)


def test_unenforceable_schema_is_a_400_naming_it(oa: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"age": {"type": "integer", "minimum": 3}}}
    with pytest.raises(openai.BadRequestError, match="minimum"):
        oa.chat.completions.create(
            model="m",
            messages=CHAT,
            max_tokens=4,
            response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
        )


def test_wrong_key_is_an_authentication_error() -> None:
    key = "k" * 32
    w = start_worker(make_settings(api_keys=[key]))
    try:
        with client(w, key="wrong-key-wrong-key") as c, pytest.raises(openai.AuthenticationError):
            c.models.list()
        with client(w, key=key) as c:
            assert c.models.list().data
    finally:
        w.stop()


def test_a_dropped_stream_frees_its_slot(worker: RunningWorker, wait_idle: None) -> None:
    with client(worker) as c:
        stream = c.chat.completions.create(
            model="m", messages=CHAT, max_tokens=1000, temperature=0.7, stream=True
        )
        for _ in zip(range(3), stream, strict=False):
            pass
        assert worker.ready_body()["active"] == 1
        stream.close()
    deadline = time.monotonic() + 10
    while worker.ready_body()["active"] != 0:
        assert time.monotonic() < deadline, "the slot was not freed"
        time.sleep(0.05)


def test_second_turn_reuses_the_cached_prefix(oa: openai.OpenAI, wait_idle: None) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a helpful geography assistant. " * 10},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    first = oa.chat.completions.create(model="m", messages=messages, max_tokens=8, temperature=0)
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And of Italy?"},
    ]
    second = oa.chat.completions.create(model="m", messages=messages, max_tokens=8, temperature=0)
    details = second.usage.prompt_tokens_details  # type: ignore[union-attr]
    assert details is not None and details.cached_tokens and details.cached_tokens > 50


def _complete(worker: RunningWorker, prompt: str) -> Any:
    with client(worker) as c:
        return c.completions.create(model="m", prompt=prompt, max_tokens=24, temperature=0)


def test_greedy_output_is_the_same_with_and_without_a_cache_hit() -> None:
    prompt = "The history of the city of Paris begins " * 8
    longer = prompt + "in the third century"
    w = start_worker(make_settings(parallel=2))
    try:
        cold, warm, extended = (_complete(w, p) for p in (prompt, prompt, longer))
    finally:
        w.stop()
    fresh = start_worker(make_settings(parallel=2))
    try:
        reference = _complete(fresh, longer)
    finally:
        fresh.stop()
    assert cold.usage.prompt_tokens_details.cached_tokens == 0
    assert warm.usage.prompt_tokens_details.cached_tokens == warm.usage.prompt_tokens - 1
    assert warm.choices[0].text == cold.choices[0].text
    assert extended.usage.prompt_tokens_details.cached_tokens > 50
    assert reference.usage.prompt_tokens_details.cached_tokens == 0
    assert extended.choices[0].text == reference.choices[0].text
