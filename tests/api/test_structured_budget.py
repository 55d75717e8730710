"""Structured answers and tool calls that always parse, whatever the token budget, driven by the
clients agents use (``openai``, ``ollama``, pydantic-ai, LangChain) on the real model at
temperature 0.8, seeds 0-19; a budget too small for any valid answer is refused up front, in
each dialect's shape; cut free text is still ``length``."""

from __future__ import annotations

import contextlib
import enum
import json
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
import jsonschema
import ollama
import openai
import pytest
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel
from pydantic_ai import Agent, capture_run_messages
from pydantic_ai.exceptions import UsageLimitExceeded
from pydantic_ai.messages import ToolCallPart
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.usage import UsageLimits

from tests.api.wsclient import connect, run_request
from tests.conftest import RunningWorker, make_settings, start_worker

T = TypeVar("T")
SEEDS = range(20)
QUESTION = "List the services on a web server with their risk level, as JSON."


class Risk(enum.StrEnum):
    low = "low"
    medium = "medium"
    high = "high"


class Service(BaseModel):
    name: str
    risk: Risk
    port: int | None


class Inventory(BaseModel):
    server: str
    services: list[Service]
    owner: str | None


LOGS = {
    "type": "object",
    "properties": {
        "host": {"type": "string"},
        "service": {"type": "string", "enum": ["nginx", "redis", "postgres"]},
        "lines": {"type": "integer"},
        "follow": {"type": "boolean"},
    },
    "required": ["host", "service", "lines"],
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {"name": "read_logs", "description": "Read a log", "parameters": LOGS},
    }
]


@pytest.fixture(scope="module")
def worker() -> Iterator[RunningWorker]:
    """A slot per seed, so that every seed's request runs at once: the answers are the same as
    one at a time (batch-invariant kernels), in a fraction of the time."""
    w = start_worker(make_settings(parallel=len(SEEDS), max_queue=8))
    yield w
    w.stop()


def each_seed(one: Callable[[int], T]) -> list[T]:
    with ThreadPoolExecutor(len(SEEDS)) as pool:
        return list(pool.map(one, SEEDS))


@pytest.fixture
def client(worker: RunningWorker) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{worker.http}/v1", api_key="none", timeout=300) as c:
        yield c


@pytest.fixture
def ollama_client(worker: RunningWorker) -> Iterator[ollama.Client]:
    c = ollama.Client(host=worker.http, timeout=300)
    yield c
    c.close()


def smallest_budget(client: openai.OpenAI) -> int:
    """The minimum the worker names when refusing a budget of one token."""
    with pytest.raises(openai.BadRequestError) as info:
        parse(client, 0, 1)
    body: Any = info.value.body
    assert body["param"] == "max_tokens" and body["code"] == "invalid_request"
    found = re.search(r"max_tokens: 1 is too small .* takes (\d+) tokens", body["message"])
    assert found, body
    return int(found.group(1))


def parse(client: openai.OpenAI, seed: int, max_tokens: int) -> Any:
    return client.chat.completions.parse(
        model="gemma",
        messages=[{"role": "user", "content": QUESTION}],
        response_format=Inventory,
        max_tokens=max_tokens,
        temperature=0.8,
        seed=seed,
    )


@pytest.mark.usefixtures("wait_idle")
def test_parse_a_nested_model_at_any_budget_that_fits(client: openai.OpenAI) -> None:
    least = smallest_budget(client)
    assert 5 < least < 40
    for budget in (200, 120, least):
        answers = each_seed(lambda seed, budget=budget: parse(client, seed, budget))
        for seed, answer in zip(SEEDS, answers, strict=True):
            choice = answer.choices[0]
            assert choice.finish_reason == "stop", (budget, seed)
            assert isinstance(choice.message.parsed, Inventory), (budget, seed)
            assert answer.usage is not None and answer.usage.completion_tokens <= budget


@pytest.mark.usefixtures("wait_idle")
@pytest.mark.parametrize("stream", [False, True])
def test_a_forced_tool_call_in_30_tokens_validates(client: openai.OpenAI, stream: bool) -> None:
    def call(seed: int) -> tuple[str | None, str]:
        kwargs: Any = {
            "model": "gemma",
            "messages": [{"role": "user", "content": "Show the last nginx log lines on web-01."}],
            "tools": TOOLS,
            "tool_choice": "required",
            "max_tokens": 30,
            "temperature": 0.8,
            "seed": seed,
        }
        if not stream:
            answer = client.chat.completions.create(**kwargs)
            calls = answer.choices[0].message.tool_calls or []
            assert len(calls) == 1 and calls[0].type == "function"
            return answer.choices[0].finish_reason, calls[0].function.arguments
        arguments, finish = "", None
        for chunk in client.chat.completions.create(stream=True, **kwargs):
            for choice in chunk.choices:
                for delta in choice.delta.tool_calls or []:
                    arguments += (delta.function and delta.function.arguments) or ""
                finish = choice.finish_reason or finish
        return finish, arguments

    for finish, arguments in each_seed(call):
        assert finish == "tool_calls"
        jsonschema.validate(json.loads(arguments), LOGS)


@pytest.mark.usefixtures("wait_idle")
def test_ollama_format_with_a_schema_parses(ollama_client: ollama.Client) -> None:
    def chat(seed: int) -> Inventory:
        answer = ollama_client.chat(
            model="gemma3:270m",
            messages=[{"role": "user", "content": QUESTION}],
            format=Inventory.model_json_schema(),
            options={"temperature": 0.8, "seed": seed},
        )
        assert answer.done_reason == "stop"
        return Inventory.model_validate_json(answer.message.content or "")

    assert len(each_seed(chat)) == len(SEEDS)


@pytest.mark.usefixtures("wait_idle")
async def test_pydantic_ai_output_type(worker: RunningWorker) -> None:

    async with openai.AsyncOpenAI(base_url=f"{worker.http}/v1", api_key="none") as sdk:
        provider = OpenAIProvider(openai_client=sdk)
        model = OpenAIChatModel("gemma", provider=provider)
        result = await Agent(model, output_type=Inventory).run(QUESTION)
        assert isinstance(result.output, Inventory)
        await _tool_and_output(model)


async def _tool_and_output(model: Any) -> None:
    def read_logs(host: str, lines: int) -> str:
        """Read the last lines of a host's log."""
        return f"{lines} lines from {host}: all quiet"

    # With a tool beside the output type and a small budget, every call the model makes is
    # complete (before: IncompleteToolCall). Whether this small base model ever stops calling
    # the tool is up to it: the run may end at its request limit.
    agent = Agent(model, output_type=Inventory, tools=[read_logs])
    with capture_run_messages() as messages, contextlib.suppress(UsageLimitExceeded):
        await agent.run(
            QUESTION,
            model_settings={"max_tokens": 150},
            usage_limits=UsageLimits(request_limit=3),
        )
    calls = [p for m in messages for p in m.parts if isinstance(p, ToolCallPart)]
    assert calls
    for part in calls:
        args = part.args_as_dict()
        if part.tool_name == "read_logs":
            assert isinstance(args["host"], str) and isinstance(args["lines"], int)
        else:
            Inventory.model_validate(args)


@pytest.mark.usefixtures("wait_idle")
def test_langchain_structured_output_and_bound_tools(worker: RunningWorker) -> None:

    llm = ChatOpenAI(model="gemma", base_url=f"{worker.http}/v1", api_key="none")
    inventory = llm.with_structured_output(Inventory).invoke(QUESTION)
    assert isinstance(inventory, Inventory)

    @tool
    def restart_service(host: str, service: str) -> str:
        """Restart a service on a host."""
        return "restarted"

    for chat in (
        llm,
        ChatOpenAI(model="gemma", base_url=f"{worker.http}/v1", api_key="none", max_tokens=80),
    ):
        message = chat.bind_tools([restart_service], tool_choice="restart_service").invoke(
            "Restart nginx on web-01"
        )
        calls = message.tool_calls
        assert len(calls) == 1 and calls[0]["name"] == "restart_service"
        assert set(calls[0]["args"]) == {"host", "service"}


SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "inv", "schema": LOGS}}


async def test_a_budget_below_the_shortest_answer_is_refused_in_every_dialect(
    worker: RunningWorker, client: openai.OpenAI, ollama_client: ollama.Client
) -> None:
    def names_minimum(message: str, field: str) -> None:
        assert re.search(rf"{re.escape(field)}: 2 is too small .* takes \d+ tokens", message)

    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="gemma",
            messages=[{"role": "user", "content": "hi"}],
            tools=TOOLS,
            tool_choice="required",
            max_completion_tokens=2,
        )
    body: Any = info.value.body
    assert body["param"] == "max_completion_tokens"
    names_minimum(body["message"], "max_completion_tokens")

    with pytest.raises(ollama.ResponseError) as refused:
        ollama_client.generate(
            model="gemma3:270m", prompt="hi", format=LOGS, options={"num_predict": 2}
        )
    assert refused.value.status_code == 400
    names_minimum(refused.value.error, "options.num_predict")

    house = {"input": "hi", "max_tokens": 2, "response_format": SCHEMA_FORMAT}
    async with httpx.AsyncClient(timeout=60) as http:
        r = await http.post(f"{worker.http}/v1/execute", json=house)
    assert r.status_code == 422 and r.json()["code"] == "INVALID_REQUEST"
    names_minimum(r.json()["error"], "max_tokens")
    async with connect(worker.ws) as ws:
        events = await run_request(ws, {**house, "request_id": "small"})
        assert events[-1]["type"] == "error" and events[-1]["code"] == "INVALID_REQUEST"
        names_minimum(events[-1]["error"], "max_tokens")
        # the connection goes on
        events = await run_request(ws, {**house, "max_tokens": 60})
        assert events[-1]["type"] == "result" and events[-1]["finish_reason"] == "stop"
        jsonschema.validate(json.loads(events[-1]["content"]), LOGS)


@pytest.mark.usefixtures("wait_idle")
async def test_cut_free_text_is_length_in_every_dialect(
    worker: RunningWorker, client: openai.OpenAI, ollama_client: ollama.Client
) -> None:
    prompt = "Write a long story about the sea."
    chat = client.chat.completions.create(
        model="gemma", messages=[{"role": "user", "content": prompt}], max_tokens=4
    )
    assert chat.choices[0].finish_reason == "length"
    plain = client.completions.create(model="gemma", prompt=prompt, max_tokens=4)
    assert plain.choices[0].finish_reason == "length"
    answer = ollama_client.generate(model="gemma3:270m", prompt=prompt, options={"num_predict": 4})
    assert answer.done_reason == "length"
    async with connect(worker.ws) as ws:
        events = await run_request(ws, {"input": prompt, "max_tokens": 4})
    assert events[-1]["finish_reason"] == "length"
