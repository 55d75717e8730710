"""DNS rebinding, on a real worker: a request naming a foreign ``Host`` is refused on every
route family, in the route's dialect, before anything happens; the worker's own names are
served; a listed public name is served; with keys any host is."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import openai
import pytest
from websockets.exceptions import ConnectionClosed

from gemma_worker.api.app import create_app
from tests.api.wsclient import connect, recv_event, run_request
from tests.conftest import PARIS_PROMPT, RunningWorker, make_settings, start_worker
from tests.hostcheck import (
    ASK,
    FOREIGN,
    PROBES,
    Probe,
    assert_handshake_refused,
    handshake,
    raw_request,
)

KEY = "hosts-test-key-0123456789"


def counters(worker: RunningWorker) -> dict[str, float]:
    """The worker's work so far, from /metrics: generations, prompt tokens, refusals."""
    text = httpx.get(f"{worker.http}/metrics", timeout=10).text
    found: dict[str, float] = {"generations": 0.0, "prompt_tokens": 0.0, "refused": 0.0}
    for line in text.splitlines():
        if line.startswith("gemma_worker_generations_total{"):
            found["generations"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("gemma_worker_prompt_tokens_total{"):
            found["prompt_tokens"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith('gemma_worker_errors_total{code="HOST_NOT_ALLOWED"}'):
            found["refused"] = float(line.rsplit(" ", 1)[1])
    return found


@pytest.fixture
def untouched(worker: RunningWorker, wait_idle: None) -> Iterator[None]:
    """The test's foreign requests generate nothing and reach no engine."""
    before = counters(worker)
    yield
    after = counters(worker)
    assert after["generations"] == before["generations"]
    assert after["prompt_tokens"] == before["prompt_tokens"]
    assert after["refused"] > before["refused"]
    assert worker.ready_body()["active"] == 0


# --- the reproduction of the issue, and each route family ----------------------------------------


def test_the_rebinding_reproduction_is_refused(worker: RunningWorker, untouched: None) -> None:
    body = json.dumps(
        {"model": "gemma3", "prompt": "hi", "stream": False, "options": {"num_predict": 3}}
    ).encode()
    status, headers, answer = raw_request(
        worker.settings.port,
        f"POST /api/generate HTTP/1.1\nHost: {FOREIGN}\nOrigin: http://{FOREIGN}\n"
        f"Content-Type: text/plain\nContent-Length: {len(body)}\n",
        body,
    )
    assert status == 403
    assert headers["content-type"] == "application/json"
    assert set(json.loads(answer)) == {"error"}  # Ollama's shape
    assert "x-worker-id" not in headers
    assert "access-control-allow-origin" not in headers


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: f"{p.method} {p.path}")
def test_every_route_family_refuses_a_foreign_host(
    worker: RunningWorker, untouched: None, probe: Probe
) -> None:
    probe.assert_refused(probe.send(worker.http, FOREIGN))
    probe.assert_refused(probe.send(worker.http, f"{FOREIGN}:{worker.settings.port}"))


def test_a_websocket_handshake_naming_a_foreign_host_is_refused(
    worker: RunningWorker, untouched: None
) -> None:
    for origin in (None, f"http://{FOREIGN}"):
        assert_handshake_refused(*handshake(worker.settings.port, FOREIGN, origin))


def test_openai_routes_refuse_a_foreign_host(worker: RunningWorker, untouched: None) -> None:
    with openai.OpenAI(
        base_url=f"{worker.http}/v1",
        api_key="unused",
        default_headers={"Host": FOREIGN},
        max_retries=0,
    ) as client:
        with pytest.raises(openai.PermissionDeniedError) as refused:
            client.chat.completions.create(
                model="gemma", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
            )
        assert refused.value.status_code == 403
        assert refused.value.code == "host_not_allowed"
        with pytest.raises(openai.PermissionDeniedError):
            client.models.list()
        with pytest.raises(openai.PermissionDeniedError):
            client.completions.create(model="gemma", prompt=PARIS_PROMPT, max_tokens=2)


def test_ollama_routes_refuse_a_foreign_host(worker: RunningWorker, untouched: None) -> None:
    with ollama.Client(host=worker.http, headers={"Host": FOREIGN}) as client:
        with pytest.raises(ollama.ResponseError) as refused:
            client.generate(model="gemma3", prompt=PARIS_PROMPT, options={"num_predict": 2})
        assert refused.value.status_code == 403
        for call in (client.list, client.ps, lambda: client.chat(model="gemma3", messages=[])):
            with pytest.raises(ollama.ResponseError) as again:
                call()
            assert again.value.status_code == 403


def test_a_foreign_host_cannot_read_or_delete_a_session(worker: RunningWorker) -> None:
    made = httpx.post(f"{worker.http}/v1/execute", json={"input": "Hi", **ASK}, timeout=60)
    session_id = made.json()["session_id"]
    for method in ("GET", "DELETE"):
        r = httpx.request(
            method,
            f"{worker.http}/v1/sessions/{session_id}",
            headers={"Host": FOREIGN},
            timeout=10,
        )
        assert r.status_code == 403 and r.json()["code"] == "HOST_NOT_ALLOWED"
    kept = httpx.get(f"{worker.http}/v1/sessions/{session_id}", timeout=10)
    assert kept.status_code == 200 and len(kept.json()["history"]) == 1


def test_a_foreign_host_is_refused_before_the_body_is_read(worker: RunningWorker) -> None:
    # A declared 1 GB body that never comes: the answer does not wait for it.
    status, _, body = raw_request(
        worker.settings.port,
        f"POST /v1/execute HTTP/1.1\nHost: {FOREIGN}\nContent-Type: application/json\n"
        "Content-Length: 1000000000\n",
    )
    assert status == 403 and json.loads(body)["code"] == "HOST_NOT_ALLOWED"


# --- the worker's own names ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "[::1]", "app.localhost"])
def test_the_workers_own_names_are_served(worker: RunningWorker, name: str) -> None:
    port = worker.settings.port
    host = f"{name}:{port}"
    r = httpx.post(
        f"{worker.http}/v1/execute",
        json={"input": PARIS_PROMPT, **ASK},
        headers={"Host": host},
        timeout=60,
    )
    assert r.status_code == 200 and r.json()["status"] == "success"
    status, headers, _ = handshake(port, host, origin=f"http://{host}")
    assert status == 101 and headers["upgrade"].lower() == "websocket"
    with openai.OpenAI(
        base_url=f"{worker.http}/v1", api_key="unused", default_headers={"Host": host}
    ) as oai:
        assert oai.completions.create(model="gemma", prompt=PARIS_PROMPT, max_tokens=2).choices
    with ollama.Client(host=worker.http, headers={"Host": host}) as olm:
        assert olm.generate(model="gemma3", prompt=PARIS_PROMPT, options={"num_predict": 2}).done


# --- a listed public name; keys ----------------------------------------------------------------


@pytest.fixture(scope="module")
def public() -> Iterator[RunningWorker]:
    """A keyless worker told to serve ``gemma.test`` (behind a proxy that passes Host on)."""
    w = start_worker(make_settings(parallel=1, allowed_hosts=["gemma.test", "127.0.0.1"]))
    yield w
    w.stop()


def test_a_listed_public_name_is_served_and_nothing_else(public: RunningWorker) -> None:
    ok = httpx.post(
        f"{public.http}/v1/execute",
        json={"input": PARIS_PROMPT, **ASK},
        headers={"Host": "gemma.test:8443"},
        timeout=60,
    )
    assert ok.status_code == 200
    for other in ("localhost", FOREIGN, "www.gemma.test"):  # a list replaces the defaults
        r = httpx.get(f"{public.http}/v1/models", headers={"Host": other}, timeout=10)
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "host_not_allowed"  # OpenAI's shape


async def test_a_page_on_the_listed_name_may_use_the_websocket(public: RunningWorker) -> None:
    page = "http://gemma.test:8443"
    async with connect(public.ws, origin=page) as ws:  # type: ignore[arg-type]
        assert (await run_request(ws, {"input": "Hi", "max_tokens": 1}))[-1]["type"] == "result"
    # Origin == Host used to be trusted: the shape of a rebinding page. Now its host decides.
    async with connect(public.ws, origin="http://127.0.0.2") as ws:  # type: ignore[arg-type]
        with pytest.raises(ConnectionClosed) as closed:
            await recv_event(ws, wait_s=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def test_cors_follows_the_same_rule(worker: RunningWorker) -> None:
    def preflight(origin: str) -> httpx.Response:
        return httpx.options(
            f"{worker.http}/v1/chat/completions",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
            timeout=10,
        )

    local = preflight("http://localhost:5173")
    assert local.status_code == 200
    assert local.headers["access-control-allow-origin"] == "http://localhost:5173"
    foreign = preflight(f"http://{FOREIGN}")
    assert foreign.status_code == 400
    assert "access-control-allow-origin" not in foreign.headers
    simple = httpx.get(f"{worker.http}/health", headers={"Origin": f"http://{FOREIGN}"}, timeout=10)
    assert "access-control-allow-origin" not in simple.headers


def test_a_keyless_worker_off_loopback_keeps_its_default_id_to_itself() -> None:
    # create_app builds the state without binding or loading anything
    state = create_app(make_settings(host="0.0.0.0", insecure=True)).state.worker
    assert state.worker_id_for(None) is None
    named = create_app(make_settings(host="0.0.0.0", insecure=True, worker_id="w1"))
    assert named.state.worker.worker_id_for(None) == "w1"
    blank = create_app(make_settings(host="0.0.0.0", insecure=True, worker_id=""))
    assert blank.state.worker.worker_id_for(None) == ""  # set, empty: never the machine's name
    local = create_app(make_settings()).state.worker
    assert local.worker_id_for(None) == local.settings.replica_name


def test_with_keys_any_host_is_served_to_a_key(tmp_path: Any) -> None:
    w = start_worker(make_settings(parallel=1, api_keys=[KEY]))
    try:
        served = httpx.post(
            f"{w.http}/v1/execute",
            json={"input": PARIS_PROMPT, **ASK},
            headers={"Host": "gemma.example.com", "Authorization": f"Bearer {KEY}"},
            timeout=60,
        )
        assert served.status_code == 200
        keyless = httpx.get(f"{w.http}/v1/models", headers={"Host": "gemma.example.com"})
        assert keyless.status_code == 401
    finally:
        w.stop()


def test_the_setting_reads_a_comma_list_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMMA_ALLOWED_HOSTS", "gemma.example, .internal.example")
    assert make_settings().allowed_hosts == ["gemma.example", ".internal.example"]
    monkeypatch.setenv("GEMMA_ALLOWED_HOSTS", '["gemma.example", "10.0.0.0/8"]')
    assert make_settings().allowed_hosts == ["gemma.example", "10.0.0.0/8"]
    monkeypatch.setenv("GEMMA_ALLOWED_HOSTS", "[::1],localhost")  # not JSON: a comma list
    assert make_settings().allowed_hosts == ["[::1]", "localhost"]
    monkeypatch.setenv("GEMMA_ALLOWED_HOSTS", "")  # an env file's "unset"
    assert make_settings().allowed_hosts is None
    assert make_settings(allowed_hosts=[]).allowed_hosts is None
    monkeypatch.setenv("GEMMA_ALLOWED_HOSTS", "http://gemma.example:80")
    with pytest.raises(ValueError, match=re.escape("host patterns have no scheme")):
        make_settings()
