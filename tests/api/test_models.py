"""Several models in one worker, on the real model and a requantized second one: routing by
name in every dialect, listings, load on demand and unload, bad files and names."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
from websockets.asyncio.client import connect

from gemma_worker.engine.minilm import MINILM_ID
from tests.api.wsclient import recv_event, run_request, send
from tests.conftest import PARIS_PROMPT, RunningWorker, make_settings, start_worker

DEFAULT = "gemma-3-270m-q4_k_m"
SECOND = "gemma-q8"
HOSTILE = ["../gemma-q8", "/etc/passwd", "gemma-q8/../../x", "escape", "nope", "a\x00b"]


def models_folder(root: Path, second_model: Path) -> Path:
    """A models folder: the second model, a model too big for memory (the same file with a
    huge context), a file that is not a GGUF, a GGUF cut short, and a symlink out."""
    folder = root / "models"
    folder.mkdir()
    os.link(second_model, folder / f"{SECOND}.gguf")
    os.link(second_model, folder / "huge.gguf")
    (folder / "broken.gguf").write_bytes(b"this is not a model\n" * 100)
    with second_model.open("rb") as f:
        (folder / "cut.gguf").write_bytes(f.read(12 * 1024 * 1024))  # the header, no weights
    (folder / "escape.gguf").symlink_to("/etc/passwd")
    (folder / "models.toml").write_text(
        f'[models.{SECOND}]\naliases = ["q8", "gemma3:q8"]\n'
        "[models.huge]\nn_ctx = 1048576\nparallel = 64\n"
    )
    return folder


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory, second_model: Path) -> Iterator[RunningWorker]:
    folder = models_folder(tmp_path_factory.mktemp("multi"), second_model)
    worker = start_worker(make_settings(models_dir=folder, parallel=2, max_loaded_models=2))
    yield worker
    worker.stop()


@contextlib.contextmanager
def ollama_client(worker: RunningWorker) -> Iterator[ollama.Client]:
    client = ollama.Client(host=worker.http, timeout=120)
    yield client
    client._client.close()  # the library leaves its httpx client open


def openai_client(worker: RunningWorker) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{worker.http}/v1", api_key="none", max_retries=0)


def statuses(worker: RunningWorker) -> dict[str, str]:
    body = httpx.get(f"{worker.http}/v1/models", timeout=10).json()
    return {card["id"]: card["status"]["value"] for card in body["data"]}


def unload(worker: RunningWorker, model: str) -> None:
    r = httpx.post(f"{worker.http}/models/unload", json={"model": model}, timeout=30)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 10
    while statuses(worker)[r.json()["model"]] != "unloaded":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def logprobs(client: openai.OpenAI, model: str) -> tuple[str, list[float]]:
    out = client.completions.create(
        model=model, prompt=PARIS_PROMPT, max_tokens=4, temperature=0, logprobs=1
    )
    assert out.choices[0].logprobs is not None
    return out.model, list(out.choices[0].logprobs.token_logprobs or [])


def test_two_models_answer_by_name_through_the_openai_sdk(multi: RunningWorker) -> None:
    with openai_client(multi) as client:
        _two_models(client, multi)


def _two_models(client: openai.OpenAI, multi: RunningWorker) -> None:
    name_a, first = logprobs(client, "gemma3:270m")
    name_b, second = logprobs(client, "q8")
    assert (name_a, name_b) == (DEFAULT, SECOND)  # answers name the model that answered
    assert first != second  # two different models: different logits
    assert logprobs(client, SECOND)[1] == second
    chat = client.chat.completions.create(
        model=SECOND, messages=[{"role": "user", "content": "Hi"}], max_tokens=3
    )
    assert chat.model == SECOND
    ids = {m.id: m for m in client.models.list().data}
    assert {DEFAULT, SECOND, "huge", "broken", "cut"} <= set(ids)
    assert "escape" not in ids
    assert client.models.retrieve("gemma3:q8").id == SECOND
    assert statuses(multi)[SECOND] == "loaded"


def test_the_ollama_library_lists_and_unloads(multi: RunningWorker) -> None:
    with ollama_client(multi) as client:
        _ollama_listings(client, multi)


def _ollama_listings(client: ollama.Client, multi: RunningWorker) -> None:
    names = {m.model for m in client.list().models}
    assert {f"{DEFAULT}:latest", f"{SECOND}:latest", "huge:latest"} <= names
    out = client.generate(
        model=f"{SECOND}:latest", prompt=PARIS_PROMPT, options={"num_predict": 3, "temperature": 0}
    )
    assert out.model == f"{SECOND}:latest" and out.done
    running = {m.model: m for m in client.ps().models}
    assert f"{SECOND}:latest" in running
    assert running[f"{SECOND}:latest"].expires_at is not None
    assert (running[f"{SECOND}:latest"].size or 0) > 100_000_000
    out = client.generate(model="q8", prompt=PARIS_PROMPT, options={"num_predict": 2}, keep_alive=0)
    assert out.done
    deadline = time.monotonic() + 10
    while f"{SECOND}:latest" in {m.model for m in client.ps().models}:
        assert time.monotonic() < deadline, "keep_alive 0 did not unload the model"
        time.sleep(0.05)
    loaded = client.generate(model=SECOND, prompt="")  # Ollama's way to load a model
    assert loaded.done_reason == "load"
    assert (loaded.load_duration or 0) > 0  # it waited for the load
    assert statuses(multi)[SECOND] == "loaded"
    unloaded = client.generate(model=SECOND, prompt="", keep_alive=0)
    assert unloaded.done_reason == "unload"
    shown = client.show("gemma3:q8")
    assert shown.details is not None and shown.details.quantization_level == "Q8_0"


async def test_websocket_requests_name_their_model_and_hear_it_load(
    multi: RunningWorker,
) -> None:
    unload(multi, SECOND)
    async with connect(multi.ws) as ws:
        events = await run_request(
            ws, {"input": PARIS_PROMPT, "max_tokens": 3, "model": "q8", "request_id": "r1"}
        )
        kinds = [e["type"] for e in events]
        assert events[0] == {
            "type": "reasoning",
            "request_id": "r1",
            "content": f"loading model {SECOND}",
            "stage": "loading",
            "model": SECOND,
        }
        assert kinds[1] == "session" and events[1]["model"] == SECOND
        assert events[-1]["type"] == "result" and events[-1]["model"] == SECOND
        again = await run_request(ws, {"input": PARIS_PROMPT, "max_tokens": 3, "model": SECOND})
        assert again[0]["type"] == "session"  # loaded now: no loading note
        same = await run_request(ws, {"input": PARIS_PROMPT, "max_tokens": 3})
        assert same[-1]["model"] == SECOND  # the connection's session keeps its model
        fresh = {"input": PARIS_PROMPT, "max_tokens": 3, "new_session": True}
        assert (await run_request(ws, fresh))[-1]["model"] == DEFAULT


def test_a_session_keeps_its_model(multi: RunningWorker) -> None:
    url = f"{multi.http}/v1/execute"
    first = httpx.post(url, json={"input": "Hello", "max_tokens": 2, "model": SECOND}, timeout=60)
    assert first.status_code == 200, first.text
    session = first.json()["session_id"]
    assert first.json()["model"] == SECOND
    same = httpx.post(
        url, json={"input": "More", "max_tokens": 2, "session_id": session}, timeout=60
    )
    assert same.status_code == 200 and same.json()["model"] == SECOND  # the session's model
    other = httpx.post(
        url, json={"input": "x", "max_tokens": 2, "session_id": session, "model": DEFAULT}
    )
    assert other.status_code == 409
    assert other.json()["code"] == "MODEL_MISMATCH"
    assert SECOND in other.json()["error"]
    listed = httpx.get(f"{multi.http}/v1/sessions/{session}", timeout=10).json()
    assert listed["model"] == SECOND and listed["title"] == "Hello"


def _not_found(worker: RunningWorker, name: str) -> None:
    http = worker.http
    r = httpx.post(f"{http}/v1/execute", json={"input": "x", "model": name}, timeout=30)
    assert r.status_code == 404 and r.json()["code"] == "MODEL_NOT_FOUND", r.text
    r = httpx.post(f"{http}/v1/completions", json={"model": name, "prompt": "x"}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text
    r = httpx.post(f"{http}/api/generate", json={"model": name, "prompt": "x"}, timeout=30)
    assert r.status_code == 404 and "not found" in r.json()["error"], r.text
    r = httpx.post(f"{http}/api/show", json={"model": name}, timeout=30)
    assert r.status_code == 404, r.text
    for body in (r.text,):
        assert "/etc" not in body.replace("'/etc/passwd'", "") and "/tmp" not in body


@pytest.mark.parametrize("name", HOSTILE)
def test_unknown_and_hostile_names_are_not_found_in_each_dialect(
    multi: RunningWorker, name: str
) -> None:
    _not_found(multi, name)
    with openai_client(multi) as client, pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=name, messages=[{"role": "user", "content": "x"}])
    with ollama_client(multi) as ollama_lib, pytest.raises(ollama.ResponseError) as err:
        ollama_lib.chat(model=name, messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 404


async def test_websocket_unknown_model_is_an_error_event(multi: RunningWorker) -> None:
    async with connect(multi.ws) as ws:
        await send(ws, {"input": "x", "model": "../../etc/passwd", "request_id": "bad"})
        event = await recv_event(ws)
        assert event["type"] == "error" and event["code"] == "MODEL_NOT_FOUND"
        ok = await run_request(ws, {"input": PARIS_PROMPT, "max_tokens": 2})
        assert ok[-1]["type"] == "result"  # the connection is still usable


def test_a_model_too_big_for_memory_is_refused_with_the_numbers(multi: RunningWorker) -> None:
    before = statuses(multi)
    r = httpx.post(
        f"{multi.http}/v1/completions", json={"model": "huge", "prompt": "x"}, timeout=60
    )
    assert r.status_code == 507, r.text
    message = r.json()["error"]["message"]
    assert "'huge' does not fit in memory" in message and "GiB" in message and "KV cache" in message
    r = httpx.post(f"{multi.http}/api/generate", json={"model": "huge", "prompt": "x"}, timeout=60)
    assert r.status_code == 507 and "does not fit" in r.json()["error"]
    after = statuses(multi)
    assert after["huge"] == "unloaded"
    assert {k: v for k, v in after.items() if v == "loaded"} == {
        k: v for k, v in before.items() if v == "loaded"
    }  # nothing was unloaded for it


@pytest.mark.parametrize("name", ["broken", "cut"])
def test_a_file_that_is_not_a_model_fails_clearly_and_the_worker_carries_on(
    multi: RunningWorker, name: str
) -> None:
    for _ in range(2):  # it stays loadable: the second try fails the same way
        r = httpx.post(f"{multi.http}/v1/execute", json={"input": "x", "model": name}, timeout=60)
        assert r.status_code == 500, r.text
        body = r.json()
        assert body["code"] == "MODEL_LOAD_FAILED"
        assert f"model '{name}' could not be loaded" in body["error"]
        assert str(multi.settings.models_dir) not in r.text and "/tmp" not in r.text
    card = httpx.get(f"{multi.http}/v1/models/{name}", timeout=10).json()
    assert card["status"]["failed"] is True and card["status"]["value"] == "unloaded"
    assert multi.ready_body()["status"] == "ready"
    ok = httpx.post(
        f"{multi.http}/v1/execute", json={"input": PARIS_PROMPT, "max_tokens": 2}, timeout=60
    )
    assert ok.status_code == 200


def _worker_with(tmp_path: Path, second_model: Path, **settings: Any) -> tuple[RunningWorker, Path]:
    folder = tmp_path / "models"
    folder.mkdir()
    os.link(second_model, folder / f"{SECOND}.gguf")
    (folder / "models.toml").write_text(f'[models.{SECOND}]\naliases = ["q8"]\n')
    return start_worker(make_settings(models_dir=folder, parallel=1, **settings)), folder


def test_one_loaded_model_at_a_time_swaps_the_least_recently_used(
    tmp_path: Path, second_model: Path
) -> None:
    worker, _ = _worker_with(tmp_path, second_model, max_loaded_models=1)
    try:
        assert statuses(worker) == {DEFAULT: "loaded", SECOND: "unloaded", MINILM_ID: "unloaded"}
        with openai_client(worker) as client:
            for model in (SECOND, DEFAULT, SECOND):
                out = client.completions.create(model=model, prompt=PARIS_PROMPT, max_tokens=2)
                assert out.model == model
                assert statuses(worker)[model] == "loaded"
                assert list(statuses(worker).values()).count("loaded") == 1
    finally:
        worker.stop()


def test_an_idle_model_unloads_after_its_keep_alive(tmp_path: Path, second_model: Path) -> None:
    worker, _ = _worker_with(tmp_path, second_model, keep_alive="1s")
    try:
        r = httpx.post(
            f"{worker.http}/api/generate",
            json={"model": SECOND, "prompt": "x", "stream": False, "options": {"num_predict": 1}},
            timeout=60,
        )
        assert r.status_code == 200
        ps = httpx.get(f"{worker.http}/api/ps", timeout=10).json()["models"]
        assert [m["model"] for m in ps if m["model"] == f"{SECOND}:latest"]
        time.sleep(1.6)
        assert statuses(worker)[SECOND] == "unloaded"
        assert statuses(worker)[DEFAULT] == "unloaded"  # it too: idle since start-up
    finally:
        worker.stop()


ADMIN = "admin-key-0123456789abcdef"
USER = "user-key-0123456789abcdef"
ONLY_Q8 = "q8only-key-0123456789abcdef"


def test_keys_admin_for_load_and_unload_and_restricted_to_models(
    tmp_path: Path, second_model: Path
) -> None:
    worker, _ = _worker_with(
        tmp_path, second_model, api_keys=[f"{ADMIN} admin", USER, f"{ONLY_Q8} models=q8|x"]
    )

    def call(method: str, path: str, key: str, **kw: Any) -> httpx.Response:
        return httpx.request(
            method, f"{worker.http}{path}", headers={"x-api-key": key}, timeout=60, **kw
        )

    try:
        for path in ("/models/load", "/models/unload"):
            r = call("POST", path, USER, json={"model": SECOND})
            assert r.status_code == 403 and r.json()["code"] == "FORBIDDEN", r.text
        r = call("POST", "/models/load", ADMIN, json={"model": SECOND})
        assert r.status_code == 200 and r.json()["status"] == "loaded"
        cards = call("GET", "/v1/models", USER).json()["data"]
        assert all("file" not in c or c["file"] is None for c in cards)  # no file details
        admin_cards = {c["id"]: c for c in call("GET", "/v1/models", ADMIN).json()["data"]}
        assert admin_cards[SECOND]["file"] == f"{SECOND}.gguf"
        assert admin_cards[SECOND]["size"] == second_model.stat().st_size
        r = call("POST", "/models/unload", ADMIN, json={"model": SECOND})
        assert r.status_code == 200 and r.json()["was_loaded"] is True
        body = {"model": SECOND, "prompt": "x", "max_tokens": 1}
        assert call("POST", "/v1/completions", USER, json=body).status_code == 200
        assert call("POST", "/v1/completions", ONLY_Q8, json=body).status_code == 200
        r = call("POST", "/v1/completions", ONLY_Q8, json={**body, "model": DEFAULT})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
        r = call("POST", "/v1/execute", ONLY_Q8, json={"input": "x", "max_tokens": 1})
        assert r.status_code == 403  # the default model is not among its models
        assert [c["id"] for c in call("GET", "/v1/models", ONLY_Q8).json()["data"]] == [SECOND]
        tags = call("GET", "/api/tags", ONLY_Q8).json()["models"]
        assert [m["model"] for m in tags] == [f"{SECOND}:latest"]
    finally:
        worker.stop()


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[round(0.95 * (len(ordered) - 1))]


async def test_a_load_does_not_stall_the_other_models_stream(multi: RunningWorker) -> None:
    """The load runs on its own thread at a lower priority: the running stream keeps its
    pace (p95 token gap during the load within 2x its gap before)."""
    unload(multi, SECOND)
    arrivals: list[float] = []
    window: list[float] = []

    async def load() -> None:
        async with httpx.AsyncClient(timeout=120) as client:
            window.append(time.perf_counter())
            r = await client.post(f"{multi.http}/models/load", json={"model": SECOND})
            window.append(time.perf_counter())
            assert r.status_code == 200, r.text

    async with connect(multi.ws) as ws:
        await send(ws, {"input": "Once upon a time", "max_tokens": 900, "stateless": True})
        loader: asyncio.Task[None] | None = None
        cancelled = False
        while (event := await recv_event(ws))["type"] not in ("result", "error"):
            if event["type"] == "token":
                arrivals.append(time.perf_counter())
                if len(arrivals) == 80:
                    loader = asyncio.create_task(load())
                if len(window) == 2 and len(arrivals) > 80 + 40 and not cancelled:
                    await send(ws, {"type": "cancel", "request_id": event["request_id"]})
                    cancelled = True
        assert loader is not None
        await loader
    gaps = [(b - a, b) for a, b in itertools.pairwise(arrivals)]
    start, end = window
    before = [g for g, t in gaps[20:] if t < start]
    during = [g for g, t in gaps if start < t <= end]
    assert len(during) >= 10, f"the load took {end - start:.2f} s: {len(during)} gaps in it"
    assert _p95(during) <= 2 * _p95(before), (
        f"p95 gap {_p95(during) * 1e3:.1f} ms during the load, {_p95(before) * 1e3:.1f} ms before"
    )
