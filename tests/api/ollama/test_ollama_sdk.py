"""The Ollama-compatible API driven by the official ``ollama`` library against a live worker on
the embedded model."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import httpx
import ollama
import pytest
from pydantic import BaseModel

from gemma_worker.engine.model_files import resolve_model_path
from tests.conftest import PARIS_PROMPT, RunningWorker

GREEDY = {"temperature": 0, "num_predict": 8}


@pytest.fixture(scope="module")
def client(worker: RunningWorker) -> Iterator[ollama.Client]:
    c = ollama.Client(host=worker.http, timeout=120)
    yield c
    c._client.close()  # the library leaves its httpx client open


def test_version_is_dotted_numbers(worker: RunningWorker) -> None:
    version = httpx.get(f"{worker.http}/api/version").json()["version"]
    assert all(part.isdigit() for part in version.split(".")) and version.count(".") == 2


def test_list_names_the_loaded_model_and_its_file(client: ollama.Client) -> None:
    models = client.list().models
    # the default model, then the built-in embedding model
    assert [m.model for m in models] == ["gemma-3-270m-q4_k_m:latest", "all-minilm-l6-v2:latest"]
    assert models[1].details is not None and models[1].details.family == "bert"
    m = models[0]
    assert m.model and m.model.endswith(":latest") and m.modified_at is not None
    path = resolve_model_path(None)
    assert m.size == path.stat().st_size
    assert m.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert m.details is not None
    assert m.details.format == "gguf" and m.details.family == "gemma3"
    assert m.details.families == ["gemma3"]
    assert m.details.quantization_level == "Q4_K_M"
    assert m.details.parameter_size == "268.10M"


def test_show_by_model_and_by_the_older_name(client: ollama.Client, worker: RunningWorker) -> None:
    shown = client.show("gemma3:270m")  # any name: the loaded model answers
    assert shown.details is not None and shown.details.quantization_level == "Q4_K_M"
    params = dict(line.split(None, 1) for line in (shown.parameters or "").splitlines())
    assert int(params["num_ctx"]) == worker.settings.n_ctx
    assert shown.template and shown.capabilities and "completion" in shown.capabilities
    assert shown.modelinfo is not None and shown.modelinfo["general.architecture"] == "gemma3"
    older = httpx.post(f"{worker.http}/api/show", json={"name": "whatever"})
    assert older.status_code == 200 and older.json()["details"]["family"] == "gemma3"


def test_ps_shows_the_model_loaded_for_good(client: ollama.Client, worker: RunningWorker) -> None:
    running = client.ps().models
    assert len(running) == 1
    m = running[0]
    assert m.expires_at is not None and m.expires_at.year > 2100
    assert m.size_vram == 0 and m.context_length == worker.settings.n_ctx
    assert m.digest == client.list().models[0].digest


def test_generate_answers_paris(client: ollama.Client) -> None:
    out = client.generate(model="gemma3", prompt=PARIS_PROMPT, options=GREEDY, stream=False)
    assert "Paris" in out.response
    assert out.done and out.done_reason == "length" and out.model and out.model.endswith(":latest")
    assert out.prompt_eval_count == 13 and out.eval_count == 8
    for duration in (out.total_duration, out.prompt_eval_duration, out.eval_duration):
        assert isinstance(duration, int) and duration > 0
    assert out.total_duration >= out.eval_duration  # type: ignore[operator]


def test_generate_streams_token_by_token(client: ollama.Client) -> None:
    parts = list(client.generate(model="m", prompt=PARIS_PROMPT, options=GREEDY, stream=True))
    assert len(parts) >= 4
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert parts[-1].done_reason == "length" and parts[-1].eval_count == 8
    assert "Paris" in "".join(p.response for p in parts)


def test_chat_streams(client: ollama.Client) -> None:
    parts = list(
        client.chat(
            model="m",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            options={"temperature": 0, "num_predict": 12},
            stream=True,
        )
    )
    assert len(parts) >= 3 and parts[-1].done and not parts[0].done
    assert all(p.message.role == "assistant" for p in parts)
    assert "".join(p.message.content or "" for p in parts).strip()


def test_format_json_gives_an_object(client: ollama.Client) -> None:
    out = client.generate(
        model="m",
        prompt='Question: What is the capital of France? Reply with JSON like {"capital": "..."}'
        "\nAnswer:",
        format="json",
        options={"temperature": 0, "num_predict": 120},
        stream=False,
    )
    assert out.done_reason == "stop"
    assert isinstance(json.loads(out.response), dict)


class City(BaseModel):
    name: str
    country: str
    population: int


def test_format_schema_of_a_pydantic_model_parses_every_time(client: ollama.Client) -> None:
    for seed in range(10):
        out = client.chat(
            model="m",
            messages=[{"role": "user", "content": "Tell me about a city."}],
            format=City.model_json_schema(),
            options={"temperature": 0.8, "seed": seed, "num_predict": 200},
        )
        City.model_validate_json(out.message.content or "")


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def test_a_tool_call_and_its_result(client: ollama.Client) -> None:
    # The embedded base model echoes the start of its turn: an example call there leads it to
    # make one (an instruction-tuned model needs no example).
    system = {"role": "system", "content": '{"name": "get_weather", "arguments": {"city": "Rome"}}'}
    ask = {"role": "user", "content": "What is the weather in Paris?"}
    out = client.chat(
        model="m",
        messages=[system, ask],
        tools=[WEATHER],
        options={"temperature": 0, "num_predict": 100},
    )
    calls = out.message.tool_calls or []
    assert len(calls) >= 1 and calls[0].function.name == "get_weather"
    assert isinstance(calls[0].function.arguments, dict)  # an object, not OpenAI's string
    assert isinstance(calls[0].function.arguments["city"], str)
    parts = list(
        client.chat(
            model="m",
            messages=[system, ask],
            tools=[WEATHER],
            options={"temperature": 0, "num_predict": 100},
            stream=True,
        )
    )
    streamed = [p.message.tool_calls for p in parts if p.message.tool_calls]
    assert streamed == [calls] and parts[-1].done and not parts[-1].message.tool_calls
    follow = client.chat(
        model="m",
        messages=[
            system,
            ask,
            out.message,
            {"role": "tool", "tool_name": "get_weather", "content": "18 degrees, sunny"},
        ],
        options={"temperature": 0, "num_predict": 16},
    )
    assert follow.done and follow.message.role == "assistant"


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda c: c.generate(model="m", prompt="x", options={"num_ctx": 1_000_000}), "num_ctx"),
        (lambda c: c.generate(model="m", prompt="x", suffix="y"), "suffix"),
        (lambda c: c.generate(model="m", prompt="x", images=[b"\x89PNG"]), "images"),
        (lambda c: c.generate(model="m", prompt="x", options={"temperature": -1}), "temperature"),
        (lambda c: c.chat(model="m", messages=[{"role": "robot", "content": "x"}]), "role"),
    ],
)
def test_a_bad_request_raises_response_error_400(client: ollama.Client, call, needle: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ollama.ResponseError) as raised:
        call(client)
    assert raised.value.status_code == 400
    assert needle in raised.value.error
